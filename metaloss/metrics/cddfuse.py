"""Metrics with the conventions of CDDFuse's ``utils/Evaluator.py`` (the ``cddfuse`` profile).

All functions take float tensors ``[..., H, W]`` on a 0–255 scale (fused ``f``, infrared ``a``,
visible ``b``; the source tensors broadcast against ``f``) and return one value per image, i.e.
a tensor of the leading shape. The profile calls them in float64.

Conventions (see docs/metrics.md for the formulas):
- EN on ``uint8(round(F))``, log2; SD population standard deviation; SF and AG on means.
- MI in nats (scikit-learn's ``mutual_info_score`` on the grey values as labels), summed over the
  two sources.
- VIF: the pixel-domain VIFp (4 scales, σn² = 2) summed over the two sources; NaN → 1.
- SSIM: scikit-image's ``structural_similarity`` defaults (7×7 uniform window, sample covariance)
  with ``data_range=2`` (what scikit-image 0.19 used for float input), summed over the sources.
- Qabf: Sobel, Tg=0.9994, kg=−15, Dg=0.5, Ta=0.9879, ka=−22, Da=0.8, including the reference's
  quirk ``G = gF`` (not 1) where ``gA == gF``.
- MSE and CC averaged over the sources; PSNR = 10·log10(max(F)² / MSE); SCD sum of two correlations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaloss.metrics._ops import (
    batched_histogram,
    correlate_sep_valid,
    entropy_from_counts,
    gaussian_1d,
    mutual_information_labels,
    reduce_mean,
    reduce_sum,
    sobel_same,
)

__all__ = [
    "entropy",
    "std",
    "spatial_frequency",
    "average_gradient",
    "mutual_information",
    "mse",
    "psnr",
    "cc",
    "scd",
    "vifp",
    "vif",
    "qabf",
    "ssim_skimage",
    "ssim",
]


def _lead(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape[:-2])


# ------------------------------------------------------------------------------- fused image only
def entropy(f: Tensor) -> Tensor:
    """EN (bits): Shannon entropy of the histogram of ``uint8(round(F))`` (values clamped to 0–255)."""
    lead = _lead(f)
    q = torch.round(f).clamp(0, 255).to(torch.int64).reshape(-1, f.shape[-2] * f.shape[-1])
    return entropy_from_counts(batched_histogram(q, 256), log="2").reshape(lead)


def std(f: Tensor) -> Tensor:
    """SD: population standard deviation of the grey values."""
    return torch.std(f.flatten(-2), dim=-1, correction=0)


def spatial_frequency(f: Tensor) -> Tensor:
    """SF = sqrt(mean(ΔxF²) + mean(ΔyF²)) with first differences (means over the differences)."""
    dx = f[..., :, 1:] - f[..., :, :-1]
    dy = f[..., 1:, :] - f[..., :-1, :]
    return torch.sqrt(reduce_mean(dx * dx) + reduce_mean(dy * dy))


def average_gradient(f: Tensor) -> Tensor:
    """AG = mean(sqrt((Gx² + Gy²)/2)), central differences inside and one-sided at the border
    (``numpy.gradient``), mean over all H·W pixels."""
    gy, gx = torch.gradient(f, dim=(-2, -1))
    return reduce_mean(torch.sqrt((gx * gx + gy * gy) / 2.0))


# --------------------------------------------------------------------------------- with sources
def _labels(x: Tensor) -> tuple[Tensor, int]:
    """Integer labels of the grey values of ``x`` (``[B, N]``) and the number of labels.

    Integer-valued images in 0–255 use the values themselves; anything else is labelled by its
    distinct values per image (what ``mutual_info_score`` does with float arrays).
    """
    if bool(((x == torch.round(x)) & (x >= 0) & (x <= 255)).all()):
        return x.to(torch.int64), 256
    out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    k = 1
    for i in range(x.shape[0]):
        _, inv = torch.unique(x[i], return_inverse=True)
        out[i] = inv
        k = max(k, int(inv.max()) + 1)
    return out, k


def _mi_pair(x: Tensor, y: Tensor) -> Tensor:
    x, y = torch.broadcast_tensors(x, y)
    lead = _lead(x)
    xl, kx = _labels(x.reshape(-1, x.shape[-2] * x.shape[-1]))
    yl, ky = _labels(y.reshape(-1, y.shape[-2] * y.shape[-1]))
    return mutual_information_labels(xl, yl, kx, ky).reshape(lead)


def mutual_information(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MI (nats) = MI(F, A) + MI(F, B), grey values as labels (``sklearn.metrics.mutual_info_score``)."""
    return _mi_pair(f, a) + _mi_pair(f, b)


