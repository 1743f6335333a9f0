import pytest
import torch

from metaloss.config import load_config
from metaloss.data.collate import collate_pairs
from metaloss.experiment import build_experiment, run
from metaloss.meta import meta_gradient
from metaloss_refusion.reconstruction import ReconstructionTask, reconstruction_loss


def test_reconstruction_loss_by_hand():
    ir = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    vi = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    perfect = torch.cat([ir, vi], 1)
    assert reconstruction_loss(perfect, ir, vi).item() == 0.0
    # constant offsets: no gradient error in the interior, but zero-padded borders see the offset
    off = perfect + torch.tensor([0.1, -0.2], dtype=torch.float64).view(1, 2, 1, 1)
    assert reconstruction_loss(off, ir, vi, alpha=0.0).item() == pytest.approx(0.01 + 0.04)
    assert reconstruction_loss(off, ir, vi, alpha=1.0).item() > 0.05


def test_task_shapes_and_psnr():
    task = ReconstructionTask()
    out = task(torch.rand(2, 1, 9, 11))
    assert out.shape == (2, 2, 9, 11) and 0 <= out.min() and out.max() <= 1
    ev = task.evaluator()
    batch = {"task_ir": torch.zeros(1, 1, 4, 4), "task_vi": torch.ones(1, 1, 4, 4)}
    ev.update(torch.cat([torch.full((1, 1, 4, 4), 0.1), torch.ones(1, 1, 4, 4)], 1), batch)
    result = ev.compute()
    assert result["psnr_ir"] == pytest.approx(20.0, abs=1e-4) and result["psnr_vi"] > 100


def refusion_config(**data):
    return load_config(
        {
            "seed": 3,
            "device": "cpu",
            "data": {
                "name": "synthetic",
                "num_images": 6,
                "height": 48,
                "width": 48,
                "crop_size": 32,
                "task_from_crop": True,
                **data,
            },
            "val_data": {"name": "synthetic", "num_images": 2, "height": 48, "width": 48},
            "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
            "loss_generator": {"name": "refusion"},
            "objective": {"name": "reconstruction", "width": 4, "blocks": 1},
            "meta": {"epochs": 1, "meta_steps": 2, "learner_steps": 2, "outer_lr": 1e-3},
            "eval": {"num_images": 2, "metrics": []},
        }
    )


def test_refusion_meta_gradient_uses_both_weight_maps():
    exp = build_experiment(refusion_config())
    g = torch.Generator().manual_seed(0)
    train = exp.problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = exp.problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    assert torch.equal(train["task_ir"], train["ir"]) and "mask" not in train and "boxes" not in train
    maps = exp.problem.loss_generator(train["ir"], train["vi"])
    assert set(maps) == {"intensity", "gradient"}
    grads, _ = meta_gradient(exp.problem, train, test, inner_lr=1e-2, lookahead_lr=1e-2)
    flat = torch.cat([x.flatten() for x in grads])
    assert torch.isfinite(flat).all() and flat.norm() > 0
    # the head that produces the gradient weights V gets meta-gradient too
    named = dict(
        zip([n for n, p in exp.problem.loss_generator.named_parameters() if p.requires_grad], grads, strict=True)
    )
    assert sum(v.abs().sum() for v in named.values()) > 0


def test_refusion_runs_through_the_shared_trainer(tmp_path):
    summary = run(refusion_config(), tmp_path / "run", quiet=True)
    assert {"task/psnr_ir", "task/psnr_vi"} <= set(summary["metrics"])
    assert summary["final"]["meta/loss_generator_grad_norm"] > 0
