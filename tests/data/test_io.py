"""metaloss.data.io: OpenCV image reading, the CDDFuse grey read, and clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from metaloss.data.io import CorruptImageWarning, ImageReadError, image_size, read_gray_cddfuse, read_image

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _write(path: Path, arr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    buf.tofile(str(path))  # works for non-ASCII names too
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_grey_8bit_png(tmp_path, rng):
    a = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = read_image(_write(tmp_path / "g.png", a))
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, a)


def test_colour_is_rgb_order(tmp_path, rng):
    bgr = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    out = read_image(_write(tmp_path / "c.png", bgr))
    assert out.shape == (12, 9, 3)
    np.testing.assert_array_equal(out, bgr[:, :, ::-1])


def test_rgba_and_16bit(tmp_path, rng):
    bgra = rng.integers(0, 256, (8, 7, 4), dtype=np.uint8)
    out = read_image(_write(tmp_path / "a.png", bgra))
    assert out.shape == (8, 7, 4)
    np.testing.assert_array_equal(out, bgra[:, :, [2, 1, 0, 3]])
    g16 = rng.integers(0, 65536, (10, 11), dtype=np.uint16)
    out16 = read_image(_write(tmp_path / "d.png", g16))
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, g16)
    c16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    np.testing.assert_array_equal(read_image(_write(tmp_path / "e.tif", c16)), c16[:, :, ::-1])


def test_non_ascii_path(tmp_path, rng):
    a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    folder = tmp_path / "répertoire_红外"
    folder.mkdir()
    p = _write(folder / "图像 ü.png", a)
    np.testing.assert_array_equal(read_image(p), a[:, :, ::-1])
    assert read_gray_cddfuse(p).shape == (6, 6)


def test_cddfuse_grey_read(tmp_path, rng):
    bgr = rng.integers(0, 256, (16, 17, 3), dtype=np.uint8)
    p = _write(tmp_path / "x.png", bgr)
    out = read_gray_cddfuse(p)
    expected = np.round(cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # grey files: cv2.imread replicates the channel, so the grey read returns the values
    g = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    np.testing.assert_array_equal(read_gray_cddfuse(_write(tmp_path / "g.png", g)), g.astype(np.float32))
    # 16-bit files are reduced to 8 bits by OpenCV's default read, as in CDDFuse
    g16 = np.full((4, 4), 40000, dtype=np.uint16)
    assert read_gray_cddfuse(_write(tmp_path / "h.png", g16))[0, 0] == 40000 >> 8


def test_jpeg_decodes_like_cv2_imread(tmp_path, rng):
    bgr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    p = _write(tmp_path / "j.jpg", bgr)
    np.testing.assert_array_equal(read_image(p), cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, :, ::-1])


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
        (lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), p)[1], "corrupt"),
        (lambda p: (p.write_text("not an image"), p)[1], "corrupt"),
        (lambda p: (p.mkdir(), p)[1], "directory"),
    ],
    ids=["missing", "zero-byte", "corrupt-png", "text", "directory"],
)
def test_errors_name_the_file(tmp_path, make, reason):
    p = make(tmp_path / "bad.png")
    for reader in (read_image, read_gray_cddfuse):
        with pytest.raises(ImageReadError, match=reason) as info:
            reader(p)
        assert "bad.png" in str(info.value)
        assert isinstance(info.value, ValueError)
        assert info.value.path == p


def test_unsupported_sample_type(tmp_path):
    p = tmp_path / "f.tiff"
    assert cv2.imwrite(str(p), np.zeros((4, 4), np.float32))
    with pytest.raises(ImageReadError, match="unsupported sample type"):
        read_image(p)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found: {DATA.resolve()} is absent")
def test_real_images():
    vi = read_image(DATA / "vifb" / "vi" / "carLight.jpg")
    assert vi.shape == (460, 630, 3) and vi.dtype == np.uint8
    ir = read_image(DATA / "vifb" / "ir" / "running.jpg")
    assert ir.ndim == 2
    g = read_gray_cddfuse(DATA / "vifb" / "vi" / "carLight.jpg")
    assert g.shape == (460, 630) and float(g.max()) <= 255


@pytest.mark.parametrize(
    "ext,params",
    [
        (".png", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".bmp", []),
        (".tif", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        (".ppm", []),
    ],
    ids=["png", "jpeg", "progressive-jpeg", "bmp", "tiff", "webp-lossy", "webp-lossless", "ppm"],
)
def test_image_size_reads_the_header(rng, ext, params):
    bgr = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, bgr, params)
    assert ok and image_size(buf.tobytes()) == (21, 13)


def test_image_size_of_other_headers(tmp_path, rng):
    ok, buf = cv2.imencode(".webp", rng.integers(0, 256, (13, 21, 4), dtype=np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert ok and buf.tobytes()[12:16] == b"VP8X" and image_size(buf.tobytes()) == (21, 13)  # lossy with alpha
    assert image_size(b"P5\n# a comment\n21 13\n255\n" + bytes(273)) == (21, 13)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((13, 21), np.uint16), bigtiff=True)
    assert image_size((tmp_path / "big.tif").read_bytes()) == (21, 13)
    assert image_size(b"\x89PNG\r\n\x1a\n\x00\x00") is None  # header cut short: left to OpenCV
    assert image_size(b"GIF89a") is None


def _jpeg(rng) -> bytes:
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    assert ok and buf.tobytes().endswith(b"\xff\xd9")
    return buf.tobytes()


def test_a_truncated_jpeg_is_reported_with_its_name(tmp_path, rng):
    data = _jpeg(rng)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    if cv2.imdecode(np.fromfile(str(cut), np.uint8), cv2.IMREAD_UNCHANGED) is None:  # OpenCV 5 refuses it
        with pytest.raises(
            ImageReadError, match=r"cut\.jpg.*truncated JPEG: the file ends before its end-of-image marker"
        ):
            read_image(cut)
    else:  # older OpenCV decodes what is there
        with pytest.warns(CorruptImageWarning, match=r"cut\.jpg.*truncated JPEG"):
            read_image(cut)


def test_a_jpeg_that_decodes_without_its_end_marker_gives_a_warning(tmp_path, rng, recwarn):
    data = _jpeg(rng)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data[:-2] + bytes(16))  # e.g. a preallocated file whose copy stopped at the end
    with pytest.warns(
        CorruptImageWarning,
        match=r"image '.*padded\.jpg' is a truncated JPEG \(it ends before its end-of-image marker\)",
    ):
        read_gray_cddfuse(padded)
    good = tmp_path / "good.jpg"
    good.write_bytes(data + b"trailing bytes")  # data after the end marker is not damage
    read_image(good)
    assert not [w for w in recwarn if issubclass(w.category, CorruptImageWarning)]


def test_a_jpeg_with_damaged_data_that_decodes_is_reported_with_its_name(tmp_path, rng, recwarn, capfd):
    """Bit flips inside the scan keep every marker: OpenCV decodes the file and libjpeg only prints
    'Corrupt JPEG data: ...' on file descriptor 2, without the file's name; that line becomes a warning
    naming the file, and other output written meanwhile is kept."""
    data = bytearray(_jpeg(rng))
    for i in range(len(data) // 2, len(data) // 2 + 40, 7):
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(bytes(data))
    with pytest.warns(CorruptImageWarning, match=r"image '.*damaged\.jpg' has damaged JPEG data \(Corrupt JPEG data: "):
        img = read_image(damaged)
    assert img.shape == (64, 48, 3)
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # reported once, by the warning
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg(rng))
    read_image(good)
    assert not [w for w in recwarn if "good.jpg" in str(w.message)]
