"""Loading images for fusion: every supported format, depth and channel count, refusals, colour rules."""

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import torch

from metaloss.data import images
from metaloss.data.color import fuse_chroma, rgb_to_ycbcr
from metaloss.data.images import ImageReadError, ImageSizeError, compose, load_image, load_pair, normalise

H, W = 12, 10


def _rgb(dtype, channels, seed=0):
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(H, W, channels) if channels > 1 else (H, W), dtype=np.int64).astype(dtype)


def _write(path, rgb):
    """Write RGB(A) or grayscale data with OpenCV (which wants BGR(A))."""
    if rgb.ndim == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if rgb.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), rgb)
    return path


def _expected(rgb):
    """Y (and CbCr) the loader must give for lossless data: normalise, drop alpha, OpenCV YCbCr."""
    x = normalise(rgb)
    if x.ndim == 2:
        return x, None
    ycc = rgb_to_ycbcr(np.ascontiguousarray(x[..., :3]))
    return ycc[..., 0], ycc[..., 1:]


LOSSLESS = [
    (ext, dtype, ch)
    for ext, dtypes in (("png", (np.uint8, np.uint16)), ("tif", (np.uint8, np.uint16)), ("bmp", (np.uint8,)))
    for dtype in dtypes
    for ch in (1, 3, 4)
]


@pytest.mark.parametrize("ext,dtype,channels", LOSSLESS, ids=[f"{e}-{d.__name__}-{c}ch" for e, d, c in LOSSLESS])
def test_lossless_formats_are_read_exactly(tmp_path, ext, dtype, channels):
    rgb = _rgb(dtype, channels)
    img = load_image(_write(tmp_path / f"x.{ext}", rgb))
    y, cbcr = _expected(rgb)
    assert img.y.shape == (1, H, W) and img.y.dtype == torch.float32
    np.testing.assert_allclose(img.y[0].numpy(), y, atol=1e-6)
    if cbcr is None:
        assert not img.is_color and img.cbcr is None
    else:
        assert img.is_color and img.cbcr.shape == (2, H, W)
        np.testing.assert_allclose(img.cbcr.permute(1, 2, 0).numpy(), cbcr, atol=1e-6)
    assert img.stored == f"{np.dtype(dtype).name}×{channels}"


def test_normalisation_rule_8_and_16_bit(tmp_path):
    a8 = np.array([[0, 128, 255]], np.uint8)
    a16 = np.array([[0, 32768, 65535]], np.uint16)
    assert load_image(_write(tmp_path / "a.png", a8)).y[0, 0].tolist() == pytest.approx([0, 128 / 255, 1])
    assert load_image(_write(tmp_path / "b.png", a16)).y[0, 0].tolist() == pytest.approx([0, 32768 / 65535, 1])
    assert load_image(_write(tmp_path / "c.tif", a16)).y[0, 0].tolist() == pytest.approx([0, 32768 / 65535, 1])


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_decoded_as_opencv_decodes_it(tmp_path, channels):
    rgb = _rgb(np.uint8, channels)
    path = _write(tmp_path / "x.jpg", rgb)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if decoded.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    y, cbcr = _expected(decoded)
    img = load_image(path)
    np.testing.assert_allclose(img.y[0].numpy(), y, atol=1e-6)
    assert (cbcr is None) == (img.cbcr is None)


def test_float_tiff_in_range_is_kept_out_of_range_is_min_max_normalised(tmp_path):
    x = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    assert cv2.imwrite(str(tmp_path / "a.tif"), x)
    np.testing.assert_allclose(load_image(tmp_path / "a.tif").y[0].numpy(), x, atol=1e-7)
    assert cv2.imwrite(str(tmp_path / "b.tif"), x * 300 - 20)
    got = load_image(tmp_path / "b.tif")
    np.testing.assert_allclose(got.y[0].numpy(), x, atol=1e-6)
    assert got.stored == "float32×1"
    rgb = np.stack([x, x * 0.5, 1 - x], axis=-1)
    assert cv2.imwrite(str(tmp_path / "c.tif"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    c = load_image(tmp_path / "c.tif")
    np.testing.assert_allclose(c.y[0].numpy(), rgb_to_ycbcr(rgb)[..., 0], atol=1e-6)
    with pytest.raises(ImageReadError, match="NaN"):
        normalise(np.array([[np.nan, 1.0]], np.float32), "z.tif")


def test_grayscale_stored_as_identical_channels_is_grayscale(tmp_path):
    g = _rgb(np.uint8, 1)
    img = load_image(_write(tmp_path / "g.png", np.stack([g, g, g], axis=-1)))
    assert not img.is_color
    np.testing.assert_allclose(img.y[0].numpy(), g / 255, atol=1e-7)
    rgba = np.stack([g, g, g, _rgb(np.uint8, 1, seed=1)], axis=-1)
    assert not load_image(_write(tmp_path / "ga.png", rgba)).is_color  # alpha ignored
    almost = np.stack([g, g, g], axis=-1)
    almost[0, 0, 1] ^= 1
    assert load_image(_write(tmp_path / "c.png", almost)).is_color


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty file"),
        (b"this is not an image", "not a supported image format"),
        (None, "no such file"),
    ],
)
def test_unreadable_files_are_refused_with_their_name(tmp_path, content, reason):
    path = tmp_path / "broken name.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_image(path)
    assert "broken name.png" in str(info.value)


