"""Metrics with the conventions of the VIFB MATLAB toolkit (the ``vifb`` profile).

VIFB (xingchenzhang/VIFB, ``metrics/metrics*.m``) calls every metric as ``metricsX(VI, IR, F)``
and, for a colour fused image, evaluates it on each colour channel k with ``VI(:,:,k)``,
``IR(:,:,k)`` (or the grey IR) and ``F(:,:,k)``, then averages the channel values. The functions
here compute the per-channel value: they take tensors ``[..., H, W]`` (0–255; sources broadcast
against the fused image) and return the leading shape; the profile averages over channels.
Exception: :func:`spatial_frequency` takes the whole ``[..., K, H, W]`` image, reproducing how
the MATLAB code indexes a colour image with two subscripts.

See docs/metrics.md for the formulas and their quirks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaloss.metrics import cddfuse as _cdd
from metaloss.metrics._ops import (
    Cache,
    batched_histogram,
    cached,
    correlate_sep_valid,
    entropy_from_counts,
    gaussian_1d,
    pad2d,
    reduce_mean,
    reduce_sum,
    round_half_away,
    sobel_same,
)

__all__ = [
    "entropy",
    "std",
    "spatial_frequency",
    "average_gradient",
    "edge_intensity",
    "mutual_information",
    "cross_entropy",
    "psnr",
    "rmse",
    "qabf",
    "ssim",
    "qcb",
    "qcv",
]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2] * x.shape[-1])


def _gray_index(x: Tensor) -> Tensor:
    """Grey values as histogram bins 0–255 (MATLAB indexes ``X(floor(v)+1)``)."""
    return torch.floor(x).clamp(0, 255).to(torch.int64)


# ------------------------------------------------------------------------------- fused image only
def entropy(f: Tensor) -> Tensor:
    """``metricsEntropy``: Shannon entropy (bits) of the 256-bin histogram of ``floor(F)``."""
    lead = tuple(f.shape[:-2])
    return entropy_from_counts(batched_histogram(_flat(_gray_index(f)), 256), log="2").reshape(lead)


def std(f: Tensor) -> Tensor:
    """``metricsVariance`` (despite its name the standard deviation): sqrt(Σ(F−mean)²/(M·N))."""
    return torch.std(f.flatten(-2), dim=-1, correction=0)


def spatial_frequency(f: Tensor) -> Tensor:
    """``metricsSpatial_frequency`` on a ``[..., K, H, W]`` image → ``[...]``.

    RF = Σ(row differences)²/(M·N), CF = Σ(column differences)²/(M·N), SF = sqrt(RF + CF).
    The MATLAB code reads ``[m, n] = size(F)`` and ``F(i, j)``, which for a colour image means
    the K channels side by side (an M × K·N image): the row differences then include the K−1 seams
    between channels, and the denominator is M·K·N. Reproduced as is.
    """
    k, h, w = f.shape[-3], f.shape[-2], f.shape[-1]
    wide = f.transpose(-3, -2).reshape(tuple(f.shape[:-3]) + (h, k * w))
    dx = wide[..., :, 1:] - wide[..., :, :-1]
    dy = wide[..., 1:, :] - wide[..., :-1, :]
    n = float(h * k * w)
    return torch.sqrt(reduce_sum(dx * dx) / n + reduce_sum(dy * dy) / n)


def average_gradient(f: Tensor) -> Tensor:
    """``metricsAvg_gradient``: Σ sqrt((Gx² + Gy²)/2) / ((M−1)(N−1)) with MATLAB's ``gradient``
    (central differences inside, one-sided at the border)."""
    gy, gx = torch.gradient(f, dim=(-2, -1))
    h, w = f.shape[-2], f.shape[-1]
    return reduce_sum(torch.sqrt((gx * gx + gy * gy) / 2.0)) / ((h - 1) * (w - 1))


def edge_intensity(f: Tensor) -> Tensor:
    """``metricsEdge_intensity``: mean Sobel magnitude, ``imfilter(F, fspecial('sobel'),
    'replicate')`` and its transpose."""
    gx, gy = sobel_same(f, "replicate")
    return reduce_mean(torch.sqrt(gx * gx + gy * gy))


# --------------------------------------------------------------------------------- with sources
def _minmax_bins(x: Tensor) -> Tensor:
    """``int16(255·(x − min)/(max − min))`` per image, 0 for a constant image (metricsMutinf)."""
    mn = x.amin(dim=(-2, -1), keepdim=True)
    mx = x.amax(dim=(-2, -1), keepdim=True)
    rng = mx - mn
    t = (x - mn) / torch.where(rng == 0, torch.ones_like(rng), rng)
    t = torch.where(rng == 0, torch.zeros_like(t), t)
    return round_half_away(t * 255.0).to(torch.int64)


def _mi_pair(s: Tensor, f: Tensor, fb: Tensor, cache: Cache | None) -> Tensor:
    lead = tuple(torch.broadcast_shapes(s.shape, f.shape)[:-2])
    sb = cached(cache, "vifb-mi-bins", s, lambda: _flat(_minmax_bins(s)))
    if sb.shape[0] != fb.shape[0]:
        sb = sb.expand(fb.shape[0], -1)
    joint = batched_histogram(sb * 256 + fb, 256 * 256).reshape(-1, 256, 256)
    h_ab = entropy_from_counts(joint.reshape(joint.shape[0], -1))
    h_a = entropy_from_counts(joint.sum(dim=2))
    h_b = entropy_from_counts(joint.sum(dim=1))
    return (h_a + h_b - h_ab).reshape(lead)


def mutual_information(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsMutinf``: MI(VI, F) + MI(IR, F) in nats, each image min–max normalised to 256
    levels (``int16`` rounding) before the joint histogram."""
    fb = _flat(_minmax_bins(f))
    return _mi_pair(vi, f, fb, cache) + _mi_pair(ir, f, fb, cache)


