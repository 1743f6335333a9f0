"""Metrics with the conventions of CDDFuse's ``utils/Evaluator.py`` (the ``cddfuse`` profile).

All functions take float tensors ``[..., H, W]`` on a 0–255 scale (fused ``f``, infrared ``a``,
visible ``b``; the source tensors broadcast against ``f``) and return one value per image, i.e.
a tensor of the leading shape. The profile passes float64 tensors. The optional ``cache`` holds
work that depends on a source alone (see :func:`metaloss.metrics._ops.cached`).

Conventions (see docs/metrics.md for the formulas):
- EN on ``uint8(round(F))``, log2; SD population standard deviation; SF and AG on means.
- MI in nats (scikit-learn's ``mutual_info_score`` on the grey values as labels), summed over the
  two sources.
- VIF: the pixel-domain VIFp (4 scales, σn² = 2) summed over the two sources; NaN → 1.
- SSIM: scikit-image's ``structural_similarity`` defaults (7×7 uniform window, sample covariance)
  with ``data_range=2`` (what scikit-image 0.19 used for float input), on float32 images as
  CDDFuse reads them, summed over the sources.
- Qabf: Sobel, Tg=0.9994, kg=−15, Dg=0.5, Ta=0.9879, ka=−22, Da=0.8, including the reference's
  quirk ``G = gF`` (not 1) where ``gA == gF``; float32 like the reference.
- MSE and CC averaged over the sources; PSNR = 10·log10(max(F)² / MSE); SCD sum of two correlations.

Precision: the reference holds images in float32 and computes most metrics in float32; we compute
in float64 except where float32 is both faithful and faster (AG, Qabf, the per-pixel VIF terms
once the local statistics are known in float64) and where the reference's float32 rounding shows
in the result (SSIM, reproduced operation for operation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaloss.metrics._ops import (
    Cache,
    batched_histogram,
    cached,
    correlate_sep_valid,
    entropy_from_counts,
    gaussian_1d,
    mutual_information_labels,
    reduce_mean,
    reduce_sum,
    sobel_same,
    uniform_filter_valid,
)

__all__ = [
    "average_gradient",
    "cc",
    "entropy",
    "mse",
    "mutual_information",
    "psnr",
    "qabf",
    "qabf_edge_preservation",
    "qabf_gradients",
    "scd",
    "spatial_frequency",
    "ssim",
    "ssim_skimage",
    "ssim_skimage_multi",
    "std",
    "vif",
    "vifp",
    "vifp_multi",
]


def _lead(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape[:-2])


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2] * x.shape[-1])


# ------------------------------------------------------------------------------- fused image only
def entropy(f: Tensor) -> Tensor:
    """EN (bits): Shannon entropy of the histogram of ``uint8(round(F))`` (values clamped to 0–255)."""
    q = torch.round(f).clamp(0, 255).to(torch.int64)
    return entropy_from_counts(batched_histogram(_flat(q), 256), log="2").reshape(_lead(f))


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
    (``numpy.gradient``), mean over all H·W pixels. Float32, as the reference computes it."""
    gy, gx = torch.gradient(f.to(torch.float32), dim=(-2, -1))
    g = torch.sqrt((gx * gx + gy * gy) * 0.5)
    return g.flatten(-2).to(torch.float64).mean(dim=-1)


# --------------------------------------------------------------------------------- with sources
def _labels(x: Tensor) -> tuple[Tensor, int]:
    """Integer labels of the grey values of ``x`` (``[B, N]``) and the number of labels.

    Integer-valued images in 0–255 use the values themselves; anything else is labelled by its
    distinct values per image (what ``mutual_info_score`` does with float arrays).
    """
    xi = x.to(torch.int64)
    if bool((xi == x).all()) and int(xi.min()) >= 0 and int(xi.max()) <= 255:
        return xi, 256
    out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    k = 1
    for i in range(x.shape[0]):
        _, inv = torch.unique(x[i], return_inverse=True)
        out[i] = inv
        k = max(k, int(inv.max()) + 1)
    return out, k


def _mi_pair(f: Tensor, s: Tensor, cache: Cache | None) -> Tensor:
    lead = tuple(torch.broadcast_shapes(f.shape, s.shape)[:-2])
    n = f.shape[-2] * f.shape[-1]
    fl, kf = _labels(_flat(f))
    sl, ks = cached(cache, "mi-labels", s, lambda: _labels(_flat(s)))
    fl = fl.reshape(tuple(f.shape[:-2]) + (n,)).expand(lead + (n,)).reshape(-1, n)
    sl = sl.reshape(tuple(s.shape[:-2]) + (n,)).expand(lead + (n,)).reshape(-1, n)
    return mutual_information_labels(fl, sl, kf, ks).reshape(lead)


