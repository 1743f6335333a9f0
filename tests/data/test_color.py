"""YCbCr conversion against OpenCV's float conversion, and the chroma fusion rule."""

import cv2
import numpy as np
import pytest
import torch

from metaloss.data.color import bgr_to_ycbcr, fuse_chroma, rgb_to_ycbcr, ycbcr_to_bgr, ycbcr_to_rgb


@pytest.fixture
def bgr():
    rng = np.random.default_rng(0)
    img = rng.random((17, 23, 3), dtype=np.float32)
    img[0, :3] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]]  # black, white, grey
    return img


def test_numpy_matches_opencv_forward(bgr):
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    ours = bgr_to_ycbcr(bgr)
    assert ours.dtype == np.float32 and ours.shape == bgr.shape
    np.testing.assert_allclose(ours[..., 0], ycrcb[..., 0], atol=1e-6)
    np.testing.assert_allclose(ours[..., 1], ycrcb[..., 2], atol=1e-6)  # Cb (OpenCV stores Y, Cr, Cb)
    np.testing.assert_allclose(ours[..., 2], ycrcb[..., 1], atol=1e-6)  # Cr
    np.testing.assert_allclose(rgb_to_ycbcr(bgr[..., ::-1].copy()), ours, atol=1e-7)


def test_numpy_matches_opencv_inverse(bgr):
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    expected = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    ycbcr = ycrcb[..., [0, 2, 1]].copy()
    np.testing.assert_allclose(ycbcr_to_bgr(ycbcr), expected, atol=1e-6)
    np.testing.assert_allclose(ycbcr_to_rgb(ycbcr), expected[..., ::-1], atol=1e-6)


def test_grey_has_neutral_chroma_and_round_trip_is_close(bgr):
    ycbcr = bgr_to_ycbcr(bgr)
    np.testing.assert_allclose(ycbcr[0, :3, 1:], 0.5, atol=1e-6)
    np.testing.assert_allclose(ycbcr[0, :3, 0], [0, 1, 0.5], atol=1e-6)
    # OpenCV's four-digit constants make the round trip exact to ~3e-4 only (as OpenCV itself)
    assert np.abs(ycbcr_to_bgr(ycbcr) - bgr).max() < 5e-4


def test_torch_is_channel_first_and_matches_numpy(bgr):
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # [1, 3, H, W]
    ycc = rgb_to_ycbcr(t)
    assert isinstance(ycc, torch.Tensor) and ycc.shape == (1, 3, 17, 23) and ycc.dtype == torch.float32
    np.testing.assert_allclose(ycc[0].permute(1, 2, 0).numpy(), rgb_to_ycbcr(rgb), atol=1e-7)
    back = ycbcr_to_rgb(ycc)
    np.testing.assert_allclose(back[0].permute(1, 2, 0).numpy(), ycbcr_to_rgb(rgb_to_ycbcr(rgb)), atol=1e-6)
    assert torch.allclose(bgr_to_ycbcr(t.flip(1)), ycc) and torch.allclose(ycbcr_to_bgr(ycc).flip(1), back)


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        rgb_to_ycbcr(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(torch.zeros(1, 4, 4, 4))


def test_fuse_chroma_formula():
    a = np.array([0.5, 0.9, 0.2, 0.5, 0.7], np.float32)
    b = np.array([0.5, 0.5, 0.6, 0.1, 0.3], np.float32)
    da, db = np.abs(a - 0.5), np.abs(b - 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(da + db > 0, (a * da + b * db) / (da + db), 0.5)
    got = fuse_chroma([a, b])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert got[0] == 0.5  # both neutral
    assert got[1] == pytest.approx(0.9) and got[3] == pytest.approx(0.1)  # one neutral: the other wins
    assert got[4] == pytest.approx(0.5)  # opposite and equally saturated
    t = fuse_chroma([torch.from_numpy(a), torch.from_numpy(b)])
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(fuse_chroma([a]), a)


def test_fuse_chroma_on_cbcr_maps_is_elementwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 8, 9, generator=g), torch.rand(2, 8, 9, generator=g)
    fused = fuse_chroma([a, b])
    assert fused.shape == (2, 8, 9) and fused.min() >= 0 and fused.max() <= 1
    assert torch.allclose(fused[1], fuse_chroma([a[1], b[1]]))
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_chroma([a, b[:1]])
    with pytest.raises(ValueError, match="at least one"):
        fuse_chroma([])