def test_truncated_and_unsupported_sample_types_are_refused(tmp_path):
    good = _write(tmp_path / "good.png", _rgb(np.uint8, 3))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "signed.tif", np.zeros((H, W), np.int16))
    with pytest.raises(ImageReadError, match=r"signed\.tif.*sample type int16"):
        load_image(tmp_path / "signed.tif")


def test_pair_colour_rules(tmp_path):
    gray = _write(tmp_path / "gray.png", _rgb(np.uint8, 1))
    gray2 = _write(tmp_path / "gray2.png", _rgb(np.uint8, 1, seed=3))
    col = _write(tmp_path / "col.png", _rgb(np.uint8, 3, seed=1))
    col2 = _write(tmp_path / "col2.png", _rgb(np.uint8, 3, seed=2))
    assert load_pair(gray, gray2).chroma is None  # two grayscale sources: grayscale output
    one = load_pair(gray, col)
    assert torch.equal(one.chroma, load_image(col).cbcr)  # the colour source's CbCr
    assert torch.equal(load_pair(col, gray).chroma, load_image(col).cbcr)
    both = load_pair(col, col2)
    assert torch.allclose(both.chroma, fuse_chroma([load_image(col).cbcr, load_image(col2).cbcr]))
    small = _write(tmp_path / "small.png", _rgb(np.uint8, 1)[:-1])
    with pytest.raises(ImageSizeError, match=r"small\.png.*") as info:
        load_pair(col, small)
    assert "col.png" in str(info.value)


def test_compose_round_trips_a_colour_image(tmp_path):
    rgb = _rgb(np.uint8, 3)
    img = load_image(_write(tmp_path / "c.png", rgb))
    out = compose(img.y, img.cbcr)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 1
    gray = compose(torch.tensor([[[0.0, 0.5, 1.2, -0.1]]]), None)
    assert gray.tolist() == [[0, 128, 255, 0]]


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG header claiming ``width``×``height`` with a tiny compressed IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )


class Decoded(Exception):
    """cv2.imdecode was reached."""


@pytest.fixture
def no_decoding(monkeypatch):
    """cv2.imdecode raises ``Decoded``: a refusal must come before any pixel memory is allocated."""

    def imdecode(*args, **kwargs):
        raise Decoded

    monkeypatch.setattr(cv2, "imdecode", imdecode)


@pytest.fixture
def budget():
    """``images.set_max_image_pixels``, put back to the environment's budget after the test."""
    yield images.set_max_image_pixels
    images.set_max_image_pixels(None)


def test_a_png_claiming_30000x30000_is_refused_before_decoding(tmp_path, monkeypatch, no_decoding, budget):
    monkeypatch.delenv("METALOSS_MAX_IMAGE_PIXELS", raising=False)
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(30000, 30000))
    assert path.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert time.perf_counter() - start < 1
    assert str(info.value) == (
        f"cannot read image {str(path)!r}: 30000×30000 pixels (900,000,000) is over the pixel budget of "
        "67,108,864 (set METALOSS_MAX_IMAGE_PIXELS to raise it)"
    )
    assert images.max_image_pixels() == 2**26
    budget(30000 * 30000)  # within budget, the file goes on to the decoder
    with pytest.raises(Decoded):
        load_image(path)


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tif"])
def test_the_budget_is_checked_from_the_header_of_each_format(tmp_path, monkeypatch, ext):
    path = _write(tmp_path / f"x.{ext}", _rgb(np.uint8, 3))
    monkeypatch.setenv("METALOSS_MAX_IMAGE_PIXELS", str(H * W))
    assert load_image(path).width == W  # at the budget: read
    monkeypatch.setenv("METALOSS_MAX_IMAGE_PIXELS", str(H * W - 1))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded an image over the budget"))
    with pytest.raises(ImageReadError, match=rf"x\.{ext}.*{W}×{H} pixels \(120\) is over the pixel budget of 119"):
        load_image(path)


def test_the_budget_setting_and_its_errors(tmp_path, monkeypatch, budget):
    path = _write(tmp_path / "x.png", _rgb(np.uint8, 1))
    monkeypatch.setenv("METALOSS_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(
        ImageReadError, match=r"x\.png.*METALOSS_MAX_IMAGE_PIXELS must be a positive whole number of pixels, got 'many'"
    ):
        load_image(path)
    budget(H * W)  # the process's setting wins over the environment
    assert images.max_image_pixels() == H * W and load_image(path).width == W
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="positive whole number"):
            budget(bad)
    budget(None)
    monkeypatch.setenv("METALOSS_MAX_IMAGE_PIXELS", "1_000")
    assert images.max_image_pixels() == 1000
