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

Before decoding, the width and height are read from the file's header (PNG, JPEG, BMP, TIFF, WebP,
PNM) and an image of more pixels than the budget (:func:`max_image_pixels`) is refused: a PNG of a
few hundred kilobytes can claim 30000×30000 pixels, within OpenCV's own limit (2**30) yet over 7 GB
decoded.  Files of other formats are left to OpenCV's limit.

A JPEG whose data stops before its end-of-image marker (a cut-short copy or download) is refused
as truncated when OpenCV cannot decode it, and decoded with a :class:`CorruptImageWarning` naming the
file when it can (older OpenCV releases do not check that the data is complete).  Damage inside the
data that leaves the markers in place decodes too, with libjpeg's own ``Corrupt JPEG data: ...`` line
on stderr, which does not name the file: JPEGs are decoded with file descriptor 2 captured, and that
line becomes a :class:`CorruptImageWarning` naming the file.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS_ENV",
    "CorruptImageWarning",
    "ImageReadError",
    "image_size",
    "max_image_pixels",
    "read_bytes",
    "read_gray_cddfuse",
    "read_image",
    "set_max_image_pixels",
]

#: File name extensions treated as images when listing folders (lower case, with the dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {str(path)!r}: {reason}")


class CorruptImageWarning(UserWarning):
    """An image decoded, but its data is damaged (e.g. a JPEG cut short); the message names the file."""


#: The environment variable that sets the pixel budget (a positive whole number of pixels).
MAX_IMAGE_PIXELS_ENV = "METALOSS_MAX_IMAGE_PIXELS"

#: The default pixel budget, 2**26 (67 M pixels, e.g. 8192×8192): 51 times LLVIP's 1280×1024, the
#: largest images of the fusion benchmarks.  Loading an image for fusion peaks near 48 bytes a pixel
#: (the decoded samples, then float32 Y/CbCr planes and their intermediates), so a pair at the budget
#: takes about 6 GiB and a 24 GiB machine keeps room for the network (tiled, see ``metaloss fuse``).
DEFAULT_MAX_IMAGE_PIXELS = 2**26

_max_pixels: int | None = None  # set by set_max_image_pixels; None: the environment or the default


def set_max_image_pixels(pixels: int | None) -> None:
    """Set the pixel budget of this process (over ``$METALOSS_MAX_IMAGE_PIXELS``); ``None`` goes back
    to the environment variable, or else the default."""
    global _max_pixels
    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
        raise ValueError(f"the pixel budget must be a positive whole number of pixels, got {pixels!r}")
    _max_pixels = pixels


