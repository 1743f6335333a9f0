import pytest
import torch
import torch.nn.functional as F

from metaloss.config import ConfigError, load_config
from metaloss.data.collate import collate_pairs
from metaloss.experiment import build_experiment, run
from metaloss.losses import ssim_map
from metaloss.meta import meta_gradient
from metaloss.metrics import cddfuse
from metaloss_refusion.quality import QualityObjective, quality_terms


def smooth_pair(size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different smooth textured images on 0-255 integers, [1, 1, size, size] float64."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        x = torch.rand(1, 1, size // 4, size // 4, generator=g, dtype=torch.float64)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        out.append(torch.round(x * 255))
    return out[0], out[1]


@pytest.mark.parametrize("rule", ["mean", "max"])
def test_vif_qabf_and_ssim_follow_the_scored_metrics(rule):
    a, b = smooth_pair()
    f = torch.round((a + b) / 2) if rule == "mean" else torch.maximum(a, b)
    terms = quality_terms(f / 255, a / 255, b / 255)
    # the same VIF as the scorer (its float32 log terms aside); Qabf up to the scorer's tie rule and
    # the smoothed angle where the horizontal response is 0
    assert float(terms["VIF"]) == pytest.approx(float(cddfuse.vif(f, a, b)), abs=1e-5)
    assert float(terms["Qabf"]) == pytest.approx(float(cddfuse.qabf(f, a, b)), abs=2e-3)
    # the scored SSIM (float64 here, float32 in the scorer)
    assert float(terms["SSIM"]) == pytest.approx(float(cddfuse.ssim(f, a, b)), abs=1e-4)
    gaussian = quality_terms(f / 255, a / 255, b / 255, ssim_form="gaussian")["SSIM"]
    expected = ssim_map(f / 255, a / 255).mean() + ssim_map(f / 255, b / 255).mean()
    assert float(gaussian) == pytest.approx(float(expected), rel=1e-12)


def test_quality_prefers_a_fusion_to_noise_and_has_finite_gradients():
    a, b = (x / 255 for x in smooth_pair())
    objective = QualityObjective()
    assert not list(objective.parameters())
    batch = {"task_ir": a, "task_vi": b}
    noise = torch.rand_like(a, generator=torch.Generator().manual_seed(1))
    assert objective.loss(objective((a + b) / 2), batch) < objective.loss(objective(noise), batch)
    fused = ((a + b) / 2).requires_grad_(True)
    objective.loss(fused, batch).backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    # flat images: no NaN either
    flat = torch.full_like(a, 0.5).requires_grad_(True)
    objective.loss(flat, {"task_ir": torch.full_like(a, 0.2), "task_vi": b}).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


def test_quality_weights_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        QualityObjective(vif_weight=0, qabf_weight=0, ssim_weight=0)
    raw = {**quality_config().model_dump(mode="json"), "objective": {"name": "quality", "vif_weight": -1.0}}
    with pytest.raises(ConfigError, match=r"objective\.vif_weight"):
        load_config(raw)
    with pytest.raises(ValueError, match="ssim_form"):
        quality_terms(torch.zeros(1, 1, 96, 96), torch.zeros(1, 1, 96, 96), torch.zeros(1, 1, 96, 96), "uniform")
    ev = QualityObjective().evaluator()
    a, b = (x / 255 for x in smooth_pair())
    ev.update((a + b) / 2, {"task_ir": a, "task_vi": b})
    assert set(ev.compute()) == {"quality_VIF", "quality_Qabf", "quality_SSIM"}


def quality_config(**loss):
    return load_config(
        {
            "seed": 3,
            "device": "cpu",
            "data": {
                "name": "synthetic",
                "num_images": 6,
                "height": 96,
                "width": 96,
                "crop_size": 96,
                "task_from_crop": True,
            },
            "val_data": {"name": "synthetic", "num_images": 2, "height": 96, "width": 96},
            "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
            "loss_generator": {
                "name": "refusion",
                "gradient_weights": False,
                "prior_sharpness": 20.0,
                "dim": 8,
                "heads": 2,
                "blocks_per_modality": 1,
                "fused_blocks": 1,
            },
            "loss": {"gradient_target": "intensity", **loss},
            "objective": {"name": "quality"},
            "meta": {"epochs": 1, "meta_steps": 2, "learner_steps": 2, "outer_lr": 1e-3},
            "eval": {"num_images": 2, "metrics": []},
        }
    )


def test_a_fixed_objective_drives_the_meta_step_and_trains_nothing_itself(tmp_path):
    exp = build_experiment(quality_config())
    g = torch.Generator().manual_seed(0)
    train = exp.problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = exp.problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    grads, result = meta_gradient(exp.problem, train, test, inner_lr=1e-2, lookahead_lr=1e-2)
    flat = torch.cat([x.flatten() for x in grads])
    assert torch.isfinite(flat).all() and flat.norm() > 0
    assert result.objective_loss is None  # no look-ahead step: there is nothing to update
    summary = run(quality_config(), tmp_path / "run", quiet=True)
    assert {"task/quality_VIF", "task/quality_Qabf", "task/quality_SSIM"} <= set(summary["metrics"])
    assert summary["final"]["meta/loss_generator_grad_norm"] > 0


def test_objective_weight_adds_the_objective_to_the_learner_loss():
    plain = build_experiment(quality_config())
    direct = build_experiment(quality_config(objective_weight=0.5))
    g = torch.Generator().manual_seed(0)
    batch = plain.problem.prepare_batch(collate_pairs([plain.train_set[0]]), g)
    direct.problem.learner.load_state_dict(plain.problem.learner.state_dict())
    direct.problem.loss_generator.load_state_dict(plain.problem.loss_generator.state_dict())
    params = dict(plain.problem.learner.named_parameters())
    base = plain.problem.inner_loss(params, batch)
    both = direct.problem.inner_loss(dict(direct.problem.learner.named_parameters()), batch)
    assert base.objective is None and both.objective is not None and "objective" in both.terms
    fused = plain.problem.learner(batch["ir"], batch["vi"])
    expected = base.total + 0.5 * plain.problem.objective.loss(fused, batch)
    assert float(both.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_objective_weight_needs_the_task_on_the_crop():
    cfg = quality_config(objective_weight=0.5)
    cfg.data.task_from_crop = False
    with pytest.raises(ValueError, match="task_from_crop"):
        build_experiment(cfg)


def optimum_config(**loss):
    cfg = quality_config(**loss)
    cfg.meta.horizon = "optimum"
    return cfg


def test_optimum_horizon_differentiates_the_objective_at_the_loss_target(tmp_path):
    exp = build_experiment(optimum_config())
    problem = exp.problem
    g = torch.Generator().manual_seed(0)
    train = problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    before = {n: p.detach().clone() for n, p in problem.learner.named_parameters()}
    grads, result = meta_gradient(problem, train, test, inner_lr=1e-2, horizon="optimum")
    # by hand: T = w_a I_a + w_b I_b on the meta-test batch, then the objective's loss
    ir, vi = test["task_ir"], test["task_vi"]
    w = problem.loss_generator(ir, vi)["intensity"]
    params = [p for p in problem.loss_generator.parameters() if p.requires_grad]
    expected = torch.autograd.grad(problem.objective.loss(w[:, :1] * ir + w[:, 1:] * vi, test), params)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.cat([x.flatten() for x in grads]).norm() > 0
    assert result.inner_loss == pytest.approx(
        float(problem.inner_loss(dict(problem.learner.named_parameters()), train).total.detach())
    )
    assert all(torch.equal(p, before[n]) for n, p in problem.learner.named_parameters())
    summary = run(optimum_config(), tmp_path / "run", quiet=True)
    assert summary["final"]["meta/loss_generator_grad_norm"] > 0


@pytest.mark.parametrize(
    "loss", [{"ssim_weight": 1.0}, {"gradient_target": "max"}, {"intensity_norm": "l1"}, {"weight_form": "squared"}]
)
def test_optimum_horizon_refuses_a_loss_whose_minimiser_is_not_its_target(loss):
    with pytest.raises(ValueError, match="horizon = 'optimum'"):
        build_experiment(optimum_config(**loss))


def test_optimum_horizon_needs_the_problem_hook():
    class NoOptimum:
        def __init__(self, problem):
            self.learner, self.loss_generator, self.objective = problem.learner, problem.loss_generator, None

    exp = build_experiment(optimum_config())
    with pytest.raises(ValueError, match="optimum_outer_loss"):
        meta_gradient(NoOptimum(exp.problem), {}, {}, inner_lr=1e-2, horizon="optimum")


def test_optimum_horizon_takes_the_learned_part_with_a_direct_objective_term():
    exp = build_experiment(optimum_config(objective_weight=0.1))  # T stands in for the minimiser
    g = torch.Generator().manual_seed(0)
    test = exp.problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    plain = build_experiment(optimum_config())
    plain.problem.loss_generator.load_state_dict(exp.problem.loss_generator.state_dict())
    with torch.no_grad():
        assert float(exp.problem.optimum_outer_loss({}, test)) == float(plain.problem.optimum_outer_loss({}, test))


def output_config(**loss):
    cfg = quality_config(**loss)
    cfg.meta.horizon = "output"
    return cfg


def test_output_horizon_at_half_a_step_of_a_pure_l2_loss_is_the_optimum_horizon():
    # N dL/dF = 2 (F - T) for the L2 term alone, so a step of 0.5 lands on T whatever F is
    out = build_experiment(output_config(alpha=0.0))
    opt = build_experiment(optimum_config(alpha=0.0))
    opt.problem.loss_generator.load_state_dict(out.problem.loss_generator.state_dict())
    g = torch.Generator().manual_seed(0)
    train = out.problem.prepare_batch(collate_pairs([out.train_set[0]]), g)
    test = out.problem.prepare_batch(collate_pairs([out.train_set[1]]), g)
    before = {n: p.detach().clone() for n, p in out.problem.learner.named_parameters()}
    got, result = meta_gradient(out.problem, train, test, inner_lr=1e-2, horizon="output", output_lr=0.5)
    want, optimum = meta_gradient(opt.problem, train, test, inner_lr=1e-2, horizon="optimum")
    assert result.outer_loss == pytest.approx(optimum.outer_loss, rel=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert all(torch.equal(p, before[n]) for n, p in out.problem.learner.named_parameters())


def test_output_horizon_steps_from_the_learner_output_on_the_whole_loss(tmp_path):
    exp = build_experiment(output_config(objective_weight=0.1))
    problem = exp.problem
    g = torch.Generator().manual_seed(0)
    train = problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    grads, _ = meta_gradient(problem, train, test, inner_lr=1e-2, horizon="output", output_lr=0.02)
    # by hand: F now, one step of the whole loss (gradient and objective terms included) on F itself
    fused = problem.learner(test["ir"], test["vi"]).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(problem.inner_loss_from_output(fused, test).total, fused, create_graph=True)
    params = [p for p in problem.loss_generator.parameters() if p.requires_grad]
    expected = torch.autograd.grad(problem.objective.loss(fused - 0.02 * fused.numel() * grad, test), params)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.cat([x.flatten() for x in grads]).norm() > 0
    cfg = output_config()
    cfg.meta.output_lr = 0.02
    summary = run(cfg, tmp_path / "run", quiet=True)
    assert summary["final"]["meta/loss_generator_grad_norm"] > 0


def test_output_horizon_needs_the_task_on_the_crop_and_the_problem_hook():
    cfg = output_config()
    cfg.data.task_from_crop = False
    with pytest.raises(ValueError, match=r"horizon = 'output'.*task_from_crop"):
        build_experiment(cfg)
    exp = build_experiment(output_config())
    with pytest.raises(ValueError, match="output_outer_loss"):
        meta_gradient(
            object.__new__(type("NoHook", (), {"loss_generator": exp.problem.loss_generator})),
            {},
            {},
            inner_lr=1e-2,
            horizon="output",
        )
