"""MEFB's FMI, NMI, Qncie and TE (:mod:`metaloss.metrics.mefb_info`) against MEFB's MATLAB values,
and a few properties on synthetic images."""

from __future__ import annotations

import math

import pytest
import torch
from mefb_reference import Case, cases, needs_mefb_data, read, relative_errors

from metaloss.metrics.mefb_info import SPECS

pytestmark = needs_mefb_data

SPEC = {s.name: s for s in SPECS}

#: Methods whose MATLAB values belong to their fused images. The reference file's IFCNN, MGFF and
#: SPD_MEF columns do not: for every metric (EN and SD too) the IFCNN images give the SPD_MEF
#: column's values and the MGFF and SPD_MEF images match no column.
MATCHED_METHODS = ("DEM", "FMMEF", "GFF", "U2Fusion")


def _printed(v: float) -> bool:
    """Whether ``v`` is a 5-significant-digit ``dlmwrite`` value (the others are stored in full)."""
    return float(f"{v:.5g}") == v


def _checked() -> tuple[Case, ...]:
    """A spread of the usable cases (every 5th: 12 scenes, methods in turn), plus every case with
    full-precision values. Usable: a matched method, and sources as large as the fused image
    (MEFB's Preschool sources were twice the size of those stored here, so are most fused images)."""
    usable = [c for c in cases() if c.method in MATCHED_METHODS]
    picked = [
        c
        for i, c in enumerate(usable)
        if i % 5 == 0 or not all(c.expected[m] is None or _printed(c.expected[m]) for m in SPEC)
    ]
    return tuple(c for c in picked if read(c.a).shape == read(c.fused).shape)


@pytest.mark.parametrize("name", list(SPEC))
def test_matches_matlab(name: str) -> None:
    fn = SPEC[name].fn
    checked = _checked()
    errors = list(relative_errors(lambda f, a, b: fn(f, a, b, None), name, checked))
    assert len(errors) == len(checked) >= 12
    worst_printed = max(e for c, _, exp, e in errors if _printed(exp))
    worst_full = max((e for c, _, exp, e in errors if not _printed(exp)), default=0.0)
    print(f"{name}: max relative error {worst_printed:.2e} (5-digit values), {worst_full:.2e} (full precision)")
    assert worst_printed <= 5e-5  # half a unit in the 5th significant digit
    assert worst_full <= 1e-12


def _image(seed: int, c: int = 1, b: int = 1, h: int = 40, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    return torch.round(255 * x * torch.linspace(0.2, 1.0, w, dtype=torch.float64))


def test_identical_images() -> None:
    """F = A = B spanning 0–255 (so ``normalize1`` keeps it): closed forms from its grey-level pdf p."""
    x = _image(0)
    x[..., 0, 0], x[..., -1, -1] = 0.0, 255.0
    p = torch.bincount(x.flatten().long(), minlength=256).double() / x.numel()
    p = p[p > 0]
    n = float(-(p * torch.log2(p)).sum()) / 8.0  # NCC(x, x) = H(x)/log2(256)
    r = torch.tensor([1 + 2 * n, 1 - n, 1 - n], dtype=torch.float64)
    qncie = 1.0 + float((r * torch.log2(r / 3)).sum()) / 24.0
    te = 2.0 * (1.0 - float(p.pow(2.0 - 1.85).sum())) / (1.0 - 1.85)  # h diagonal: Σ p^q/(p²)^(q−1)
    expected = {"FMI": 1.0, "NMI": 2.0, "Qncie": qncie, "TE": te}
    for name, value in expected.items():
        assert float(SPEC[name].fn(x, x, x)) == pytest.approx(value, rel=1e-12), name


def test_batch_order_and_colour_rule() -> None:
    f, a, b = _image(1, c=3, b=2), _image(2, c=3), _image(3, c=3)
    grey_a, grey_b = a[:, :1], b[:, :1]
    for spec in SPECS:
        batch = spec.fn(f, a, b, {})
        singles = torch.cat([spec.fn(f[i : i + 1], a, b, None) for i in range(2)])
        assert torch.allclose(batch, singles, rtol=1e-12, atol=0), spec.name
        assert torch.allclose(spec.fn(f, b, a, None), batch, rtol=1e-12, atol=1e-12), spec.name
        # colour F with grey sources: F's first channel only
        first = spec.fn(f[:, :1].contiguous(), grey_a, grey_b, None)
        assert torch.equal(spec.fn(f, grey_a, grey_b, None), first), spec.name
        assert all(math.isfinite(v) for v in batch.tolist()), spec.name
