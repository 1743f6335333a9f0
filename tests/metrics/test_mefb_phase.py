"""MEFB's Qp (``metaloss.metrics.mefb_phase``) against MEFB's MATLAB values, and its colour rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mefb_reference import cases, needs_mefb_data, relative_errors

from metaloss.metrics._ops import correlate_sep_same_zero, gaussian_1d
from metaloss.metrics.mefb_phase import (
    SPECS,
    _ranked,
    _source_terms,
    _zhao_term,
    phase_congruency,
    qp,
)

pytestmark = needs_mefb_data

# A landscape scene with an odd number of rows (myphasecong3 builds its grid differently for odd
# sizes) and a portrait one.
SCENES = ("Venice", "Laurenziana")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_qp_matches_matlab() -> None:
    selected = tuple(c for c in cases() if c.scene in SCENES)
    assert len(selected) == 5 * len(SCENES)
    cache: dict = {}  # read() returns the same source tensors for a scene: their work is shared

    def metric(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(qp(f, a, b, cache)[0])

    errors = [(e, case.scene, case.method, ours, ref) for case, ours, ref, e in relative_errors(metric, "Qp", selected)]
    assert len(errors) == len(selected)
    worst = max(errors)
    assert worst[0] <= 5e-5, f"max relative error {worst}"


def _scene(seed: int, channels: int, h: int = 37, w: int = 44) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, 1, h // 4 + 1, w // 4 + 1), generator=g, dtype=torch.float64)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.rand((1, channels, h, w), generator=g, dtype=torch.float64)
    return torch.round(img / img.max() * 255.0)


def test_batch_and_cache_match_single_images() -> None:
    a, b = _scene(1, 3), _scene(2, 3)
    fused = torch.cat([_scene(3, 3), _scene(4, 3)])
    cache: dict = {}
    batched = qp(fused, a, b, cache)
    again = qp(fused[1:], a, b, cache)  # the sources' work now comes from the cache
    singles = torch.stack([qp(fused[i : i + 1], a, b)[0] for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=1e-12, atol=0)
    torch.testing.assert_close(again, singles[1:], rtol=1e-12, atol=0)
    per_image_sources = qp(fused, torch.cat([a, a]), torch.cat([b, b]))
    torch.testing.assert_close(per_image_sources, singles, rtol=1e-12, atol=0)


def test_colour_rules() -> None:
    a3, b3, f3 = _scene(1, 3), _scene(2, 3), _scene(3, 3)
    a1, b1, f1 = a3[:, :1], b3[:, :1], f3[:, :1]
    # Colour images: the mean of the per-channel values.
    per_channel = torch.stack([qp(f3[:, k : k + 1], a3[:, k : k + 1], b3[:, k : k + 1]) for k in range(3)])
    torch.testing.assert_close(qp(f3, a3, b3), per_channel.mean(dim=0), rtol=1e-12, atol=0)
    # Grey sources, colour fused image: its first channel only.
    torch.testing.assert_close(qp(f3, a1, b1), qp(f1, a1, b1), rtol=1e-12, atol=0)
    # Grey fused image, colour sources: rgb2gray of the sources as doubles (not rounded).
    w = torch.tensor([0.298936021293775, 0.587043074451121, 0.114020904255103], dtype=torch.float64)
    gray = lambda x: (x * w[:, None, None]).sum(dim=1, keepdim=True)
    torch.testing.assert_close(qp(f1, a3, b3), qp(f1, gray(a3), gray(b3)), rtol=1e-9, atol=0)
    # Grey first source, colour second source and fused image: B made grey for every channel of F.
    per_channel = torch.stack([qp(f3[:, k : k + 1], a1, gray(b3)) for k in range(3)])
    torch.testing.assert_close(qp(f3, a1, b3), per_channel.mean(dim=0), rtol=1e-9, atol=0)
    with pytest.raises(ValueError):
        qp(f3, a3, b1)


def test_phase_congruency_ranges_and_spec() -> None:
    x = _scene(8, 1, 31, 30)[0, 0]
    pc, big, small = phase_congruency(x)
    assert pc.shape == x.shape and torch.isfinite(pc).all()
    assert (pc >= 0).all() and (pc <= 1).all()
    assert (big >= small - 1e-12).all()
    a, b = _scene(5, 1), _scene(6, 1)
    assert float(qp(a, a, b)[0]) > float(qp(_scene(7, 1), a, b)[0])  # a source itself scores well
    (spec,) = SPECS
    assert spec.name == "Qp" and spec.higher_is_better


def test_ranked_matches_partition() -> None:
    g = np.random.default_rng(0)
    for x in (
        g.random(300_001).astype(np.float32),
        np.round(g.random(200_000) * 50).astype(np.float32),
        np.sort(g.random(100_000)).astype(np.float32),
        g.random(1001).astype(np.float32),
    ):
        n = x.size
        ks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
        np.testing.assert_array_equal(_ranked(x, ks), np.partition(x, ks)[ks])


def test_zhao_term_masking_as_matlab() -> None:
    """Off its mask a source's correlation counts as 0; the max over the sources skips NaN."""
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 23, 19)
    pf = torch.rand(shape, generator=g, dtype=torch.float64)
    feats = [torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(3)]
    feats[0][..., 3:6, 4:9] = float("nan")  # NaN correlations where source 1's window meets them
    masks = tuple(torch.rand(shape, generator=g) > 0.3 for _ in range(3))
    masks[2][..., :11, :14] = False  # every NaN meets a zeroed value: a finite total
    sources = _source_terms(feats[0], feats[1], feats[2] > 0.5, masks)
    floor = torch.zeros(shape, dtype=torch.float64).masked_fill_(masks[0] & masks[1] & masks[2], float("nan"))
    count = masks[2].sum(dim=(-2, -1))
    ours = _zhao_term(floor, count, sources, pf)
    local = lambda x: correlate_sep_same_zero(x, gaussian_1d(11, 1.5), gaussian_1d(11, 1.5))
    muf, varf = local(pf), local(pf * pf) - local(pf) ** 2
    corrs = []
    for (pm, *_), mask in zip(sources, masks, strict=True):
        mu, var = local(pm), local(pm * pm) - local(pm) ** 2
        corr = (local(pm * pf) - mu * muf + 1e-4) / (torch.sqrt(torch.abs(var * varf)) + 1e-4)
        corrs.append(torch.where(mask, corr, 0.0))
    stacked = torch.stack(corrs)
    best = torch.where(stacked.isnan().all(dim=0), float("nan"), stacked.nan_to_num(nan=-math.inf).amax(dim=0))
    expected = best.sum(dim=(-2, -1)) / count
    assert stacked.isnan().any() and expected.isfinite().all()
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
