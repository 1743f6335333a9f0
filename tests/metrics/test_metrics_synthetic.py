"""Unit tests of the metrics on small synthetic tensors: known values, invariances, batching,
the torch (GPU) code path against the OpenCV CPU path, and the library references where the
test environment has them (scikit-image, scikit-learn, SciPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metaloss.metrics import PROFILES, _ops, cddfuse, evaluate, get_profile, vifb
from metaloss.metrics.api import MIN_SIZE, min_size
from metaloss.utils.numerics import reordering_tolerance

H, W = 64, 80


def _size(profile: str) -> dict[str, int]:
    """``h``/``w`` for :func:`_img`: H × W, or larger where a profile's metric needs it (mefb's VIF: 81)."""
    return {"h": H, "w": W} if min_size(profile) <= min(H, W) else {"h": 96, "w": 112}


#: metrics whose images pass through float32 FFTs (vifb.py: Qcb's and Qcv's frequency-domain filters)
FLOAT32_FFT = {"Qcb", "Qcv"}


def batch_tolerance(metric: str, value: float) -> float:
    """How far one image's metric may move when it is computed in a batch rather than alone: the
    libraries may then add its sums in another order (a batched FFT takes other vectorised paths on
    some CPUs).  Float64 metrics: sums over the H·W pixels.  Qcb and Qcv: a float32 FFT of H·W points
    errs by at most about γ_(log₂ HW) relative per output (Higham, *Accuracy and Stability*, §24.1), and
    the metric, a weighted mean of ratios of filtered values, carries that relative error over
    (measured batch-vs-single on an AVX-512 machine: 1.1e-8 relative, bound 1.4e-6)."""
    if metric in FLOAT32_FFT:
        return reordering_tolerance(torch.float32, math.ceil(math.log2(H * W)), magnitude=abs(value))
    return reordering_tolerance(torch.float64, H * W, magnitude=max(abs(value), 1.0))


def _img(seed: int, c: int = 1, b: int = 1, h: int = H, w: int = W, smooth: bool = True) -> torch.Tensor:
    """Integer-valued 0–255 images with structure (smoothed noise plus a gradient)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64) * 255
    if smooth:
        x = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)
        x = x + torch.linspace(0, 60, w, dtype=torch.float64)
    return torch.round(x.clamp(0, 255))


# ------------------------------------------------------------------------------- known values
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_constant_fused_image(profile):
    f = torch.full((1, 1, H, W), 117.0, dtype=torch.float64)
    vals = evaluate(f, _img(1), _img(2), profile, ["EN", "SD", "SF", "AG"])
    for name, v in vals.items():
        assert v.shape == (1,)
        assert v.item() == pytest.approx(0.0, abs=1e-12), name


