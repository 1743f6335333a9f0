"""The shipped pretrained models: present, small, loadable, and better than averaging on real pairs."""

from __future__ import annotations

import importlib.resources as resources

import pytest
import torch

import metaloss.pretrained as pretrained
from metaloss import metrics
from metaloss.data.images import load_pair
from metaloss.deploy import fuse_images, load_model

# Plain averaging of the two sources (cddfuse profile): tno25 VIF 0.573, Qabf 0.356 (docs/pretrained.md).
AVERAGE_TNO = {"VIF": 0.573, "Qabf": 0.356}


@pytest.mark.parametrize("model", sorted(pretrained.MODELS))
def test_each_model_ships_as_package_data_and_loads(model):
    resource = pretrained.default_checkpoint(name=pretrained.model_file(model))
    assert resource is not None, f"metaloss/pretrained/{model}.pt is missing"
    with resources.as_file(resource) as path:
        assert path.stat().st_size < 2 * 2**20  # weights only, no optimizer state
    loaded = load_model(None, model=model, generator=True)
    assert sum(p.numel() for p in loaded.fusion.parameters()) == 59_856
    assert not any(p.requires_grad for p in loaded.fusion.parameters())


@pytest.mark.shared_data
def test_default_model_fuses_tno_pairs_better_than_averaging(shared_data):
    torch.set_num_threads(1)
    model = load_model(None)
    tno = shared_data / "tno25"
    names = ["01", "10", "17"]
    scores: dict[str, list[float]] = {}
    for name in names:
        pair = load_pair(next((tno / "ir").glob(name + ".*")), next((tno / "vi").glob(name + ".*")))
        fused = torch.from_numpy(fuse_images(model, pair).image).float()
        ir, vi = (pair.ir.y[0] * 255).round(), (pair.vi.y[0] * 255).round()
        values = metrics.evaluate(
            fused[None, None], ir[None, None], vi[None, None], profile="cddfuse", metrics=["VIF", "Qabf"]
        )
        for key, value in values.items():
            scores.setdefault(key, []).append(float(value))
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    assert means["VIF"] > AVERAGE_TNO["VIF"] and means["Qabf"] > AVERAGE_TNO["Qabf"], means
