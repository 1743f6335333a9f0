"""Load image pairs for fusion: decode, normalise to [0, 1], split luma and chroma.

Decoding goes through :mod:`metaloss.data.io` (OpenCV, as the reference evaluators decode), so PNG,
JPEG, BMP and TIFF files with 1, 3 or 4 channels and 8 or 16 bits per sample are read; anything else
raises :class:`~metaloss.data.io.ImageReadError`, whose message names the file.

Memory: an image whose header claims more pixels than the budget is refused before it is decoded.
The budget is :func:`max_image_pixels`: ``set_max_image_pixels(n)`` in this process, else the
environment variable ``METALOSS_MAX_IMAGE_PIXELS``, else 2**26 (67 M pixels, 8192×8192; LLVIP's
1280×1024 is the largest benchmark image).  A JPEG cut short that OpenCV still decodes gives a
:class:`CorruptImageWarning` naming the file.

Normalisation rule (stored sample type → float32 in [0, 1]):

* ``uint8``: ``v / 255``;  ``uint16``: ``v / 65535`` (the full 16-bit range, whatever bits the
  sensor used: a 12-bit image stored in 16 bits comes out dark; it is not rescaled).
* floating-point TIFF: used as is (clipped to [0, 1]) when every value is already in [0, 1];
  otherwise min–max normalised over the image, ``(v − min) / (max − min)`` (a constant image
  becomes 0).  NaN or infinite values are refused.

Channels: an alpha channel is dropped (colours are taken as stored, not composited on a
background); three identical colour channels (grayscale saved as RGB, e.g. LLVIP's infrared JPEGs)
count as grayscale.  A colour image becomes Y plus CbCr with OpenCV's float YCbCr formulas
(:mod:`metaloss.data.color`); a grayscale image is its own Y.

Colour of the fused image (:func:`load_pair`): two grayscale sources give a grayscale result; one
colour source gives its CbCr; two colour sources give ``fuse_chroma`` of both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from metaloss.data import io
from metaloss.data.color import fuse_chroma, rgb_to_ycbcr, ycbcr_to_rgb
from metaloss.data.io import CorruptImageWarning, ImageReadError, max_image_pixels, set_max_image_pixels

__all__ = [
    "CorruptImageWarning",
    "ImagePair",
    "ImageReadError",
    "ImageSizeError",
    "SourceImage",
    "compose",
    "load_image",
    "load_pair",
    "max_image_pixels",
    "normalise",
    "pair_of",
    "read_any",
    "set_max_image_pixels",
    "source_image",
]


class ImageSizeError(ValueError):
    """The two images of a pair differ in size; the message names both files."""

    def __init__(self, ir: SourceImage, vi: SourceImage) -> None:
        self.ir_path, self.vi_path = ir.path, vi.path
        super().__init__(
            f"the images of a pair differ in size: {str(ir.path)!r} is {ir.width}×{ir.height}, "
            f"{str(vi.path)!r} is {vi.width}×{vi.height} (register and crop them to one size first)"
        )


@dataclass
class SourceImage:
    """One decoded source image.

    ``y``: ``[1, H, W]`` float32 luma in [0, 1]; ``cbcr``: ``[2, H, W]`` float32 chroma (Cb, Cr)
    in [0, 1], or None for a grayscale image.  ``stored``: the sample type and channel count as
    decoded (e.g. ``"uint16×3"``), for messages.
    """

    path: Path
    y: Tensor
    cbcr: Tensor | None
    stored: str

    @property
    def is_color(self) -> bool:
        return self.cbcr is not None

    @property
    def height(self) -> int:
        return int(self.y.shape[-2])

    @property
    def width(self) -> int:
        return int(self.y.shape[-1])


@dataclass
class ImagePair:
    """A pair ready for fusion: the two Y channels and the chroma the fused image gets (or None)."""

    ir: SourceImage
    vi: SourceImage
    chroma: Tensor | None

    @property
    def is_color(self) -> bool:
        return self.chroma is not None


def read_any(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path``: what :func:`metaloss.data.io.read_image` returns (uint8/uint16, H×W, H×W×3 RGB,
    H×W×4 RGBA), and in addition floating-point images (TIFF) as float32 in the same layouts."""
    try:
        return io.read_image(path)
    except ImageReadError as err:
        if "sample type" not in err.reason:
            raise
        refused = err
    # io refuses sample types other than uint8/uint16: decode again (the same OpenCV call) and keep
    # floating-point images; anything else stays refused with io's message.
    img = cv2.imdecode(io.read_bytes(path), cv2.IMREAD_UNCHANGED)
    if img is None or not np.issubdtype(img.dtype, np.floating):
        raise refused
    img = img.astype(np.float32, copy=False)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.ndim != 2:
        raise ImageReadError(path, f"unsupported channel layout {img.shape} (1, 3 or 4 channels)")
    return np.ascontiguousarray(img)


