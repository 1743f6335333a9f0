"""The reordering bound (metaloss.utils.numerics) holds for real reordered sums, and is not loose."""

from __future__ import annotations

import pytest
import torch

from metaloss.utils.numerics import gamma, reordering_tolerance, unit_roundoff


def test_unit_roundoff_and_gamma():
    assert unit_roundoff(torch.float32) == 2.0**-24 and unit_roundoff(torch.float64) == 2.0**-53
    assert gamma(1000, torch.float32) == pytest.approx(1000 * 2.0**-24, rel=1e-4)
    with pytest.raises(ValueError, match="no error bound"):
        gamma(2**25, torch.float32)
    with pytest.raises(ValueError, match="non-negative"):
        reordering_tolerance(torch.float32, 10, magnitude=-1)


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_float32_sums_in_other_orders_stay_within_the_bound(chunk):
    """Sums of 4096 terms: whole, in chunks added in float64 (as the fast engine's bands are), and
    reversed; every pair differs by less than 2·γₙ·Σ|xᵢ|, and by more than a millionth of it (the bound
    is about the effect it describes, not vacuous)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4096, generator=g) * torch.logspace(-3, 3, 4096)
    whole = x.sum(1)
    chunked = torch.stack([c.sum(1).double() for c in x.split(chunk, dim=1)]).sum(0)
    reversed_ = x.flip(1).cumsum(1)[:, -1]
    bound = torch.tensor([reordering_tolerance(torch.float32, 4096, float(m)) for m in x.abs().sum(1)])
    for a, b in ((whole, chunked), (whole, reversed_), (chunked, reversed_)):
        diff = (a.double() - b.double()).abs()
        assert (diff <= bound).all()
        assert (diff.max() / bound.max()) > 1e-6
