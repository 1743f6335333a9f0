"""The learned-vs-hand-made loss benchmark: every variant's config is valid, and its summary (no training)."""

from __future__ import annotations

import pytest

from benchmarks.learned_losses import CONFIG, VARIANTS, overrides, render, summarise
from benchmarks.refusion import METRICS
from metaloss.config import load_config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_a_valid_config_with_the_shared_budget(repo, variant):
    cfg = load_config(repo / CONFIG, overrides(variant, seed=2, epochs=3))
    assert cfg.seed == 2 and cfg.meta.epochs == 3 and cfg.optim.lr_step == 2
    assert (cfg.meta.meta_steps == 0) == (not variant.startswith("learned"))  # a hand-made loss is not meta-learned
    base = load_config(repo / CONFIG)
    assert (cfg.data, cfg.fusion, cfg.task, cfg.meta.learner_steps) == (base.data, base.fusion, base.task, base.meta.learner_steps)


def test_summary_is_the_mean_and_spread_over_seeds():
    results = {f"max_l1-s{s}": {m: 1.0 + s for m in METRICS} for s in (0, 1, 2)}
    results["learned-s0"] = {m: 0.5 for m in METRICS}
    stats = summarise(results)
    assert stats["max_l1"]["VIF"] == (2.0, 1.0, 3) and stats["learned"]["VIF"] == (0.5, 0.0, 1)
    text = render(results, {"epochs": 3, "machine": "test machine", "args": "--seeds 0 1 2"})
    assert "| max_l1 | 3 | 2.000 ± 1.000 |" in text and "3 epochs" in text
