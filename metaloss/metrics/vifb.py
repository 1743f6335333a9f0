"""Metrics with the conventions of the VIFB MATLAB toolkit (the ``vifb`` profile).

VIFB (xingchenzhang/VIFB, ``metrics/metrics*.m``) calls every metric as ``metricsX(VI, IR, F)``
and, for a colour fused image, evaluates it on each colour channel k with ``VI(:,:,k)``,
``IR(:,:,k)`` (or the grey IR) and ``F(:,:,k)``, then averages the channel values. The functions
here compute the per-channel value: they take tensors ``[..., H, W]`` (0–255; sources broadcast
against the fused image) and return the leading shape; the profile averages over channels.
Exception: :func:`spatial_frequency` takes the whole ``[..., K, H, W]`` image, reproducing how
the MATLAB code indexes a colour image with two subscripts.

See docs/metrics.md for the formulas and their quirks.

Precision: float64 throughout, except Qabf (float32, whose Sobel strengths are exact on integer
images) and the FFTs inside Qcb/Qcv (float32 after the min–max normalisation, which is done in
float64; ``qcb(fft_dtype=torch.float64)`` for images with large flat dark regions): they agree
with VIFB's values to ~1e-6 relative, far inside the printed 5 digits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from metaloss.metrics import cddfuse as _cdd
from metaloss.metrics._ops import (
    Cache,
    batched_histogram,
    cached,
    correlate_sep_same_zero,
    correlate_sep_valid,
    entropy_from_counts,
    gaussian_1d,
    reduce_mean,
    reduce_sum,
    round_half_away_nonneg,
    sobel_same,
)

__all__ = [
    "average_gradient",
    "cross_entropy",
    "edge_intensity",
    "entropy",
    "mutual_information",
    "psnr",
    "qabf",
    "qcb",
    "qcv",
    "rmse",
    "spatial_frequency",
    "ssim",
    "std",
]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2] * x.shape[-1])


def _gray_index(x: Tensor) -> Tensor:
    """Grey values as histogram bins 0–255 (MATLAB indexes ``X(floor(v)+1)``); truncation is the
    floor for the clamped, non-negative values."""
    return x.clamp(0, 255).to(torch.int32)


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
    return torch.sqrt((reduce_sum(dx.mul_(dx)) + reduce_sum(dy.mul_(dy))) / n)


def average_gradient(f: Tensor) -> Tensor:
    """``metricsAvg_gradient``: Σ sqrt((Gx² + Gy²)/2) / ((M−1)(N−1)) with MATLAB's ``gradient``
    (central differences inside, one-sided at the border)."""
    gy, gx = torch.gradient(f, dim=(-2, -1))
    h, w = f.shape[-2], f.shape[-1]
    g = gx.mul_(gx).addcmul_(gy, gy).mul_(0.5).sqrt_()
    return reduce_sum(g) / ((h - 1) * (w - 1))


def edge_intensity(f: Tensor) -> Tensor:
    """``metricsEdge_intensity``: mean Sobel magnitude, ``imfilter(F, fspecial('sobel'),
    'replicate')`` and its transpose."""
    gx, gy = sobel_same(f, "replicate")
    return reduce_mean(gx.mul_(gx).addcmul_(gy, gy).sqrt_())


# --------------------------------------------------------------------------------- with sources
def _minmax(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)


def _minmax_bins(x: Tensor) -> Tensor:
    """``int16(255·(x − min)/(max − min))`` per image (MATLAB rounds halves away from zero),
    0 for a constant image (metricsMutinf)."""
    mn, mx = _minmax(x)
    rng = mx - mn
    rng = rng + (rng == 0).to(rng.dtype)  # a constant image has x − min = 0 everywhere
    return round_half_away_nonneg(torch.sub(x, mn).div_(rng).mul_(255.0)).to(torch.int32)


def _mi_from_joint(joint: Tensor) -> Tensor:
    h_ab = entropy_from_counts(joint.reshape(joint.shape[0], -1))
    h_a = entropy_from_counts(joint.sum(dim=2))
    h_b = entropy_from_counts(joint.sum(dim=1))
    return h_a + h_b - h_ab


def mutual_information(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsMutinf``: MI(VI, F) + MI(IR, F) in nats, each image min–max normalised to 256
    levels (``int16`` rounding) before the joint histogram; MI = H(S) + H(F) − H(S, F)."""
    lead = tuple(torch.broadcast_shapes(f.shape, ir.shape, vi.shape)[:-2])
    n = f.shape[-2] * f.shape[-1]
    fb = _minmax_bins(f).reshape(tuple(f.shape[:-2]) + (n,)).expand(lead + (n,)).reshape(-1, n)
    total: Tensor | float = 0.0
    for s in (vi, ir):
        sb = cached(cache, "vifb-mi-bins", s, lambda s=s: _minmax_bins(s).mul_(256))
        sb = sb.reshape(tuple(s.shape[:-2]) + (n,)).expand(lead + (n,)).reshape(-1, n)
        joint = batched_histogram(sb + fb, 256 * 256).reshape(-1, 256, 256)
        total = total + _mi_from_joint(joint)
    return total.reshape(lead)  # type: ignore[union-attr]