def test_entropy_two_levels():
    f = torch.zeros(1, 1, H, W, dtype=torch.float64)
    f[..., : H // 2, :] = 200
    for profile in PROFILES:
        assert evaluate(f, f, f, profile, ["EN"])["EN"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("profile,per_source", [("cddfuse", 2.0), ("tdfusion", 1.0), ("vifb", 2.0)])
def test_identical_images_give_ssim_one_per_source(profile, per_source):
    x = _img(3)
    ssim = evaluate(x, x, x, profile, ["SSIM"])["SSIM"].item()
    assert ssim == pytest.approx(per_source, abs=1e-6)


@pytest.mark.parametrize("profile,expected", [("cddfuse", 2.0), ("tdfusion", 1.0)])
def test_identical_images_give_vif_one_per_source(profile, expected):
    x = _img(4)
    assert evaluate(x, x, x, profile, ["VIF"])["VIF"].item() == pytest.approx(expected, rel=1e-6)


def test_identical_images_cc_mi_mse():
    x = _img(5)
    v = evaluate(x, x, x, "cddfuse", ["CC", "MSE", "MI", "EN"])
    assert v["CC"].item() == pytest.approx(1.0)
    assert v["MSE"].item() == 0.0
    # MI(X, X) = H(X); EN is in bits, MI in nats.
    assert v["MI"].item() == pytest.approx(2 * v["EN"].item() * math.log(2), rel=1e-12)


def test_vifb_rmse_and_psnr_definition():
    f, a, b = _img(6), _img(7), _img(8)
    v = evaluate(f, a, b, "vifb", ["RMSE", "PSNR"])
    n = H * W
    e = (torch.sqrt(((b - f) ** 2).sum()) / n + torch.sqrt(((a - f) ** 2).sum()) / n) / 2
    assert v["RMSE"].item() == pytest.approx(e.item(), rel=1e-12)
    assert v["PSNR"].item() == pytest.approx(20 * math.log10(255 / math.sqrt(e.item())), rel=1e-12)


def test_vifb_spatial_frequency_colour_seams():
    """VIFB's SF reads a colour image as its channels side by side (seams included)."""
    f = _img(9, c=3)
    wide = torch.cat([f[:, k] for k in range(3)], dim=-1)  # [1, H, 3W]
    rf = ((wide[..., :, 1:] - wide[..., :, :-1]) ** 2).sum()
    cf = ((wide[..., 1:, :] - wide[..., :-1, :]) ** 2).sum()
    expected = math.sqrt((rf + cf).item() / (H * 3 * W))
    got = evaluate(f, _img(10), _img(11, c=3), "vifb", ["SF"])["SF"].item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_qabf_is_one_minus_at_most_for_identical_structure():
    x = _img(12)
    q = evaluate(x, x, x, "cddfuse", ["Qabf"])["Qabf"].item()
    # With F = A = B every strength ratio hits the gA == gF quirk (G = gF ≥ 1) and every angle
    # matches: Qg·Qa is at most Tg·Ta/(1+e^{-4.4}).
    assert 0.9 < q <= 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2)) + 1e-9


def test_directions():
    hib = PROFILES["cddfuse"].higher_is_better
    assert hib["MSE"] is False and hib["SSIM"] is True and hib["VIF"] is True
    v = PROFILES["vifb"].higher_is_better
    assert v["CE"] is False and v["RMSE"] is False and v["Qcv"] is False and v["Qcb"] is True
    assert PROFILES["vifb"]["Variance"].name == "SD"  # VIFB's spelling resolves
    assert get_profile("CDDFUSE") is PROFILES["cddfuse"]
    assert set(PROFILES["tdfusion"].metrics) == set(PROFILES["cddfuse"].metrics)


# ------------------------------------------------------------------------- batching and shapes
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_batch_equals_single_and_shared_sources(profile):
    c = 3 if profile in ("vifb", "mefb") else 1
    f = torch.cat([_img(20 + i, c=c, **_size(profile)) for i in range(3)])
    a, b = _img(30, **_size(profile)), _img(31, c=c, **_size(profile))
    batched = evaluate(f, a, b, profile)
    expanded = evaluate(f, a.expand(3, -1, -1, -1), b.expand(3, -1, -1, -1), profile)
    for i in range(3):
        single = evaluate(f[i : i + 1], a, b, profile)
        for k in batched:
            assert batched[k].shape == (3,)
            tol = batch_tolerance(k, single[k].item())
            assert batched[k][i].item() == pytest.approx(single[k].item(), rel=0, abs=tol), k
            assert expanded[k][i].item() == pytest.approx(single[k].item(), rel=0, abs=tol), k


def test_chunking_does_not_change_results(monkeypatch):
    f = torch.cat([_img(40 + i) for i in range(4)])
    a, b = _img(50), _img(51)
    whole = evaluate(f, a, b)
    monkeypatch.setattr("metaloss.metrics.api.CPU_CHUNK_PIXELS", 1)  # one image per chunk
    chunked = evaluate(f, a, b)
    for k in whole:
        for w, c in zip(whole[k].tolist(), chunked[k].tolist(), strict=True):
            assert c == pytest.approx(w, rel=0, abs=batch_tolerance(k, w)), k


