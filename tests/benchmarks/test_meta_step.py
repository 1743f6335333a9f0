"""``benchmarks.meta_step`` builds a valid run config for every implementation it times (a config the
benchmark's child process would refuse only shows up in a long benchmark run otherwise)."""

from __future__ import annotations

import pytest

from benchmarks.meta_step import IMPLS, _config
from metaloss.config import load_config


@pytest.mark.parametrize("impl", IMPLS)
def test_every_timed_implementation_has_a_valid_config(impl):
    cfg = load_config(_config(impl, 64, (48, 64), 1, "cpu"), check_plugins=False)
    assert cfg.loss_generator.name == "tdfusion" and cfg.objective.name == "segmentation"
    assert cfg.data.crop_size == 64
