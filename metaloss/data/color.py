"""YCbCr conversion matching OpenCV's, and the chroma fusion rule.

The fusion networks see one channel (luma). Colour images are split into Y and CbCr with the same
float formulas as OpenCV's ``cv2.COLOR_BGR2YCrCb`` / ``cv2.COLOR_YCrCb2BGR`` on ``float32`` images
in ``[0, 1]`` (OpenCV's chroma offset for float data is 0.5)::

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cb = (B − Y) · 0.564 + 0.5            Cr = (R − Y) · 0.713 + 0.5

    R  = Y + 1.403 (Cr − 0.5)
    G  = Y − 0.714 (Cr − 0.5) − 0.344 (Cb − 0.5)
    B  = Y + 1.773 (Cb − 0.5)

(OpenCV's 8-bit path uses fixed-point integers and differs from the float path by up to ~1.3 grey
levels; we always convert in float.)  The round trip is exact only up to the four-digit constants,
as in OpenCV (≈3·10⁻⁴ on [0, 1]).

Layouts: **torch tensors** are channel-first, the three channels on dimension ``-3``
(``[3, H, W]`` or ``[B, 3, H, W]``); **numpy arrays** are channel-last, as OpenCV's
(``[H, W, 3]``).  Channel order of the YCbCr side is always **Y, Cb, Cr** (OpenCV's own output is
Y, Cr, Cb).  Inputs must be floating point in ``[0, 1]``; results keep the input's dtype.

Chroma of two colour sources is fused per pixel, on CbCr in ``[0, 1]`` (τ = 0.5, the neutral value)::

    C_f = Σ_k C_k · |C_k − τ| / Σ_k |C_k − τ|          (C_f = τ where every source is neutral)

so the more saturated source dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CHROMA_NEUTRAL",
    "bgr_to_ycbcr",
    "fuse_chroma",
    "rgb_to_ycbcr",
    "ycbcr_to_bgr",
    "ycbcr_to_rgb",
]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)

#: OpenCV's float constants (``color_yuv.simd.hpp``: RGB2YCrCb_f / YCrCb2RGB_f).
KR, KG, KB = 0.299, 0.587, 0.114
CR_SCALE, CB_SCALE = 0.713, 0.564
CR_TO_R, CR_TO_G, CB_TO_G, CB_TO_B = 1.403, -0.714, -0.344, 1.773
#: The chroma offset for float images in [0, 1] (OpenCV: 0.5 for float, 128 for uint8).
CHROMA_NEUTRAL = 0.5


def _check_float(x: np.ndarray | Tensor) -> None:
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor in [0, 1], got {x.dtype}")
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"expected 3 channels on dimension -3 ([..., 3, H, W]), got shape {tuple(x.shape)}")
    elif isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"expected a floating-point array in [0, 1], got {x.dtype}")
        if x.ndim < 3 or x.shape[-1] != 3:
            raise ValueError(f"expected 3 channels on the last axis ([..., H, W, 3]), got shape {x.shape}")
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def _split(x: ArrayOrTensor) -> tuple[ArrayOrTensor, ArrayOrTensor, ArrayOrTensor]:
    if isinstance(x, Tensor):
        a, b, c = x.unbind(dim=-3)
    else:
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
    return a, b, c


def _stack(a: ArrayOrTensor, b: ArrayOrTensor, c: ArrayOrTensor) -> ArrayOrTensor:
    if isinstance(a, Tensor):
        return torch.stack([a, b, c], dim=-3)
    return np.stack([a, b, c], axis=-1)


def _forward(r: ArrayOrTensor, g: ArrayOrTensor, b: ArrayOrTensor) -> ArrayOrTensor:
    y = KR * r + KG * g + KB * b
    cb = (b - y) * CB_SCALE + CHROMA_NEUTRAL
    cr = (r - y) * CR_SCALE + CHROMA_NEUTRAL
    return _stack(y, cb, cr)


def _inverse(ycbcr: ArrayOrTensor) -> tuple[ArrayOrTensor, ArrayOrTensor, ArrayOrTensor]:
    y, cb, cr = _split(ycbcr)
    cb, cr = cb - CHROMA_NEUTRAL, cr - CHROMA_NEUTRAL
    r = y + CR_TO_R * cr
    g = y + CR_TO_G * cr + CB_TO_G * cb
    b = y + CB_TO_B * cb
    return r, g, b


def rgb_to_ycbcr(rgb: ArrayOrTensor) -> ArrayOrTensor:
    """RGB → (Y, Cb, Cr), float in [0, 1]; tensors ``[..., 3, H, W]``, arrays ``[..., H, W, 3]``."""
    _check_float(rgb)
    r, g, b = _split(rgb)
    return _forward(r, g, b)


def bgr_to_ycbcr(bgr: ArrayOrTensor) -> ArrayOrTensor:
    """BGR (OpenCV order) → (Y, Cb, Cr); the float result of ``cv2.COLOR_BGR2YCrCb`` with Cb, Cr swapped."""
    _check_float(bgr)
    b, g, r = _split(bgr)
    return _forward(r, g, b)


def ycbcr_to_rgb(ycbcr: ArrayOrTensor) -> ArrayOrTensor:
    """(Y, Cb, Cr) → RGB, not clipped (clip before quantising)."""
    _check_float(ycbcr)
    r, g, b = _inverse(ycbcr)
    return _stack(r, g, b)


def ycbcr_to_bgr(ycbcr: ArrayOrTensor) -> ArrayOrTensor:
    """(Y, Cb, Cr) → BGR (OpenCV order); the float result of ``cv2.COLOR_YCrCb2BGR``, not clipped."""
    _check_float(ycbcr)
    r, g, b = _inverse(ycbcr)
    return _stack(b, g, r)


def fuse_chroma(chromas: Sequence[ArrayOrTensor], neutral: float = CHROMA_NEUTRAL) -> ArrayOrTensor:
    """Fuse the chroma of several colour sources: ``Σ C_k·|C_k − τ| / Σ |C_k − τ|`` per element.

    ``chromas``: arrays or tensors of one shape (e.g. ``[2, H, W]`` CbCr, or one plane each) with
    values in ``[0, 1]``; ``neutral`` is τ.  Where every source equals τ the result is τ.
    A single source is returned unchanged (as a copy).
    """
    if len(chromas) == 0:
        raise ValueError("fuse_chroma needs at least one chroma source")
    first = chromas[0]
    if any(c.shape != first.shape for c in chromas):
        raise ValueError(f"chroma shapes differ: {[tuple(c.shape) for c in chromas]}")
    if isinstance(first, Tensor):
        num = torch.zeros_like(first)
        den = torch.zeros_like(first)
        for c in chromas:
            dev = (c - neutral).abs()
            num = num + c * dev
            den = den + dev
        return torch.where(
            den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(den, neutral)
        )
    num_a = np.zeros_like(first)
    den_a = np.zeros_like(first)
    for c in chromas:
        dev = np.abs(c - neutral)
        num_a = num_a + c * dev
        den_a = den_a + dev
    safe = np.where(den_a > 0, den_a, 1)
    return np.where(den_a > 0, num_a / safe, neutral).astype(first.dtype, copy=False)