def test_input_validation():
    x = _img(1)
    with pytest.raises(ValueError, match="size mismatch"):
        evaluate(x, _img(2, h=H + 2), x)
    with pytest.raises(ValueError, match="batch size"):
        evaluate(torch.cat([x, x]), torch.cat([x, x, x]), x)
    with pytest.raises(ValueError, match="at least"):
        evaluate(_img(1, h=MIN_SIZE - 1), _img(2, h=MIN_SIZE - 1), _img(3, h=MIN_SIZE - 1))
    with pytest.raises(KeyError, match="no metric"):
        evaluate(x, x, x, metrics=["Qcb"])  # not a cddfuse metric
    with pytest.raises(KeyError, match="unknown metric profile"):
        evaluate(x, x, x, profile="matlab")
    with pytest.raises(ValueError, match="channels"):
        evaluate(_img(1, c=2), x, x)
    # 2-D and 3-D tensors are read as one image; uint8 is accepted
    v2 = evaluate(x[0, 0].to(torch.uint8), x[0].to(torch.uint8), x[0, 0], metrics=["EN", "SSIM"])
    assert v2["EN"].shape == (1,)


def test_vifb_grey_fused_with_colour_sources():
    """VIFB's grey-fused branch: colour sources through MATLAB's rgb2gray, rounded where the
    MATLAB code converts the uint8 image (MI, CE, SSIM), not where it converts a double copy."""
    f, ir, vi = _img(100), _img(101), _img(102, c=3)
    got = evaluate(f, ir, vi, "vifb")
    assert all(torch.isfinite(v).all() for v in got.values())
    vi_round = _ops.rgb_to_gray_matlab(vi, uint8=True)
    vi_exact = _ops.rgb_to_gray_matlab(vi, uint8=False)
    assert not torch.equal(vi_round, vi_exact)
    for name, src in [("SSIM", vi_round), ("MI", vi_round), ("CE", vi_round), ("PSNR", vi_exact), ("Qabf", vi_exact)]:
        ref = evaluate(f, ir, src, "vifb", name)[name]
        assert got[name].item() == pytest.approx(ref.item(), rel=1e-12), name
    w = _ops._NTSC
    assert [round(v, 4) for v in w] == [0.2989, 0.587, 0.114]


def test_colour_input_to_grey_profiles_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rgb = _img(60, c=3)
    f_grey = evaluate(rgb, rgb, rgb, "cddfuse", ["EN", "SD"])
    arr = rgb[0].permute(1, 2, 0).numpy().astype(np.float32)[:, :, ::-1].copy()  # BGR
    grey = np.round(cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY))
    g = torch.from_numpy(grey).double()[None, None]
    ref = evaluate(g, g, g, "cddfuse", ["EN", "SD"])
    for k in ref:
        assert f_grey[k].item() == pytest.approx(ref[k].item(), rel=1e-12)
    # the conversion itself is OpenCV's, bit for bit, ties included
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 400, 3)).astype(np.float32)
    ref_grey = cv2.cvtColor(big[:, :, ::-1].copy(), cv2.COLOR_BGR2GRAY)
    got = _ops.rgb_to_gray_bt601_f32(torch.from_numpy(big).permute(2, 0, 1))[0].numpy()
    np.testing.assert_array_equal(got, ref_grey)


def test_quantize_rounds_and_clamps():
    x = _img(61)
    noisy = x + 0.3
    noisy[..., 0, 0] = 300.0
    clean = x.clone()
    clean[..., 0, 0] = 255.0
    a, b = _img(62), _img(63)
    q = evaluate(noisy, a, b, quantize=True)
    ref = evaluate(clean, a, b)
    for k in ref:
        assert q[k].item() == pytest.approx(ref[k].item(), rel=1e-12), k


@pytest.mark.filterwarnings("ignore:Clustering metrics expects discrete values")
def test_float_inputs_follow_unique_value_labels_for_mi():
    sk = pytest.importorskip("sklearn.metrics")
    f = _img(64) + 0.25  # non-integer grey values: labels are the distinct values
    a, b = _img(65), _img(66)
    got = evaluate(f, a, b, "cddfuse", ["MI"])["MI"].item()
    fa, aa, ba = (t[0, 0].numpy().ravel() for t in (f, a, b))
    assert got == pytest.approx(sk.mutual_info_score(fa, aa) + sk.mutual_info_score(fa, ba), rel=1e-10)


