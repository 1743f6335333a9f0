"""MEFB's Qc, Qw, Qy, MEF-SSIM and VIF against MEFB's MATLAB values (``mefb_reference``), and
MEF-SSIM on the source kinds of other fusion tasks."""

from __future__ import annotations

import math

import pytest
import torch
from mefb_reference import cases, needs_mefb_data, relative_errors

from metaloss.metrics.mefb_structural import SPECS, mef_ssim

torch.set_num_threads(1)

#: Small scenes (fast), every fused folder with MATLAB values (``mefb_reference.COLUMN``).
SCENES = ("AmikeusBeaverDam", "Cave", "TableLamp", "Venice")

MATLAB_NAMES = {"Qc": "Qc", "Qw": "Qw", "Qy": "Qy", "MEF-SSIM": "MEF_SSIM", "VIF": "VIF"}

#: Relative tolerance: MATLAB's 5 printed digits (5e-5), except where MATLAB's value depends on
#: rounding noise: Qc and Qy (C = 2e-16, constant windows; see ``_qc_channel``): over all 71 cases
#: the median error is ~5e-5 and the largest 0.8 % (Qc) and 1.2 % (Qy).
TOLERANCE = {"Qc": 2e-2, "Qw": 5e-5, "Qy": 2e-2, "MEF-SSIM": 5e-5, "VIF": 5e-5}

_CACHE: dict = {}  # sources are the same tensors for all methods of a scene (``read`` is cached)


def _selected(scenes: tuple[str, ...]) -> tuple:
    return tuple(c for c in cases() if c.scene in scenes)


def _needs_data(test):  # type: ignore[no-untyped-def]
    for mark in needs_mefb_data:
        test = mark(test)
    return test


def _spec(name: str):
    (spec,) = [s for s in SPECS if s.name == name]
    return spec


@_needs_data
@pytest.mark.parametrize("name", list(MATLAB_NAMES))
def test_matches_matlab(name: str) -> None:
    spec = _spec(name)
    errors = [
        (case.scene, case.method, ours, expected, err)
        for case, ours, expected, err in relative_errors(
            lambda f, a, b: spec.fn(f, a, b, _CACHE), MATLAB_NAMES[name], _selected(SCENES)
        )
    ]
    assert len(errors) == len(_selected(SCENES))
    worst = max(errors, key=lambda e: e[-1])
    assert worst[-1] <= TOLERANCE[name], f"{name}: worst {worst}"


@_needs_data
def test_vif_lake1_within_tie_noise() -> None:
    """Lake1: VIF within 2.5e-4 (each pixel takes the source with the smaller gain g; many windows
    give g = 0 to both through the 1e-10 variance thresholds, which MATLAB's rounding decides)."""
    spec = _spec("VIF")
    errors = [
        err for _, _, _, err in relative_errors(lambda f, a, b: spec.fn(f, a, b, None), "VIF", _selected(("Lake1",)))
    ]
    assert max(errors) <= 2.5e-4


def test_specs() -> None:
    assert [s.name for s in SPECS] == ["Qc", "Qw", "Qy", "MEF-SSIM", "VIF"]
    assert all(s.higher_is_better for s in SPECS)


def _smooth_image(channels: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    coarse = torch.rand((1, channels, size[0] // 8 + 1, size[1] // 8 + 1), generator=g, dtype=torch.float64)
    fine = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=True)
    return torch.round(255 * fine)


@pytest.mark.parametrize(
    ("ca", "cb", "cf", "size"),
    [(1, 1, 1, (44, 44)), (1, 3, 3, (50, 61)), (3, 3, 3, (64, 45)), (1, 3, 1, (47, 80))],
)
def test_mef_ssim_any_sources(ca: int, cb: int, cf: int, size: tuple[int, int]) -> None:
    """Multi-focus or infrared–visible pairs: grey or colour, any size ≥ 44 (the 11-pixel window
    at the third scale); a batch of fused images against batch-1 sources. A fused image equal to
    both sources scores ~1, their mean less, with noise added less still. (A scale with a negative
    mean quality, possible for a fused image unrelated to its sources, makes MATLAB's Π Q_l^w_l
    complex; it is NaN here.)"""
    g = torch.Generator().manual_seed(0)
    a, b = _smooth_image(ca, size, g), _smooth_image(cb, size, g)
    base = torch.round((a.mean(dim=1, keepdim=True) + b.mean(dim=1, keepdim=True)) / 2).expand(1, cf, *size)
    noise = torch.randn((1, cf, *size), generator=g, dtype=torch.float64)
    fused = torch.cat([base, (base + 20 * noise).clamp(0, 255)])
    q = mef_ssim(fused, a, b)
    assert q.shape == (2,) and bool(torch.isfinite(q).all())
    assert 1.0 > float(q[0]) > float(q[1]) > 0.0
    grey = a[:, :1]
    assert math.isclose(float(mef_ssim(grey, grey, grey)[0]), 1.0, abs_tol=1e-4)