def normalise(img: np.ndarray, path: str | os.PathLike[str] = "<array>") -> np.ndarray:
    """Samples → float32 in [0, 1] by the rule in the module docstring (any channel layout)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535)
    if np.issubdtype(img.dtype, np.floating):
        x = img.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ImageReadError(path, "floating-point image with NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.clip(x, 0.0, 1.0)
        if hi == lo:
            return np.zeros_like(x)
        # in float64: hi - lo overflows float32 for values near its limits
        return np.clip((x.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    raise ImageReadError(path, f"unsupported sample type {img.dtype}")


def _is_gray(rgb: np.ndarray) -> bool:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return bool(np.array_equal(r, g) and np.array_equal(g, b))


def load_image(path: str | os.PathLike[str]) -> SourceImage:
    """Decode and normalise one image (see the module docstring); raises ``ImageReadError``."""
    path = Path(path)
    return source_image(read_any(path), path)


def source_image(img: np.ndarray, path: str | os.PathLike[str] = "<array>") -> SourceImage:
    """A decoded image (``H×W``, ``H×W×3`` RGB or ``H×W×4`` RGBA; uint8, uint16 or floating point) as
    :func:`load_image` makes it from a file: normalised, alpha dropped, Y and CbCr; ``path`` names it."""
    path = Path(path)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ImageReadError(path, f"unsupported channel layout {img.shape} (H×W, H×W×3 RGB or H×W×4 RGBA)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    channels = 1 if img.ndim == 2 else img.shape[2]
    stored = f"{img.dtype}×{channels}"
    if img.ndim == 3:
        img = img[:, :, :3]  # drop alpha
        if _is_gray(img):
            img = img[:, :, 0]
    x = normalise(img, path)
    if x.ndim == 2:
        return SourceImage(path, torch.from_numpy(np.ascontiguousarray(x))[None], None, stored)
    ycc = torch.from_numpy(rgb_to_ycbcr(x)).permute(2, 0, 1).contiguous()  # [3, H, W] = Y, Cb, Cr
    return SourceImage(path, ycc[:1].clone(), ycc[1:].clone(), stored)


def load_pair(ir_path: str | os.PathLike[str], vi_path: str | os.PathLike[str]) -> ImagePair:
    """Load an infrared–visible pair of one size; the chroma of the fused image follows the colour rule."""
    return pair_of(load_image(ir_path), load_image(vi_path))


def pair_of(ir: SourceImage, vi: SourceImage) -> ImagePair:
    """Two loaded images of one size as a pair; the chroma of the fused image follows the colour rule."""
    if (ir.height, ir.width) != (vi.height, vi.width):
        raise ImageSizeError(ir, vi)
    colour = [s.cbcr for s in (ir, vi) if s.cbcr is not None]
    chroma = None if not colour else colour[0] if len(colour) == 1 else fuse_chroma(colour)
    return ImagePair(ir, vi, chroma)


def stretch(y: Tensor) -> Tensor:
    """Per-image min–max stretch ``(y − min) / (max − min)`` (unchanged when the image is constant),
    as the reference test scripts apply it to the fused Y channel."""
    lo, hi = y.amin(), y.amax()
    if float(hi - lo) <= 0:
        return y
    return (y - lo) / (hi - lo)


def compose(y: Tensor, chroma: Tensor | None) -> np.ndarray:
    """A fused luma ``[1, H, W]`` (or ``[H, W]``) in [0, 1] plus chroma → 8-bit image for writing.

    Returns ``uint8`` ``H×W`` (grayscale) or ``H×W×3`` in **RGB** order; values are clipped to
    [0, 1], scaled by 255 and rounded to nearest (half to even).
    """
    y = y.detach().float().cpu()
    if y.ndim == 3:
        y = y[0]
    if chroma is None:
        out = y.numpy()
    else:
        ycc = torch.cat([y[None], chroma.detach().float().cpu()], dim=0)
        out = ycbcr_to_rgb(ycc).permute(1, 2, 0).numpy()
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
