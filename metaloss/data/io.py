"""Image reading with OpenCV, the way the reference fusion evaluators decode images.

JPEG decoders differ by a grey level here and there, which is enough to miss the five printed
significant digits of published metric values; both reference Python evaluators (CDDFuse,
TDFusion) decode with OpenCV, and OpenCV's decoder also reproduces the VIFB MATLAB values on the
VIFB images. So everything here goes through :func:`cv2.imdecode`.

Paths are read with :func:`numpy.fromfile` and decoded from memory, so non-ASCII file names work
on every platform (``cv2.imread`` cannot open them on Windows).

- :func:`read_image` returns the decoded array as stored: ``uint8`` or ``uint16``, ``H×W`` for
  single-channel images, ``H×W×3`` (RGB order) or ``H×W×4`` (RGBA order) otherwise.
- :func:`read_gray_cddfuse` is CDDFuse's ``image_read_cv2(path, "GRAY")``: ``cv2.imread(path)``
  (3-channel 8-bit BGR; 16-bit images are scaled to 8 bits and alpha is dropped by OpenCV), BGR→GRAY
  on float32, then :func:`numpy.round` (half to even). Returns float32 ``H×W`` with integer values.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_gray_cddfuse",
    "read_bytes",
]

#: File name extensions treated as images when listing folders (lower case, with the dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {str(path)!r}: {reason}")


def read_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    """The raw bytes of ``path`` as a ``uint8`` array, with :class:`ImageReadError` for a missing,
    unreadable or empty file."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "no such file")
    if p.is_dir():
        raise ImageReadError(p, "is a directory")
    try:
        buf = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:  # permissions, I/O errors
        raise ImageReadError(p, f"{type(exc).__name__}: {exc}") from exc
    if buf.size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    return buf


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(buf: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Refuse a PNG whose chunk claims more bytes than the file holds.

    OpenCV allocates a chunk's claimed length before reading it, so one damaged length field in a
    few-hundred-byte file would otherwise allocate up to 4 GiB.  Walking the chunk headers costs
    nothing next to decoding.
    """
    data = memoryview(buf)
    size, pos = len(data), len(_PNG_SIGNATURE)
    while pos + 8 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if pos + 12 + length > size:
            raise ImageReadError(
                path,
                f"truncated or corrupt PNG: chunk {kind.decode('latin-1')!r} at byte {pos} claims {length} bytes, "
                f"the file has {max(0, size - pos - 12)} left",
            )
        if kind == b"IEND":
            return
        pos += 12 + length


def _decode(path: str | os.PathLike[str], flags: int) -> np.ndarray:
    buf = read_bytes(path)
    if buf[: len(_PNG_SIGNATURE)].tobytes() == _PNG_SIGNATURE:
        _check_png_chunks(buf, path)
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV could not decode it ({exc})") from exc
    if img is None or img.size == 0:
        raise ImageReadError(path, "not a supported image format, or the file is corrupt")
    return img


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` with OpenCV (``IMREAD_UNCHANGED``).

    Returns ``uint8`` or ``uint16`` data: ``H×W`` for one channel, ``H×W×3`` in RGB order,
    ``H×W×4`` in RGBA order. Raises :class:`ImageReadError` (a :class:`ValueError`) naming the file
    when it is missing, empty, corrupt, of an unsupported format, bit depth or channel count.
    """
    img = _decode(path, cv2.IMREAD_UNCHANGED)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"unsupported sample type {img.dtype} (only 8- and 16-bit images)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageReadError(path, f"unsupported channel layout {img.shape} (1, 3 or 4 channels)")
    if img.shape[2] == 3:
        return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))


def read_gray_cddfuse(path: str | os.PathLike[str]) -> np.ndarray:
    """CDDFuse's ``image_read_cv2(path, 'GRAY')``: float32 ``H×W`` with values 0–255.

    ``cv2.imread`` with its default flag (8-bit, 3 channels, BGR), ``astype(float32)``,
    ``cv2.cvtColor(BGR2GRAY)`` on float32 and ``np.round`` (half to even).
    """
    img = _decode(path, cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return np.round(gray)