# --------------------------------------------------------------- against library references
def test_ssim_matches_scikit_image_float32_and_uint8():
    skm = pytest.importorskip("skimage.metrics")
    f, a = _img(70), _img(71)
    f32, a32 = f[0, 0].numpy().astype(np.float32), a[0, 0].numpy().astype(np.float32)
    got = cddfuse.ssim_skimage(f.float(), a.float(), 2.0).item()
    assert got == skm.structural_similarity(f32, a32, data_range=2)  # bit for bit
    got8 = cddfuse.ssim_skimage(f, a, 255.0).item()
    ref8 = skm.structural_similarity(f32.astype(np.uint8), a32.astype(np.uint8))
    assert got8 == pytest.approx(ref8, rel=1e-12)


def test_mi_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    f, a, b = _img(72), _img(73), _img(74)
    got = evaluate(f, a, b, "cddfuse", ["MI"])["MI"].item()
    fa, aa, ba = (t[0, 0].numpy().ravel() for t in (f, a, b))
    assert got == pytest.approx(sk.mutual_info_score(fa, aa) + sk.mutual_info_score(fa, ba), rel=1e-12)


def test_vif_matches_direct_scipy_formulation():
    """VIFp written out with SciPy's convolve2d, straight from the paper's pixel-domain model."""
    signal = pytest.importorskip("scipy.signal")
    ref, dist = _img(75)[0, 0].numpy(), _img(76)[0, 0].numpy()
    eps, sn = 1e-10, 2.0
    num = den = 0.0
    r, d = ref.copy(), dist.copy()
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        ax = np.arange(n) - (n - 1) / 2
        win = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * (n / 5) ** 2))
        win /= win.sum()
        if scale > 1:
            r = signal.convolve2d(r, win, mode="valid")[::2, ::2]
            d = signal.convolve2d(d, win, mode="valid")[::2, ::2]
        m1, m2 = signal.convolve2d(r, win, "valid"), signal.convolve2d(d, win, "valid")
        s1 = np.maximum(signal.convolve2d(r * r, win, "valid") - m1 * m1, 0)
        s2 = np.maximum(signal.convolve2d(d * d, win, "valid") - m2 * m2, 0)
        s12 = signal.convolve2d(r * d, win, "valid") - m1 * m2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sn)))
        den += np.sum(np.log10(1 + s1 / sn))
    got = cddfuse.vifp(torch.from_numpy(ref)[None, None], torch.from_numpy(dist)[None, None]).item()
    assert got == pytest.approx(num / den, rel=1e-6)


# ------------------------------------------------------------------ torch path vs OpenCV path
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_torch_code_path_matches_opencv_path(profile, monkeypatch):
    """The CPU uses OpenCV for filtering; other devices use the pure-torch code. Run the torch
    code on the CPU (as it would on a GPU) and compare."""
    c = 3 if profile in ("vifb", "mefb") else 1
    f, a, b = _img(80, c=c, b=2, **_size(profile)), _img(81, **_size(profile)), _img(82, c=c, **_size(profile))
    fast = evaluate(f, a, b, profile)
    monkeypatch.setattr(_ops, "USE_OPENCV", False)
    slow = evaluate(f, a, b, profile)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-6, atol=1e-9, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_cuda_matches_cpu(profile):
    c = 3 if profile in ("vifb", "mefb") else 1
    f, a, b = _img(90, c=c, b=2, **_size(profile)), _img(91, **_size(profile)), _img(92, c=c, **_size(profile))
    cpu = evaluate(f, a, b, profile)
    gpu = evaluate(f.cuda(), a.cuda(), b.cuda(), profile)
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(cpu[k], gpu[k].cpu(), rtol=1e-6, atol=1e-9, msg=k)


def test_helpers():
    x = torch.tensor([0.5, 1.5, 2.5, 2.4999, 0.0], dtype=torch.float64)
    assert _ops.round_half_away_nonneg(x).tolist() == [1.0, 2.0, 3.0, 2.0, 0.0]
    assert _ops.round_half_away(-x).tolist() == [-1.0, -2.0, -3.0, -2.0, 0.0]
    blocks = vifb._block_sums(torch.ones(1, 20, 33), 16)
    assert blocks.shape == (1, 2, 3) and blocks.sum().item() == 20 * 33