def max_image_pixels() -> int:
    """The pixel budget in force: :func:`set_max_image_pixels`'s value, else ``$METALOSS_MAX_IMAGE_PIXELS``,
    else :data:`DEFAULT_MAX_IMAGE_PIXELS`.  Raises ``ValueError`` naming the variable when it is not a
    positive whole number."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        pixels = int(raw)
    except ValueError:
        pixels = 0
    if pixels < 1:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive whole number of pixels, got {raw!r}")
    return pixels


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
    data = buf.data  # a memoryview of the bytes, no copy
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


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack_from(">II", data, 16)


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_JPEG_SOS = 0xDA


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """``(marker, offset of its payload)`` of each marker up to the first start-of-scan, walked as libjpeg
    walks them: bytes before a marker and fill bytes ``FF`` are skipped."""
    segments, pos = [], 2  # after SOI
    while (pos := data.find(b"\xff", pos)) >= 0:
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos + 3 > len(data):
            break
        marker, pos = data[pos], pos + 1
        if marker == 0x00 or 0xD0 <= marker <= 0xD9 or marker == 0x01:  # no payload
            continue
        segments.append((marker, pos))
        if marker == _JPEG_SOS:
            break
        pos += int.from_bytes(data[pos : pos + 2], "big")
    return segments


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, pos in _jpeg_segments(data):
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return width, height
    return None


def _jpeg_is_cut_short(data: bytes) -> bool:
    """True when no end-of-image marker (``FFD9``) follows the start of the image data: the file ends
    early.  (Thumbnails come before the data, and ``FF`` inside it is always followed by ``00`` or a
    restart marker, so an ``FFD9`` there is the image's own.)"""
    scans = [pos for marker, pos in _jpeg_segments(data) if marker == _JPEG_SOS]
    return bool(scans) and data.find(b"\xff\xd9", scans[0]) < 0


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of the first image (the one OpenCV decodes), classic TIFF or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    offset, count, entry, value = ("Q", "Q", 20, 12) if big else ("I", "H", 12, 8)
    ifd = struct.unpack_from(order + offset, data, 8 if big else 4)[0]
    first = ifd + struct.calcsize(count)
    n = min(struct.unpack_from(order + count, data, ifd)[0], (len(data) - first) // entry)  # a hostile count
    found: dict[int, int] = {}
    for i in range(n):
        tag, kind = struct.unpack_from(order + "HH", data, first + i * entry)
        if tag in (256, 257) and kind in (3, 4, 16):  # ImageWidth, ImageLength as SHORT, LONG, LONG8
            found[tag] = struct.unpack_from(order + {3: "H", 4: "I", 16: "Q"}[kind], data, first + i * entry + value)[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


_PNM_HEADER = re.compile(rb"P[1-6](?:\s|#[^\r\n]*)+(\d+)(?:\s|#[^\r\n]*)+(\d+)")


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    match = _PNM_HEADER.match(data)
    return (int(match[1]), int(match[2])) if match else None


_JPEG_SIGNATURE = b"\xff\xd8"

#: The header reader of each format, by the signatures its files start with.
_SIZE_READERS: list[tuple[tuple[bytes, ...], Callable[[bytes], tuple[int, int] | None]]] = [
    ((_PNG_SIGNATURE,), _png_size),
    ((_JPEG_SIGNATURE,), _jpeg_size),
    ((b"BM",), _bmp_size),
    ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff_size),
    ((b"RIFF",), _webp_size),
    (tuple(f"P{k}".encode() for k in range(1, 7)), _pnm_size),
]


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of a PNG, JPEG, BMP, TIFF, WebP or PNM file, without
    decoding; None for another format or a header too damaged to read (left to OpenCV to judge)."""
    for signatures, reader in _SIZE_READERS:
        if data.startswith(signatures):
            try:
                return reader(data)
            except struct.error:  # the header is cut short
                return None
    return None


def _check_pixel_budget(path: str | os.PathLike[str], data: bytes) -> None:
    """Refuse an image whose header claims more pixels than the budget, before anything is allocated."""
    size = image_size(data)
    if size is None:
        return
    try:
        budget = max_image_pixels()
    except ValueError as err:  # a bad $METALOSS_MAX_IMAGE_PIXELS: refuse with its reason
        raise ImageReadError(path, str(err)) from None
    width, height = size
    if width * height > budget:
        raise ImageReadError(
            path,
            f"{width}×{height} pixels ({width * height:,}) is over the pixel budget of {budget:,} "
            f"(set {MAX_IMAGE_PIXELS_ENV} to raise it)",
        )


#: One decode at a time while file descriptor 2 is redirected (it is the process's, not the thread's).
_STDERR_LOCK = threading.Lock()


def _imdecode_capturing_stderr(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` with what libjpeg writes to file descriptor 2 during it: its warnings on damaged
    data (``Corrupt JPEG data: 1909 extraneous bytes before marker 0xd9``) do not name the file.  Lines
    that are not libjpeg's (another thread's output in that moment) are written back."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no standard error to capture
            return cv2.imdecode(buf, flags), []
        os.dup2(sink.fileno(), 2)
        try:
            img = cv2.imdecode(buf, flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        lines = sink.read().decode("utf-8", "replace").splitlines(keepends=True)
    jpeg = [line.strip() for line in lines if "JPEG" in line]
    others = "".join(line for line in lines if "JPEG" not in line)
    if others:
        os.write(2, others.encode())
    return img, jpeg


def _decode(path: str | os.PathLike[str], flags: int) -> np.ndarray:
    buf = read_bytes(path)
    data = buf.tobytes()
    if data.startswith(_PNG_SIGNATURE):
        _check_png_chunks(buf, path)
    _check_pixel_budget(path, data)
    is_jpeg = data.startswith(_JPEG_SIGNATURE)
    cut_short = is_jpeg and _jpeg_is_cut_short(data)
    libjpeg: list[str] = []
    try:
        if is_jpeg:
            img, libjpeg = _imdecode_capturing_stderr(buf, flags)
        else:
            img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV could not decode it ({exc})") from exc
    if libjpeg and not cut_short and img is not None and img.size:
        warnings.warn(
            CorruptImageWarning(
                f"image {str(path)!r} has damaged JPEG data ({'; '.join(libjpeg)}): the decoded image may be wrong"
            ),
            stacklevel=3,
        )
    if img is None or img.size == 0:
        if cut_short:
            raise ImageReadError(path, "truncated JPEG: the file ends before its end-of-image marker")
        raise ImageReadError(path, "not a supported image format, or the file is corrupt")
    if cut_short:
        warnings.warn(
            CorruptImageWarning(
                f"image {str(path)!r} is a truncated JPEG (it ends before its end-of-image marker): "
                "the decoded image may be incomplete"
            ),
            stacklevel=3,
        )
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