def mse(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MSE = (mean((A−F)²) + mean((B−F)²)) / 2."""
    da = a - f
    db = b - f
    return (reduce_mean(da * da) + reduce_mean(db * db)) / 2.0


def psnr(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """PSNR = 10·log10(max(F)² / MSE) — the peak is the fused image's maximum, not 255."""
    peak = f.amax(dim=(-2, -1))
    return 10.0 * torch.log10(peak * peak / mse(f, a, b))


def _corr(x: Tensor, y: Tensor) -> Tensor:
    xm = x - x.mean(dim=(-2, -1), keepdim=True)
    ym = y - y.mean(dim=(-2, -1), keepdim=True)
    return reduce_sum(xm * ym) / torch.sqrt(reduce_sum(xm * xm) * reduce_sum(ym * ym))


def cc(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC = (r(A, F) + r(B, F)) / 2, Pearson correlation over all pixels."""
    return (_corr(a, f) + _corr(b, f)) / 2.0


def scd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD = r(A, F−B) + r(B, F−A) (sum of the correlations of differences)."""
    return _corr(a, f - b) + _corr(b, f - a)


def vifp_multi(refs: tuple[Tensor, ...], dist: Tensor, nan_to_one: bool = True) -> list[Tensor]:
    """Pixel-domain VIF (Sheikh & Bovik) of ``dist`` against each reference in ``refs``.

    4 scales, Gaussian windows N = 17, 9, 5, 3 (σ = N/5), σn² = 2, with the reference
    implementation's clipping rules. ``NaN`` (a flat reference) becomes 1 when ``nan_to_one``
    (CDDFuse) and is kept otherwise (sewar's ``vifp``, used by TDFusion). The statistics of
    ``dist`` are computed once for all references.
    """
    eps = 1e-10
    sigma_nsq = 2.0
    refs = list(refs)
    nums: list[Tensor | float] = [0.0] * len(refs)
    dens: list[Tensor | float] = [0.0] * len(refs)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        g = gaussian_1d(n, n / 5.0)
        if scale > 1:
            refs = [correlate_sep_valid(r, g)[..., ::2, ::2] for r in refs]
            dist = correlate_sep_valid(dist, g)[..., ::2, ::2]
        mu2 = correlate_sep_valid(dist, g)
        s2_raw = (correlate_sep_valid(dist * dist, g) - mu2 * mu2).clamp_min(0.0)
        for k, ref in enumerate(refs):
            mu1 = correlate_sep_valid(ref, g)
            s1 = (correlate_sep_valid(ref * ref, g) - mu1 * mu1).clamp_min(0.0)
            s12 = correlate_sep_valid(ref * dist, g) - mu1 * mu2
            s1, s2, s12 = torch.broadcast_tensors(s1, s2_raw, s12)

            gain = s12 / (s1 + eps)
            sv = s2 - gain * s12
            m = s1 < eps
            gain = torch.where(m, 0.0, gain)
            sv = torch.where(m, s2, sv)
            s1 = torch.where(m, 0.0, s1)
            m = s2 < eps
            gain = torch.where(m, 0.0, gain)
            sv = torch.where(m, 0.0, sv)
            m = gain < 0
            sv = torch.where(m, s2, sv)
            gain = torch.where(m, 0.0, gain)
            sv = torch.where(sv <= eps, eps, sv)

            nums[k] = nums[k] + reduce_sum(torch.log10(1.0 + gain * gain * s1 / (sv + sigma_nsq)))
            dens[k] = dens[k] + reduce_sum(torch.log10(1.0 + s1 / sigma_nsq))
    out = []
    for num, den in zip(nums, dens):
        v = num / den  # type: ignore[operator]
        if nan_to_one:
            v = torch.where(torch.isnan(v), torch.ones_like(v), v)
        out.append(v)
    return out


def vifp(ref: Tensor, dist: Tensor, nan_to_one: bool = True) -> Tensor:
    """Pixel-domain VIF of ``dist`` against ``ref`` (see :func:`vifp_multi`)."""
    return vifp_multi((ref,), dist, nan_to_one)[0]


def vif(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF = VIFp(A, F) + VIFp(B, F) (CDDFuse calls it ``VIFF``; it is the pixel-domain VIF)."""
    va, vb = vifp_multi((a, b), f)
    return va + vb


# ------------------------------------------------------------------------------------------- Qabf
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def qabf_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel magnitude and orientation as the references compute them: ``SAx = conv2(x, h3)``,
    ``SAy = conv2(x, h1)`` (true convolution, zero padding; h1 = [1 2 1; 0 0 0; −1 −2 −1],
    h3 = [−1 0 1; −2 0 2; −1 0 1]), angle ``atan(SAy/SAx)`` and π/2 where ``SAx == 0``.

    The sign convention matters only through that π/2: elsewhere the angle is that of a line.
    """
    gx, gy = sobel_same(x, "zeros")
    sx = -gx  # convolution flips the kernel: conv2(x, h3) = −corr(x, h3); conv2(x, h1) = corr(x, −h1)
    g = torch.sqrt(gx * gx + gy * gy)
    zero = sx == 0
    ang = torch.where(zero, math.pi / 2, torch.atan(gy / torch.where(zero, torch.ones_like(sx), sx)))
    return g, ang


def qabf_edge_preservation(ga: Tensor, aa: Tensor, gf: Tensor, af: Tensor, equal_scale: float = 1.0) -> Tensor:
    """Per-pixel edge preservation Q^{AF} = Qg·Qα of Xydeas & Petrović.

    The reference implementations set the strength ratio to ``gF`` (times ``equal_scale``, the
    factor by which they scaled the image before the Sobel filter) where ``gA == gF``, not 1.
    """
    tiny = torch.ones_like(ga)
    gt = ga > gf
    eq = ga == gf
    ratio = torch.where(
        gt, gf / torch.where(gt, ga, tiny), torch.where(eq, gf * equal_scale, ga / torch.where(gt | eq, tiny, gf))
    )
    ang = 1.0 - torch.abs(aa - af) / (math.pi / 2)
    qg = _TG / (1.0 + torch.exp(_KG * (ratio - _DG)))
    qa = _TA / (1.0 + torch.exp(_KA * (ang - _DA)))
    return qg * qa


def qabf(f: Tensor, a: Tensor, b: Tensor, equal_scale: float = 1.0) -> Tensor:
    """Qabf = Σ(Q^{AF}·gA + Q^{BF}·gB) / Σ(gA + gB)."""
    ga, aa = qabf_gradients(a)
    gb, ab = qabf_gradients(b)
    gf, af = qabf_gradients(f)
    qaf = qabf_edge_preservation(ga, aa, gf, af, equal_scale)
    qbf = qabf_edge_preservation(gb, ab, gf, af, equal_scale)
    return reduce_sum(qaf * ga + qbf * gb) / reduce_sum(ga + gb)


# ------------------------------------------------------------------------------------------- SSIM
def _uniform_filter_valid(x: Tensor, size: int) -> Tensor:
    """SciPy's ``uniform_filter`` (axis 0 then axis 1, each pass a running mean accumulated in
    double and stored in the array's dtype), restricted to the windows inside the image."""
    ones = [1.0] * size
    v = correlate_sep_valid(x.to(torch.float64), ones, [1.0]) / size
    v = v.to(x.dtype)
    h = correlate_sep_valid(v.to(torch.float64), [1.0], ones) / size
    return h.to(x.dtype)


def ssim_skimage(x: Tensor, y: Tensor, data_range: float, win_size: int = 7) -> Tensor:
    """scikit-image's ``structural_similarity(x, y, data_range=...)`` with its defaults: uniform
    ``win_size``² window, sample covariance (N/(N−1)), K1 = 0.01, K2 = 0.03, mean (in float64) over
    the windows fully inside the image.

    Computed in the dtype of ``x`` with scikit-image's order of operations: scikit-image ≥ 0.19
    keeps float32 input in float32, which CDDFuse's images are, and with ``data_range=2`` the
    constants C1, C2 are small enough that float32 rounding in ``E[x²] − E[x]²`` shows in the
    4th significant digit; float64 input is computed in float64.
    """
    dt = x.dtype
    y = y.to(dt)
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    ux = _uniform_filter_valid(x, win_size)
    uy = _uniform_filter_valid(y, win_size)
    uxx = _uniform_filter_valid(x * x, win_size)
    uyy = _uniform_filter_valid(y * y, win_size)
    uxy = _uniform_filter_valid(x * y, win_size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux * ux + uy * uy + c1
    b2 = vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    return reduce_mean(s.to(torch.float64))


def ssim(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SSIM = SSIM(F, A) + SSIM(F, B): scikit-image defaults with data_range = 2 (CDDFuse's pinned
    scikit-image 0.19 used the float dtype range −1…1 for float input) on float32 images, as
    CDDFuse's ``image_read_cv2`` returns them."""
    f32 = f.to(torch.float32)
    return ssim_skimage(f32, a.to(torch.float32), 2.0) + ssim_skimage(f32, b.to(torch.float32), 2.0)