def mutual_information(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """MI (nats) = MI(F, A) + MI(F, B), grey values as labels (``sklearn.metrics.mutual_info_score``)."""
    return _mi_pair(f, a, cache) + _mi_pair(f, b, cache)


def mse(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """MSE = (mean((A−F)²) + mean((B−F)²)) / 2."""
    da = a - f
    db = b - f
    return (reduce_mean(da * da) + reduce_mean(db * db)) / 2.0


def psnr(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """PSNR = 10·log10(max(F)² / MSE) — the peak is the fused image's maximum, not 255."""
    peak = f.amax(dim=(-2, -1))
    return 10.0 * torch.log10(peak * peak / mse(f, a, b))


def _centred(x: Tensor) -> tuple[Tensor, Tensor]:
    xm = x - x.mean(dim=(-2, -1), keepdim=True)
    return xm, reduce_sum(xm * xm)


def _corr(x: Tensor, y: Tensor, cache: Cache | None = None) -> Tensor:
    xm, sxx = cached(cache, "centred", x, lambda: _centred(x))
    ym, syy = _centred(y)
    return reduce_sum(xm * ym) / torch.sqrt(sxx * syy)


def cc(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """CC = (r(A, F) + r(B, F)) / 2, Pearson correlation over all pixels."""
    return (_corr(a, f, cache) + _corr(b, f, cache)) / 2.0


def scd(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """SCD = r(A, F−B) + r(B, F−A) (sum of the correlations of differences)."""
    return _corr(a, f - b, cache) + _corr(b, f - a, cache)


# -------------------------------------------------------------------------------------------- VIF
_VIF_EPS = 1e-10
_VIF_SIGMA_NSQ = 2.0


def _vif_windows() -> list[list[float]]:
    return [gaussian_1d(2 ** (5 - scale) + 1, (2 ** (5 - scale) + 1) / 5.0) for scale in range(1, 5)]


def _vif_ref_stats(ref: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Per scale: the (downsampled) reference, its local mean, its local variance (float32, 0
    below eps) plus eps, and the VIF denominator Σ log10(1 + σ₁²/σn²)."""
    out = []
    for scale, g in enumerate(_vif_windows(), start=1):
        if scale > 1:
            ref = correlate_sep_valid(ref, g)[..., ::2, ::2]
        mu1 = correlate_sep_valid(ref, g)
        s1 = torch.addcmul(correlate_sep_valid(ref * ref, g), mu1, mu1, value=-1.0).clamp_min_(0.0)
        s1 = s1 * (s1 >= _VIF_EPS).to(s1.dtype)
        den = reduce_sum(torch.log10(1.0 + s1 / _VIF_SIGMA_NSQ))
        s1f = s1.to(torch.float32)
        out.append((ref, mu1, s1f, s1f + _VIF_EPS, den))
    return out


def _vif_num(s1: Tensor, s1e: Tensor, s2: Tensor, ok2: Tensor, s12: Tensor) -> Tensor:
    """Σ log10(1 + g²σ₁²/(σv² + σn²)) with the reference's clipping, in float32.

    The reference's rules (g = 0 where σ₁² < eps, where σ₂² < eps and where g < 0; σv² ≥ eps)
    make a pixel's term 0 unless σ₁², σ₂² ≥ eps and σ₁₂ > 0: σ₁² arrives zeroed below eps (which
    zeroes its term), ``ok2`` is the mask σ₂² ≥ eps and negative σ₁₂ are clipped to 0. The
    statistics are differences of float64 local moments; their float32 copies are exact to 6e-8
    relative, which the log terms inherit. (Masks are arithmetic and the steps in place:
    ``torch.where`` and fresh allocations dominate the cost on the CPU.)
    """
    s12 = s12.to(torch.float32)
    g = s12.clamp_min(0.0).mul_(ok2).div_(s1e)
    sv = torch.addcmul(s2, g, s12, value=-1.0).clamp_min_(_VIF_EPS).add_(_VIF_SIGMA_NSQ)
    x = g.mul_(g).mul_(s1).div_(sv)
    return x.add_(1.0).log_().flatten(-2).sum(dim=-1, dtype=torch.float64) / math.log(10.0)


def vifp_multi(
    refs: tuple[Tensor, ...], dist: Tensor, nan_to_one: bool = True, cache: Cache | None = None
) -> list[Tensor]:
    """Pixel-domain VIF (Sheikh & Bovik) of ``dist`` against each reference in ``refs``.

    4 scales, Gaussian windows N = 17, 9, 5, 3 (σ = N/5), σn² = 2, with the reference
    implementation's clipping rules. ``NaN`` (a flat reference) becomes 1 when ``nan_to_one``
    (CDDFuse) and is kept otherwise (sewar's ``vifp``, used by TDFusion). The statistics of
    ``dist`` are computed once for all references, those of each reference once per ``cache``.
    """
    stats = [cached(cache, "vif-ref", r, lambda r=r: _vif_ref_stats(r)) for r in refs]
    nums: list[Tensor | float] = [0.0] * len(refs)
    for scale, g in enumerate(_vif_windows(), start=1):
        if scale > 1:
            dist = correlate_sep_valid(dist, g)[..., ::2, ::2]
        mu2 = correlate_sep_valid(dist, g)
        s2 = torch.addcmul(correlate_sep_valid(dist * dist, g), mu2, mu2, value=-1.0).clamp_min_(0.0)
        s2 = s2.to(torch.float32)
        ok2 = (s2 >= _VIF_EPS).to(torch.float32)
        for k, st in enumerate(stats):
            ref, mu1, s1, s1e, _ = st[scale - 1]
            s12 = torch.addcmul(correlate_sep_valid(ref * dist, g), mu1, mu2, value=-1.0)
            nums[k] = nums[k] + _vif_num(s1, s1e, s2, ok2, s12)
    out = []
    for k, st in enumerate(stats):
        den = st[0][4] + st[1][4] + st[2][4] + st[3][4]
        v = nums[k] / den
        if nan_to_one:
            v = torch.where(torch.isnan(v), torch.ones_like(v), v)
        out.append(v)
    return out


def vifp(ref: Tensor, dist: Tensor, nan_to_one: bool = True) -> Tensor:
    """Pixel-domain VIF of ``dist`` against ``ref`` (see :func:`vifp_multi`)."""
    return vifp_multi((ref,), dist, nan_to_one)[0]


def vif(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """VIF = VIFp(A, F) + VIFp(B, F) (CDDFuse calls it ``VIFF``; it is the pixel-domain VIF)."""
    va, vb = vifp_multi((a, b), f, True, cache)
    return va + vb


# ------------------------------------------------------------------------------------------- Qabf
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def qabf_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel magnitude and orientation as the references compute them: ``SAx = conv2(x, h3)``,
    ``SAy = conv2(x, h1)`` (true convolution, zero padding; h1 = [1 2 1; 0 0 0; −1 −2 −1],
    h3 = [−1 0 1; −2 0 2; −1 0 1]), angle ``atan(SAy/SAx)`` and π/2 where ``SAx == 0``.

    The sign convention matters only through that π/2: elsewhere the angle is that of a line.
    ``atan(y/x)`` is evaluated as ``atan2(y·sign(x) + [x = 0], |x|)``, which is the same angle
    (and π/2 where x = 0) and several times faster on the CPU than ``atan`` plus ``where``.
    Computed in the dtype of ``x`` (the profiles use float32, as CDDFuse does; on integer images
    the Sobel responses and their squared magnitudes are exact, so the comparisons of strengths
    are too).
    """
    gx, gy = sobel_same(x, "zeros")
    sx = -gx  # convolution flips the kernel: conv2(x, h3) = −corr(x, h3); conv2(x, h1) = corr(x, −h1)
    g = torch.sqrt(gx * gx + gy * gy)
    num = gy * torch.sign(sx) + (sx == 0).to(x.dtype)
    ang = torch.atan2(num, sx.abs())
    return g, ang


def qabf_edge_preservation(ga: Tensor, aa: Tensor, gf: Tensor, af: Tensor, equal_scale: float = 1.0) -> Tensor:
    """Per-pixel edge preservation Q^{AF} = Qg·Qα of Xydeas & Petrović.

    The strength ratio is min(gA, gF)/max(gA, gF), except that the reference implementations set
    it to ``gF`` (times ``equal_scale``, the factor by which they scaled the image before the
    Sobel filter) where ``gA == gF``, not to 1.
    """
    ga, gf = torch.broadcast_tensors(ga, gf)
    tiny = torch.finfo(ga.dtype).tiny
    ratio = torch.minimum(ga, gf).div_(torch.maximum(ga, gf).clamp_min_(tiny))
    eq = (ga == gf).to(ga.dtype)
    # ratio += eq * (gF·scale − ratio)
    ratio.add_(eq.mul_(torch.sub(gf * equal_scale, ratio)))
    # exp of a large negative argument takes a slow path on the CPU; below −80 the sigmoid is
    # already 1 in float32 and float64 alike.
    qg = ratio.sub_(_DG).mul_(_KG).clamp_min_(-80.0).exp_().add_(1.0).reciprocal_().mul_(_TG)
    ang = torch.sub(aa, af).abs_().mul_(-2.0 / math.pi).add_(1.0)
    qa = ang.sub_(_DA).mul_(_KA).exp_().add_(1.0).reciprocal_().mul_(_TA)
    return qg.mul_(qa)


def qabf(f: Tensor, a: Tensor, b: Tensor, equal_scale: float = 1.0, cache: Cache | None = None) -> Tensor:
    """Qabf = Σ(Q^{AF}·gA + Q^{BF}·gB) / Σ(gA + gB), computed in float32."""

    def grads(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, ang = qabf_gradients(x.to(torch.float32))
        return g, ang, g.flatten(-2).sum(dim=-1, dtype=torch.float64)

    ga, aa, sa = cached(cache, "qabf-grad", a, lambda: grads(a))
    gb, ab, sb = cached(cache, "qabf-grad", b, lambda: grads(b))
    gf, af, _ = grads(f)
    q = qabf_edge_preservation(ga, aa, gf, af, equal_scale).mul_(ga)
    q.addcmul_(qabf_edge_preservation(gb, ab, gf, af, equal_scale), gb)
    return q.flatten(-2).sum(dim=-1, dtype=torch.float64) / (sa + sb)


# ------------------------------------------------------------------------------------------- SSIM
def _ssim_stats(x: Tensor, size: int, cov_norm: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Local mean u, 2·u, u·u and the sample variance cov_norm·(E[x²] − u·u) — each rounded to
    the dtype in scikit-image's order of operations."""
    u = uniform_filter_valid(x, size)
    uu = u * u
    v = uniform_filter_valid(x * x, size).sub_(uu).mul_(cov_norm)
    return u, 2 * u, uu, v


def ssim_skimage_multi(
    x: Tensor, ys: tuple[Tensor, ...], data_range: float, win_size: int = 7, cache: Cache | None = None
) -> list[Tensor]:
    """scikit-image's ``structural_similarity(x, y, data_range=...)`` for each ``y`` in ``ys``, with
    its defaults: uniform ``win_size``² window, sample covariance (N/(N−1)), K1 = 0.01, K2 = 0.03,
    mean (in float64) over the windows fully inside the image.

    Computed in the dtype of ``x`` with scikit-image's order of operations (bit for bit on
    integer images): scikit-image ≥ 0.19 keeps float32 input in float32, which CDDFuse's images
    are, and with ``data_range=2`` the constants C1, C2 are small enough that float32 rounding
    in ``E[x²] − E[x]²`` shows in the 4th significant digit; float64 input is computed in float64.
    """
    dt = x.dtype
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ux, ux2, uxux, vx = _ssim_stats(x, win_size, cov_norm)
    out = []
    for y0 in ys:
        y = y0.to(dt)
        uy, _, uyuy, vy = cached(cache, f"ssim-{dt}-{win_size}", y0, lambda y=y: _ssim_stats(y, win_size, cov_norm))
        # scikit-image: A1 = 2·ux·uy + C1, A2 = 2·vxy + C2, B1 = ux² + uy² + C1, B2 = vx + vy + C2
        vxy = uniform_filter_valid(x * y, win_size).sub_(ux * uy).mul_(cov_norm)
        a2 = vxy.mul_(2).add_(c2)
        s = (ux2 * uy).add_(c1).mul_(a2)
        b = (uxux + uyuy).add_(c1).mul_((vx + vy).add_(c2))
        out.append(s.div_(b).flatten(-2).to(torch.float64).mean(dim=-1))
    return out


def ssim_skimage(x: Tensor, y: Tensor, data_range: float, win_size: int = 7) -> Tensor:
    """scikit-image's SSIM of one pair (see :func:`ssim_skimage_multi`)."""
    return ssim_skimage_multi(x, (y,), data_range, win_size)[0]


def ssim(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """SSIM = SSIM(F, A) + SSIM(F, B): scikit-image defaults with data_range = 2 (CDDFuse's pinned
    scikit-image 0.19 used the float dtype range −1…1 for float input) on float32 images, as
    CDDFuse's ``image_read_cv2`` returns them."""
    sa, sb = ssim_skimage_multi(f.to(torch.float32), (a, b), 2.0, cache=cache)
    return sa + sb
