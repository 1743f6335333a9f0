"""Metrics where TDFusion's ``Evaluator.py`` differs from CDDFuse's (the ``tdfusion`` profile).

TDFusion's evaluator is CDDFuse's with two changes: VIF and SSIM are the *mean* over the two
sources instead of the sum, and

- VIF comes from ``sewar.full_ref.vifp`` (the same pixel-domain VIFp, σn² = 2, but a flat
  reference gives NaN instead of CDDFuse's 1);
- SSIM is scikit-image's default on ``np.uint8`` copies of the images, so the data range is 255
  (not 2) and the computation is in float64; ``np.uint8`` truncates towards zero (values outside
  0–255 are clamped here; NumPy's result for them is platform-dependent).

Everything else (EN, SF, SCD, Qabf, and the CDDFuse metrics that TDFusion's file does not list)
is taken from :mod:`metaloss.metrics.cddfuse`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaloss.metrics._ops import Cache, cached
from metaloss.metrics.cddfuse import ssim_skimage_multi, vifp_multi

__all__ = ["ssim", "vif"]


def vif(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """VIF = (VIFp(A, F) + VIFp(B, F)) / 2; NaN for a flat source (sewar)."""
    va, vb = vifp_multi((a, b), f, nan_to_one=False, cache=cache)
    return (va + vb) / 2.0


def _as_uint8(x: Tensor) -> Tensor:
    return torch.trunc(x.clamp(0, 255)).to(torch.float64)


def ssim(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """SSIM = (SSIM(uint8 F, uint8 A) + SSIM(uint8 F, uint8 B)) / 2, scikit-image defaults
    (7×7 uniform window, sample covariance), data range 255, float64."""
    a8 = cached(cache, "uint8", a, lambda: _as_uint8(a))
    b8 = cached(cache, "uint8", b, lambda: _as_uint8(b))
    sa, sb = ssim_skimage_multi(_as_uint8(f), (a8, b8), 255.0, cache=cache)
    return (sa + sb) / 2.0
