"""The learned-vs-hand-made loss benchmark: every variant's config is valid, and its summary (no training)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.learned_losses import CONFIG, VARIANTS, overrides, render, summarise
from benchmarks.refusion import HELD_OUT, METRICS
from metaloss.config import load_config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_a_valid_config_with_the_shared_budget(repo, variant):
    cfg = load_config(repo / CONFIG, overrides(variant, seed=2))
    assert cfg.seed == 2
    assert (cfg.meta.meta_steps == 0) == (not variant.startswith("learned"))  # a hand-made loss is not meta-learned
    base = load_config(repo / CONFIG)
    # the objective is the config's, except where a variant names another (max_quality takes it into its loss)
    own_objective = "objective" in VARIANTS[variant]
    direct = (
        "max_quality",
        "learned_quality_direct",
        "learned_output",
        "prior_quality",
        "learned_output_prior",
        "learned_hard",
    )
    assert (cfg.loss.objective_weight > 0) == (variant in direct)
    shared = ("data", "learner", "optim") + (() if own_objective else ("objective",))
    assert [getattr(cfg, k) for k in shared] == [getattr(base, k) for k in shared]
    assert (cfg.meta.epochs, cfg.meta.learner_steps) == (base.meta.epochs, base.meta.learner_steps)


def test_the_configs_learned_loss_is_the_learned_config_variant(repo):
    """The default model's config (docs/pretrained.md) is the benchmark's learned_config run, and
    config_no_meta is the same loss without the meta phase."""
    base = load_config(repo / CONFIG)
    cfg = load_config(repo / CONFIG, overrides("learned_config", seed=0))
    assert (cfg.loss_generator, cfg.loss, cfg.meta) == (base.loss_generator, base.loss, base.meta)
    fixed = load_config(repo / CONFIG, overrides("config_no_meta", seed=0))
    assert (fixed.loss_generator, fixed.loss) == (base.loss_generator, base.loss) and fixed.meta.meta_steps == 0
    assert base.loss.ssim_weight > 0 and not base.eval.stretch


def test_summary_is_the_mean_and_spread_over_seeds():
    results = {f"max_l1-s{s}": {m: 1.0 + s for m in METRICS} for s in (0, 1, 2)}
    results["learned-s0"] = {m: 0.5 for m in METRICS}
    stats = summarise(results)
    assert stats["max_l1"]["VIF"] == (2.0, 1.0, 3) and stats["learned"]["VIF"] == (0.5, 0.0, 1)
    text = render(results, {"machine": "test machine", "args": "--seeds 0 1 2"})
    assert "| max_l1 | 3 | 2.000 ± 1.000 |" in text and "test machine" in text


def test_the_measured_by_line_lists_every_command_that_made_the_results():
    meta = {"machine": "m", "args": "--seeds 2", "history": ["`python -m a` (day 1)", "`python -m b` (day 2)"]}
    results = {"max_l1-s0": {m: 1.0 for m in METRICS}}
    assert "`python -m a` (day 1); then `python -m b` (day 2)" in render(results, meta)
    assert "`python -m benchmarks.learned_losses --seeds 2` on m" in render(results, {**meta, "history": []})


def test_held_out_scores_get_their_own_table_for_the_variants_that_have_them():
    results = {f"max_l1-s{s}": {m: 1.0 for m in METRICS} for s in (0, 1)}
    results["learned-s0"] = {m: 0.5 for m in METRICS}
    assert "held-out" not in render(results, {})
    for s, value in ((0, 0.25), (1, 0.75)):
        results[f"max_l1-s{s}"].update({f"{name}:{m}": value for name in HELD_OUT for m in ("VIF", "Qabf", "SSIM")})
    text = render(results, {})
    table = text[text.index("no run trains or chooses on") :]
    assert "| max_l1 | 2 | 0.500 ± 0.354 |" in table and "| learned |" not in table


def test_quality_targets_scores_images_as_saved():
    from benchmarks.quality_targets import scores
    from metaloss.metrics import cddfuse

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 96, 96, generator=g), torch.rand(1, 1, 96, 96, generator=g)
    fused = (a + b) / 2 + 0.3  # out of range: clamped, then rounded to grey levels
    got = scores(fused, a, b)
    f, a8, b8 = (torch.round(x.clamp(0, 1) * 255).double() for x in (fused, a, b))
    assert got == (float(cddfuse.vif(f, a8, b8)), float(cddfuse.qabf(f, a8, b8)), float(cddfuse.ssim(f, a8, b8)))
