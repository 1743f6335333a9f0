"""MEFB's metrics that VIFB also has (``metaloss.metrics.mefb.SHARED_SPECS``) against MEFB's MATLAB
values (``mefb_reference``: 5 significant digits, so relative error ≤ 5e-5), and MEFB's colour rule
on synthetic images.

Checked cases: the 71 whose MATLAB value was computed on the files we have (``mefb_reference.cases``
says which and why).
"""

from __future__ import annotations

import pytest
import torch
from mefb_reference import cases, needs_mefb_data, relative_errors

from metaloss.metrics import vifb
from metaloss.metrics._ops import rgb_to_gray_matlab
from metaloss.metrics.mefb import MEFB_NAMES, SHARED_SPECS

pytestmark = needs_mefb_data

SPECS = {s.name: s for s in SHARED_SPECS}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_names():
    assert [s.name for s in SHARED_SPECS] == ["CE", "EN", "PSNR", "AG", "EI", "Qabf", "SD", "SF", "Qcb", "Qcv"]
    assert len(MEFB_NAMES) == 20 and all(s.name in MEFB_NAMES for s in SHARED_SPECS)
    assert {s.name for s in SHARED_SPECS if not s.higher_is_better} == {"CE", "Qcv"}


@pytest.mark.parametrize("name", list(SPECS))
def test_matches_matlab(name):
    """Every case within MATLAB's 5 printed digits."""
    spec = SPECS[name]
    cache: dict = {}  # shared sources: their per-channel work is done once per scene

    def metric(f, a, b):
        return spec.fn(f, a, b, cache)

    errors = list(relative_errors(metric, MEFB_NAMES[name]))
    assert len(errors) == len(cases()) == 71
    case, ours, matlab, worst = max(errors, key=lambda e: e[3])
    print(f"{name}: max relative error {worst:.2e} ({case.scene}/{case.method}: {ours!r} vs {matlab!r})")
    assert worst <= 5e-5, f"{case.scene}/{case.method}: {ours} vs MATLAB {matlab}"


def _images(seed: int, c_fused: int, c_a: int, c_b: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (24, 20)
    smooth = torch.linspace(0, 200, shape[0] * shape[1], dtype=torch.float64).reshape(shape)

    def img(c: int, b: int) -> torch.Tensor:
        noise = torch.randint(0, 56, (b, c) + shape, generator=g).to(torch.float64)
        return smooth + noise

    return img(c_fused, batch), img(c_a, 1), img(c_b, 1)


def test_colour_fused_grey_sources_uses_first_channel():
    """MATLAB cuts F to F(:,:,1) — except AG, whose F is double already and goes through rgb2gray."""
    f, a, b = _images(0, 3, 1, 1)
    for spec in SHARED_SPECS:
        expected = spec.fn(rgb_to_gray_matlab(f, uint8=False) if spec.name == "AG" else f[:, :1], a, b)
        torch.testing.assert_close(spec.fn(f, a, b), expected, rtol=0, atol=0, msg=spec.name)


def test_grey_fused_colour_sources_converted():
    """A grey F: colour sources through rgb2gray, rounded for CE only (its sources are uint8)."""
    f, a, b = _images(1, 1, 3, 3)
    ce = SPECS["CE"].fn(f, a, b)
    rounded = vifb.cross_entropy(f, rgb_to_gray_matlab(a, uint8=True), rgb_to_gray_matlab(b, uint8=True))[:, 0]
    torch.testing.assert_close(ce, rounded, rtol=0, atol=0)
    psnr = SPECS["PSNR"].fn(f, a, b)
    unrounded = vifb.psnr(f, rgb_to_gray_matlab(a, uint8=False), rgb_to_gray_matlab(b, uint8=False))[:, 0]
    torch.testing.assert_close(psnr, unrounded, rtol=0, atol=0)


def test_colour_is_channel_mean_and_batches():
    """Colour images: the mean of the channel values; a batch of fused images against batch-1
    sources gives each image's own value (also with a cache shared by the calls)."""
    f, a, b = _images(2, 3, 3, 3, batch=3)
    for spec in SHARED_SPECS:
        rtol = 1e-6 if spec.name == "Qcv" else 1e-12  # Qcv's float32 FFTs round differently in a batch
        per_channel = torch.stack([spec.fn(f[:, k : k + 1], a[:, k : k + 1], b[:, k : k + 1]) for k in range(3)])
        batched = spec.fn(f, a, b, {})
        torch.testing.assert_close(batched, per_channel.mean(dim=0), rtol=rtol, atol=0, msg=spec.name)
        one_by_one = torch.cat([spec.fn(f[i : i + 1], a, b) for i in range(3)])
        torch.testing.assert_close(batched, one_by_one, rtol=rtol, atol=0, msg=spec.name)


def test_spatial_frequency_per_channel():
    """MEFB's SF is the mean of the channels' SF (VIFB's sees the channels side by side)."""
    f, a, b = _images(3, 3, 3, 3)
    per_channel = torch.stack([vifb.spatial_frequency(f[:, k : k + 1]) for k in range(3)]).mean(dim=0)
    torch.testing.assert_close(SPECS["SF"].fn(f, a, b), per_channel, rtol=1e-14, atol=0)
    assert not torch.allclose(per_channel, vifb.spatial_frequency(f))