def _hist(x: Tensor) -> Tensor:
    return batched_histogram(_flat(_gray_index(x)), 256).to(torch.float64) / float(x.shape[-2] * x.shape[-1])


def _cross_entropy_pair(s: Tensor, p2: Tensor, cache: Cache | None) -> Tensor:
    p1 = cached(cache, "vifb-hist", s, lambda: _hist(s))
    p1, p2 = torch.broadcast_tensors(p1, p2)
    both = (p1 != 0) & (p2 != 0)
    ratio = torch.where(both, p1 / torch.where(both, p2, torch.ones_like(p2)), torch.ones_like(p1))
    return (p1 * torch.log2(ratio)).sum(dim=-1)


def cross_entropy(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsCross_entropy``: (CE(VI, F) + CE(IR, F))/2, CE(S, F) = Σ p_S log2(p_S/p_F) over the
    grey levels where both histograms are non-zero (a relative entropy, in bits)."""
    lead = tuple(torch.broadcast_shapes(f.shape, ir.shape, vi.shape)[:-2])
    pf = _hist(f)
    ce = (_cross_entropy_pair(vi, pf, cache) + _cross_entropy_pair(ir, pf, cache)) / 2.0
    return ce.reshape(lead)


def _root_sse_per_pixel(s: Tensor, f: Tensor) -> Tensor:
    d = s - f
    return torch.sqrt(reduce_sum(d * d)) / float(f.shape[-2] * f.shape[-1])


def rmse(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsRmse``: (e(VI, F) + e(IR, F))/2 with e(S, F) = sqrt(Σ(S−F)²)/(M·N) — the VIFB
    code's "mse", which is neither an MSE nor an RMSE (the square root is taken of the sum)."""
    return (_root_sse_per_pixel(vi, f) + _root_sse_per_pixel(ir, f)) / 2.0


def psnr(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsPsnr``: 20·log10(255/sqrt(e)), e = (e(VI, F) + e(IR, F))/2 as in :func:`rmse`."""
    e = rmse(f, ir, vi)
    return 20.0 * torch.log10(255.0 / torch.sqrt(e))


def qabf(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQabf``: Xydeas–Petrović Qabf with the same model as CDDFuse's. VIFB multiplies the
    images by 255 first (``255*im2double`` of an already double image), which only changes the
    value used where ``gA == gF`` (the quirk ``G = gF``): ×255."""
    return _cdd.qabf(f, vi, ir, equal_scale=255.0, cache=cache)


def _gauss_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    g = gaussian_1d(11, 1.5)
    mu = correlate_sep_valid(x, g)
    return mu, correlate_sep_valid(x * x, g) - mu * mu


def ssim(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsSsim``: SSIM(VI, F) + SSIM(IR, F), Wang et al.'s 11×11 Gaussian window (σ = 1.5),
    L = 255, population statistics, mean over the 'valid' windows."""
    g = gaussian_1d(11, 1.5)
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    ub, sigb = _gauss_stats(f)
    total: Tensor | float = 0.0
    for s in (vi, ir):
        ua, siga = cached(cache, "vifb-ssim", s, lambda s=s: _gauss_stats(s))
        ua_ub = ua * ub
        sigab = correlate_sep_valid(s * f, g) - ua_ub
        m = ((2 * ua_ub + c1) * (2 * sigab + c2)) / ((ua * ua + ub * ub + c1) * (siga + sigb + c2))
        total = total + reduce_mean(m)
    return total  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- Qcb and Qcv
def _normalize1(x: Tensor) -> Tensor:
    """Z. Liu's ``normalize1``: min–max to 0–255, rounded (half away from zero); an all-zero image
    is left as is."""
    mn = x.amin(dim=(-2, -1), keepdim=True)
    mx = x.amax(dim=(-2, -1), keepdim=True)
    keep = (mx == 0) & (mn == 0)
    rng = torch.where(keep, torch.ones_like(mx), mx - mn)
    return torch.where(keep, x, round_half_away((x - mn) / rng * 255.0))


def _freq_radius(h: int, w: int, su: float, sv: float, like: Tensor) -> Tensor:
    """sqrt(u² + v²) on MATLAB's ``freqspace([h, w], 'meshgrid')`` grid, u scaled by ``su`` and v by
    ``sv``, already ``ifftshift``-ed into FFT order."""
    opts = {"dtype": torch.float64, "device": like.device}
    fu = (torch.arange(w, **opts) - (w // 2)) * (2.0 / w) * su
    fv = (torch.arange(h, **opts) - (h // 2)) * (2.0 / h) * sv
    r = torch.sqrt(fu[None, :] ** 2 + fv[:, None] ** 2)
    return torch.fft.ifftshift(r, dim=(-2, -1))


def _freq_filter(x: Tensor, hfilt: Tensor) -> Tensor:
    """``real(ifft2(ifftshift(fftshift(fft2(x)) .* H)))`` with ``hfilt`` already in FFT order.
    The filters are even in frequency, so the imaginary part is rounding noise."""
    return torch.fft.ifft2(torch.fft.fft2(x) * hfilt).real


def _filter2_same_zero(x: Tensor, kv: list[float], kh: list[float]) -> Tensor:
    p = len(kv) // 2
    return correlate_sep_valid(pad2d(x, p, "zeros"), kv, kh)


def _qcb_contrast_power(x: Tensor) -> Tensor:
    # gaussian2d(n1, n2, σ): 31×31 samples of exp(−(x²+y²)/2σ²)/(2πσ²), not normalised.
    def kernels(sigma: float) -> tuple[list[float], list[float]]:
        g = gaussian_1d(31, sigma, normalise=False)
        return [v / (2 * math.pi * sigma * sigma) for v in g], g

    b1 = _filter2_same_zero(x, *kernels(2.0))
    b2 = _filter2_same_zero(x, *kernels(4.0))
    c = torch.abs(b1 / b2 - 1.0)
    return (c**3) / (c**2 + 0.0001)


def _qcb_filter(h: int, w: int, like: Tensor) -> Tensor:
    r = _freq_radius(h, w, w / 30.0, h / 30.0, like)
    return torch.exp(-((r / 15.3870) ** 2)) - 0.7622 * torch.exp(-((r / 1.3456) ** 2))


def qcb(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQcb`` (Chen–Blum, Z. Liu's ``metricChenBlum``): contrast-sensitivity (DoG) filter
    in the frequency domain, local contrast C = G₂*I / G₄*I − 1, C' = |C|³/(|C|² + 10⁻⁴),
    contrast preservation min(C'_S/C'_F, C'_F/C'_S) weighted by the saliency C'_S²."""
    h, w = f.shape[-2], f.shape[-1]
    sd = _qcb_filter(h, w, f)

    def cp(x: Tensor) -> Tensor:
        return _qcb_contrast_power(_freq_filter(_normalize1(x), sd))

    c1 = cached(cache, "vifb-qcb", vi, lambda: cp(vi))
    c2 = cached(cache, "vifb-qcb", ir, lambda: cp(ir))
    cf = cp(f)

    def preservation(cs: Tensor) -> Tensor:
        mask = (cs < cf).to(cf.dtype)
        return (cs / cf) * mask + (cf / cs) * (1 - mask)

    q1, q2 = preservation(c1), preservation(c2)
    s1, s2 = c1 * c1, c2 * c2
    lam1 = s1 / (s1 + s2)
    lam2 = s2 / (s1 + s2)
    return reduce_mean(lam1 * q1 + lam2 * q2)


def _block_sums(x: Tensor, size: int) -> Tensor:
    """Sums over ``size×size`` blocks, the image zero-padded to whole blocks (``blkproc``)."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % size, (-w) % size
    lead = tuple(x.shape[:-2])
    xp = torch.nn.functional.pad(x.reshape((-1, h, w)), (0, pw, 0, ph))
    hb, wb = (h + ph) // size, (w + pw) // size
    return xp.reshape(-1, hb, size, wb, size).sum(dim=(2, 4)).reshape(lead + (hb, wb))


def _qcv_filter(h: int, w: int, like: Tensor) -> Tensor:
    r = _freq_radius(h, w, w / 8.0, h / 8.0, like)
    # Mannos–Sakrison CSF (the toolkit also builds Daly's and Ahumada's filters but uses this one).
    return 2.6 * (0.0192 + 0.144 * r) * torch.exp(-((0.144 * r) ** 1.1))


def qcv(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQcv`` (Chen–Varshney, Z. Liu's ``metricChen``; lower is better): 16×16 regions,
    saliency Σ|∇S|⁵ (Sobel), regional distortion = mean of the Mannos–Sakrison-filtered difference
    (S − F) squared; Q = Σ(λ₁D₁ + λ₂D₂)/Σ(λ₁ + λ₂).

    The filter is linear, so filter(S − F) is computed as filter(S) − filter(F): the sources'
    halves are done once per source.
    """
    win = 16
    h, w = f.shape[-2], f.shape[-1]
    theta_m = _qcv_filter(h, w, f)

    def source(x: Tensor) -> tuple[Tensor, Tensor]:
        xn = _normalize1(x)
        gx, gy = sobel_same(xn, "zeros")
        lam = _block_sums(torch.sqrt(gx * gx + gy * gy) ** 5, win)
        return lam, _freq_filter(xn, theta_m)

    lam1, flt1 = cached(cache, "vifb-qcv", vi, lambda: source(vi))
    lam2, flt2 = cached(cache, "vifb-qcv", ir, lambda: source(ir))
    fltf = _freq_filter(_normalize1(f), theta_m)
    d1 = flt1 - fltf
    d2 = flt2 - fltf
    area = float(win * win)
    dd1 = _block_sums(d1 * d1, win) / area
    dd2 = _block_sums(d2 * d2, win) / area
    return reduce_sum(lam1 * dd1 + lam2 * dd2) / reduce_sum(lam1 + lam2)