def _hist(x: Tensor) -> Tensor:
    """Normalised 256-bin histograms, shape ``x.shape[:-2] + (256,)``."""
    h = batched_histogram(_flat(_gray_index(x)), 256).to(torch.float64) / float(x.shape[-2] * x.shape[-1])
    return h.reshape(tuple(x.shape[:-2]) + (256,))


def _relative_entropy(p1: Tensor, p2: Tensor) -> Tensor:
    p1, p2 = torch.broadcast_tensors(p1, p2)
    both = ((p1 != 0) & (p2 != 0)).to(p1.dtype)
    # where both are non-zero: p1·log2(p1/p2); elsewhere the ratio is replaced by 1 (term 0).
    ratio = (p1 * both + (1 - both)) / (p2 * both + (1 - both))
    return (p1 * torch.log2(ratio)).sum(dim=-1)


def cross_entropy(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsCross_entropy``: (CE(VI, F) + CE(IR, F))/2, CE(S, F) = Σ p_S log2(p_S/p_F) over the
    grey levels where both histograms are non-zero (a relative entropy, in bits)."""
    lead = tuple(torch.broadcast_shapes(f.shape, ir.shape, vi.shape)[:-2])
    pf = _hist(f)
    p_vi = cached(cache, "vifb-hist", vi, lambda: _hist(vi))
    p_ir = cached(cache, "vifb-hist", ir, lambda: _hist(ir))
    return ((_relative_entropy(p_vi, pf) + _relative_entropy(p_ir, pf)) / 2.0).reshape(lead)


def _root_sse_per_pixel(s: Tensor, f: Tensor) -> Tensor:
    d = s - f
    return torch.sqrt(reduce_sum(d.mul_(d))) / float(f.shape[-2] * f.shape[-1])


def rmse(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsRmse``: (e(VI, F) + e(IR, F))/2 with e(S, F) = sqrt(Σ(S−F)²)/(M·N) — the VIFB
    code's "mse", which is neither an MSE nor an RMSE (the square root is taken of the sum)."""
    # PSNR needs the same number: keyed on the fused tensor, shared within one evaluation chunk.
    return cached(
        cache, f"vifb-e-{id(ir)}-{id(vi)}", f, lambda: (_root_sse_per_pixel(vi, f) + _root_sse_per_pixel(ir, f)) / 2.0
    )


def psnr(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsPsnr``: 20·log10(255/sqrt(e)), e = (e(VI, F) + e(IR, F))/2 as in :func:`rmse`."""
    e = rmse(f, ir, vi, cache)
    return 20.0 * torch.log10(255.0 / torch.sqrt(e))


def qabf(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQabf``: Xydeas–Petrović Qabf with the same model as CDDFuse's. VIFB multiplies the
    images by 255 first (``255*im2double`` of an already double image), which only changes the
    value used where ``gA == gF`` (the quirk ``G = gF``): ×255."""
    return _cdd.qabf(f, vi, ir, equal_scale=255.0, cache=cache)


def _gauss_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    g = gaussian_1d(11, 1.5)
    mu = correlate_sep_valid(x, g)
    mu2 = mu * mu
    return mu, mu2, torch.sub(correlate_sep_valid(x * x, g), mu2)


def ssim(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsSsim``: SSIM(VI, F) + SSIM(IR, F), Wang et al.'s 11×11 Gaussian window (σ = 1.5),
    L = 255, population statistics, mean over the 'valid' windows."""
    g = gaussian_1d(11, 1.5)
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    ub, ub_sq, sigb = _gauss_stats(f)
    total: Tensor | float = 0.0
    for s in (vi, ir):
        ua, ua_sq, siga = cached(cache, "vifb-ssim", s, lambda s=s: _gauss_stats(s))
        ua_ub = ua * ub
        sigab = correlate_sep_valid(s * f, g).sub_(ua_ub)
        # ((2·ua_ub + C1)(2·sigab + C2)) / ((ua² + ub² + C1)(siga² + sigb² + C2))
        num = ua_ub.mul_(2).add_(c1).mul_(sigab.mul_(2).add_(c2))
        den = (ua_sq + ub_sq).add_(c1).mul_((siga + sigb).add_(c2))
        total = total + reduce_mean(num.div_(den))
    return total  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- Qcb and Qcv
def _normalize1(x: Tensor, im2double: bool = False) -> Tensor:
    """Z. Liu's ``normalize1``: min–max to 0–255, rounded (half away from zero); an all-zero image
    is left as is. Computed in float64, returned in float32 (integers 0–255 are exact).

    ``im2double``: the image is divided by 255 first (MATLAB's ``im2double`` of a uint8 image, as
    MEFB's Qcb does), which moves some quotients across a rounding tie by one ulp."""
    if im2double:
        x = x / 255.0
    mn, mx = _minmax(x)
    keep = (mx == 0) & (mn == 0)
    rng = mx - mn
    rng = rng + (rng == 0).to(rng.dtype)
    out = round_half_away_nonneg(torch.sub(x, mn).div_(rng).mul_(255.0))
    if bool(keep.any()):
        out = torch.where(keep, x, out)
    return out.to(torch.float32)


@functools.lru_cache(maxsize=16)
def _freq_grid(h: int, w: int, kind: str, device: str, dtype: torch.dtype) -> Tensor:
    """A frequency-domain filter on MATLAB's ``freqspace([h, w], 'meshgrid')`` grid, in the
    ``rfft2`` layout (FFT order, columns 0…w/2), computed in float64 and returned in ``dtype``.

    ``qcb``: the DoG contrast-sensitivity filter with u, v scaled by w/30, h/30.
    ``qcv``: the Mannos–Sakrison filter with u, v scaled by w/8, h/8.
    Both are even in frequency, so ``irfft2(rfft2(x)·H)`` equals MATLAB's
    ``real(ifft2(ifftshift(fftshift(fft2(x)).*H)))``.
    """
    opts: dict[str, Any] = {"dtype": torch.float64, "device": torch.device(device)}
    su, sv = (w / 30.0, h / 30.0) if kind == "qcb" else (w / 8.0, h / 8.0)
    fu = (torch.arange(w, **opts) - (w // 2)) * (2.0 / w) * su
    fv = (torch.arange(h, **opts) - (h // 2)) * (2.0 / h) * sv
    r = torch.sqrt(fu[None, :] ** 2 + fv[:, None] ** 2)
    if kind == "qcb":
        filt = torch.exp(-((r / 15.3870) ** 2)) - 0.7622 * torch.exp(-((r / 1.3456) ** 2))
    else:
        # Mannos–Sakrison CSF (the toolkit also builds Daly's and Ahumada's filters but uses this one).
        filt = 2.6 * (0.0192 + 0.144 * r) * torch.exp(-((0.144 * r) ** 1.1))
    filt = torch.fft.ifftshift(filt, dim=(-2, -1))
    return filt[:, : w // 2 + 1].to(dtype).contiguous()


def _freq_filter(x: Tensor, kind: str) -> Tensor:
    """The filter ``kind`` applied to ``x`` in the frequency domain, in ``x``'s dtype."""
    h, w = x.shape[-2], x.shape[-1]
    hf = _freq_grid(h, w, kind, str(x.device), x.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(x) * hf, s=(h, w))


def _qcb_kernels(sigma: float) -> tuple[list[float], list[float]]:
    # gaussian2d(n1, n2, σ): 31×31 samples of exp(−(x²+y²)/2σ²)/(2πσ²), not normalised (separable).
    g = gaussian_1d(31, sigma, normalise=False)
    return [v / (2 * math.pi * sigma * sigma) for v in g], g


def _qcb_contrast_power(x: Tensor) -> Tensor:
    """C' = |C|³/(|C|² + 10⁻⁴) with C = filter2(G(σ=2), x)/filter2(G(σ=4), x) − 1.

    In float64: C is huge where the band-passed image crosses zero (its cube would overflow
    float32), and float32 filters make G₂*I and G₄*I coincide exactly often enough to give
    0/0 in the preservation ratio where the reference has none."""
    x = x.to(torch.float64)
    b1 = correlate_sep_same_zero(x, *_qcb_kernels(2.0))
    b2 = correlate_sep_same_zero(x, *_qcb_kernels(4.0))
    c = b1.div_(b2).sub_(1.0).abs_()
    c2 = c * c
    return c2.mul(c).div_(c2.add_(0.0001))


def qcb(
    f: Tensor,
    ir: Tensor,
    vi: Tensor,
    cache: Cache | None = None,
    *,
    im2double: bool = False,
    fft_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``metricsQcb`` (Chen–Blum, Z. Liu's ``metricChenBlum``): contrast-sensitivity (DoG) filter
    in the frequency domain, local contrast C = G₂*I / G₄*I − 1, C' = |C|³/(|C|² + 10⁻⁴),
    contrast preservation min(C'_S/C'_F, C'_F/C'_S) weighted by the saliency C'_S².

    ``im2double``: normalise x/255 rather than x (MEFB's code; VIFB's images are double already).
    ``fft_dtype``: float32 is enough for VIFB's images; where an image has large flat regions at
    its minimum (normalised to 0) the filtered values there are ~1e-4, float32's rounding decides
    C = G₂*I / G₄*I − 1 on them, and only float64 (MATLAB's precision) reproduces the value."""
    tag = f"{'mefb' if im2double else 'vifb'}-qcb-{fft_dtype}"

    def cp(x: Tensor) -> Tensor:
        return _qcb_contrast_power(_freq_filter(_normalize1(x, im2double).to(fft_dtype), "qcb"))

    def weights() -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = cached(cache, tag, vi, lambda: cp(vi))
        c2 = cached(cache, tag, ir, lambda: cp(ir))
        s1, s2 = c1 * c1, c2 * c2
        tot = s1 + s2
        return c1, c2, s1.div_(tot), s2.div_(tot)

    c1, c2, lam1, lam2 = cached(cache, f"{tag}-w-{id(ir)}", vi, weights)
    cf = cp(f)

    def preservation(cs: Tensor) -> Tensor:
        # MATLAB: (cs./cf).*mask + (cf./cs).*(1-mask), mask = cs < cf
        mask = (cs < cf).to(cf.dtype)
        return (cs / cf).mul_(mask).add_((cf / cs).mul_(1 - mask))

    q = preservation(c1).mul_(lam1).add_(preservation(c2).mul_(lam2))
    return q.flatten(-2).sum(dim=-1, dtype=torch.float64) / float(q.shape[-2] * q.shape[-1])


def _block_sums(x: Tensor, size: int) -> Tensor:
    """Sums over ``size×size`` blocks, the image zero-padded to whole blocks (``blkproc``)."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % size, (-w) % size
    lead = tuple(x.shape[:-2])
    xp = torch.nn.functional.pad(x.reshape((-1, h, w)), (0, pw, 0, ph))
    hb, wb = (h + ph) // size, (w + pw) // size
    return xp.reshape(-1, hb, size, wb, size).sum(dim=(2, 4)).reshape(lead + (hb, wb))


def qcv(f: Tensor, ir: Tensor, vi: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQcv`` (Chen–Varshney, Z. Liu's ``metricChen``; lower is better): 16×16 regions
    (``blkproc``: partial blocks zero-padded, so their mean divides by 256), saliency Σ|∇S|⁵
    (Sobel), regional distortion = mean of the Mannos–Sakrison-filtered difference (S − F)
    squared; Q = Σ(λ₁D₁ + λ₂D₂)/Σ(λ₁ + λ₂).

    The filter is linear, so filter(S − F) is computed as filter(S) − filter(F): the sources'
    halves are done once per source.
    """
    win = 16

    def source(x: Tensor) -> tuple[Tensor, Tensor]:
        xn = _normalize1(x)
        gx, gy = sobel_same(xn, "zeros")
        g = gx.mul_(gx).addcmul_(gy, gy).sqrt_()
        lam = _block_sums(g.pow_(5), win)
        return lam, _freq_filter(xn, "qcv")

    lam1, flt1 = cached(cache, "vifb-qcv", vi, lambda: source(vi))
    lam2, flt2 = cached(cache, "vifb-qcv", ir, lambda: source(ir))
    fltf = _freq_filter(_normalize1(f), "qcv")
    area = float(win * win)
    d1 = torch.sub(flt1, fltf)
    d2 = torch.sub(flt2, fltf)
    dd1 = _block_sums(d1.mul_(d1), win).div_(area)
    dd2 = _block_sums(d2.mul_(d2), win).div_(area)
    num = dd1.mul_(lam1).add_(dd2.mul_(lam2)).flatten(-2).sum(dim=-1, dtype=torch.float64)
    den = torch.add(lam1, lam2).flatten(-2).sum(dim=-1, dtype=torch.float64)
    return num / den
