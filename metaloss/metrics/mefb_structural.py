"""MEFB's structural metrics: Qc, Qw, Qy, MEF-SSIM and VIF (xingchenzhang/MEFB, ``metrics/``).

MEFB calls each metric as ``metricsX(imgA, imgB, F)`` on the uint8 arrays ``imread`` gives.
Qc, Qw, Qy and VIF share one colour rule:

- colour F with two grey sources: F's first channel only;
- grey F: the metric once, a colour source converted by ``rgb2gray`` while still uint8 (rounded);
  VIF fails in MATLAB on that combination (``applycform`` of a grey F), here it is treated the same;
- otherwise the metric of each channel k on ``A(:,:,k)``, ``B(:,:,k)``, ``F(:,:,k)``, averaged.
  With one grey and one colour source MATLAB indexes a channel the grey image lacks and fails;
  here the grey source is used for every channel.

MEF-SSIM converts all three images with ``rgb2gray`` while uint8 (rounded); a grey image is used as
is (MATLAB stacks the sources into one array, so it needs both of the same kind).

The SSIM maps of Qc and Qy use C1 = C2 = 2e-16: where a source is constant over a 7×7 window
their terms are ratios of rounding noise in MATLAB (see :func:`_qc_channel`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaloss.metrics._ops import (
    Cache,
    cached,
    correlate_sep_same_zero,
    correlate_sep_valid,
    gaussian_1d,
)
from metaloss.metrics.profiles import MetricSpec, _matlab_grey, _mefb_rule

__all__ = ["SPECS", "mef_ssim", "qc", "qw", "qy", "vif"]

_EPS = 2.220446049250313e-16  # MATLAB's eps


# ------------------------------------------------------------------------------------ colour rule
def _flat_mean(x: Tensor) -> Tensor:
    """``mean2`` per image of ``[B, 1, H, W]`` → ``[B, 1]``."""
    return x.flatten(1).mean(dim=1, keepdim=True)


def _flat_nanmean(x: Tensor) -> Tensor:
    """``mean2(x(~isnan(x)))`` per image → ``[B, 1]``."""
    return torch.nanmean(x.flatten(1), dim=1, keepdim=True)


def _stats(x: Tensor, g: list[float]) -> tuple[Tensor, Tensor]:
    """Local mean and variance E[x²] − E[x]² over a separable window (MATLAB ``filter2 'valid'``)."""
    mu = correlate_sep_valid(x, g)
    return mu, correlate_sep_valid(x * x, g).sub_(mu * mu)


# ------------------------------------------------------------------------------------- Qc and Qy
#: 1 − mass of the Qc/Qy window (see :func:`_qc_channel`): far above float64 rounding of the window
#: sums (~1e-16), far below the variance of any window that is not constant (≥ ~1e-3 grey levels²).
_YANG_DEFICIT = 1e-12
_G7 = [v * math.sqrt(1.0 - _YANG_DEFICIT) for v in gaussian_1d(7, 1.5)]
_C_YANG = 2e-16


def _ssim_yang(
    x_stats: tuple[Tensor, Tensor], y_stats: tuple[Tensor, Tensor], x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Z. Liu's ``ssim_yang``: SSIM map with a 7×7 Gaussian window (σ = 1.5), C1 = C2 = 2e-16,
    'valid' windows; returns the map and the covariance σxy."""
    (mx, vx), (my, vy) = x_stats, y_stats
    mxy = mx * my
    cov = correlate_sep_valid(x * y, _G7).sub_(mxy)
    num = mxy.mul_(2).add_(_C_YANG).mul_(cov * 2 + _C_YANG)
    den = (mx * mx + my * my + _C_YANG).mul_(vx + vy + _C_YANG)
    return num.div_(den), cov


def _yang_source(a: Tensor, b: Tensor, cache: Cache | None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    return (
        cached(cache, "mefb-yang-stats", a, lambda: _stats(a, _G7)),
        cached(cache, "mefb-yang-stats", b, lambda: _stats(b, _G7)),
    )


def _yang_fused(
    f: Tensor, a: Tensor, b: Tensor, cache: Cache | None
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """:func:`_ssim_yang` of (A, F) and (B, F), cached under ``f``: Qc and Qy use the same maps."""
    sa, sb = _yang_source(a, b, cache)

    def maps() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        sf = _stats(f, _G7)
        return _ssim_yang(sa, sf, a, f), _ssim_yang(sb, sf, b, f)

    return cached(cache, f"mefb-yang-maps-{id(a)}-{id(b)}", f, maps)


def _qc_channel(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQc`` (Cvejic) of one channel: s = σAF/(σAF + σBF); Q = mean of
    s·SSIM(A,F) + (1−s)·SSIM(B,F), set to 0 where s < 0 and to 1 where s > 1, NaNs dropped.

    With C = 2e-16 the statistics of a window where an image is constant (c ≠ 0) are rounding noise
    in MATLAB (E[x²] − E[x]² of a constant), and the maps there are ratios of that noise: e.g. where
    B is constant, s is 1 − tiny or 1 + tiny, i.e. SSIM(A,F) or 1. MATLAB's values agree with the
    window's weights summing to slightly less than 1 (mass 1 − ε: a constant window has variance
    ε(1−ε)c² > 0 and every statistic is a positive semi-definite form), far better than with an
    exact 0 or a mass above 1 (errors of several per cent). The weights here sum to 1 − 1e-12, which
    evaluates that limit; the rest of MATLAB's rounding noise is not reproducible.
    """
    (ssim_af, cov_af), (ssim_bf, cov_bf) = _yang_fused(f, a, b, cache)
    s = cov_af / (cov_af + cov_bf)
    q = s * ssim_af + (1 - s) * ssim_bf
    q = torch.where(s < 0, 0.0, torch.where(s > 1, 1.0, q))
    return _flat_nanmean(q)


def _qy_channel(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQy`` (Yang) of one channel: where SSIM(A,B) ≥ 0.75, λ·SSIM(A,F) + (1−λ)·SSIM(B,F)
    with λ = σA²/(σA² + σB²); elsewhere max(SSIM(A,F), SSIM(B,F)) (MATLAB's ``max`` skips a NaN);
    the mean with NaNs dropped (a NaN λ makes the pixel NaN in both branches)."""
    sa, sb = _yang_source(a, b, cache)

    def pair() -> tuple[Tensor, Tensor]:
        ssim_ab, _ = _ssim_yang(sa, sb, a, b)
        va, vb = sa[1], sb[1]
        return (ssim_ab >= 0.75).to(a.dtype), va / (va + vb)

    similar, lam = cached(cache, f"mefb-qy-pair-{id(b)}", a, pair)
    (ssim_af, _), (ssim_bf, _) = _yang_fused(f, a, b, cache)
    weighted = (lam * ssim_af + (1 - lam) * ssim_bf) * similar
    best = torch.fmax(ssim_af, ssim_bf) * (1 - similar)
    return _flat_nanmean(weighted + best)


# -------------------------------------------------------------------------------------------- Qw
_G11 = gaussian_1d(11, 1.5)
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _prewitt_magnitude(x: Tensor) -> Tensor:
    """sqrt(X² + Y²) with ``filter2([1 0 -1; 1 0 -1; 1 0 -1], x, 'same')`` and its transpose
    (zero padding)."""
    gx = correlate_sep_same_zero(x, [1.0, 1.0, 1.0], [1.0, 0.0, -1.0])
    gy = correlate_sep_same_zero(x, [1.0, 0.0, -1.0], [1.0, 1.0, 1.0])
    return gx.mul_(gx).addcmul_(gy, gy).sqrt_()


def _ssim_map(x_stats: tuple[Tensor, Tensor], y_stats: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Wang's ``ssim_index`` map: 11×11 Gaussian (σ = 1.5), K = (0.01, 0.03), L = 255, 'valid'."""
    (mx, vx), (my, vy) = x_stats, y_stats
    mxy = mx * my
    cov = correlate_sep_valid(x * y, _G11).sub_(mxy)
    num = mxy.mul_(2).add_(_C1).mul_(cov.mul_(2).add_(_C2))
    den = (mx * mx + my * my + _C1).mul_(vx + vy + _C2)
    return num.div_(den)


def _qw_channel(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQw`` (Piella's edge-dependent index, ``sw = 3``, α = 1) on Prewitt magnitudes
    E(·): λ = σ²_EA/(σ²_EA + σ²_EB) (0.5 added to both where the sum is 0), c = max(σ²_EA, σ²_EB)
    normalised to sum 1, Q = Σ c·(λ·SSIM(EF, EA) + (1−λ)·SSIM(EF, EB))."""

    def source(x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        e = _prewitt_magnitude(x)
        return e, _stats(e, _G11)

    ea, sa = cached(cache, "mefb-qw-source", a, lambda: source(a))
    eb, sb = cached(cache, "mefb-qw-source", b, lambda: source(b))

    def weights() -> tuple[Tensor, Tensor]:
        va, vb = sa[1], sb[1]
        flat = (va + vb == 0).to(va.dtype) * 0.5
        va, vb = va + flat, vb + flat
        saliency = torch.maximum(va, vb)
        return va / (va + vb), saliency / saliency.flatten(-2).sum(dim=-1)[..., None, None]

    lam, c = cached(cache, f"mefb-qw-weights-{id(b)}", a, weights)
    ef = _prewitt_magnitude(f)
    sf = _stats(ef, _G11)
    q = _ssim_map(sf, sa, ef, ea).mul_(lam).add_(_ssim_map(sf, sb, ef, eb).mul_(1 - lam)).mul_(c)
    return q.flatten(1).sum(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------- VIF
_VIF_NOISE = 0.005 * 255 * 255
_VIF_WEIGHTS = (1 / 2.15, 0.0, 0.15 / 2.15, 1 / 2.15)
_VIF_C = 1e-7


def _vif_window(scale: int) -> list[float]:
    n = 2 ** (4 - scale + 1) + 1  # 33, 17, 9, 5
    return gaussian_1d(n, n / 5.0)


def _vif_pyramid(x: Tensor) -> list[tuple[Tensor, tuple[Tensor, Tensor]]]:
    """Per scale 1–4: the image (filtered with that scale's window and subsampled by 2 from scale 2
    on) and its local statistics, variance clipped at 0.

    Computed on x − 128 (variances and covariances are unchanged): the rounding noise of a constant
    window's variance then stays far below the 1e-10 thresholds of :func:`_vif_maps`."""
    x = x - 128.0
    out = []
    for scale in range(1, 5):
        g = _vif_window(scale)
        if scale > 1:
            x = correlate_sep_valid(x, g)[..., ::2, ::2].contiguous()
        mu, var = _stats(x, g)
        out.append((x, (mu, var.clamp_(min=0.0))))
    return out


def _vif_maps(
    src: tuple[Tensor, tuple[Tensor, Tensor]], dst: tuple[Tensor, tuple[Tensor, Tensor]], scale: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Han's ``ComVidVindG`` at one scale (Sheikh–Bovik's VIF with its guards): the gain g, the
    information with distortion log10(1 + g²σs²/(σv² + σn²)) and without it log10(1 + σs²/σn²)."""
    (x, (mx, vx)), (y, (my, vy)) = src, dst
    cov = correlate_sep_valid(x * y, _vif_window(scale)).sub_(mx * my)
    g = cov / (vx + 1e-10)
    sv = vy - g * cov
    tiny_x = vx < 1e-10
    g = torch.where(tiny_x, 0.0, g)
    sv = torch.where(tiny_x, vy, sv)
    vx = torch.where(tiny_x, 0.0, vx)
    tiny_y = vy < 1e-10
    g = torch.where(tiny_y, 0.0, g)
    sv = torch.where(tiny_y, 0.0, sv)
    neg = g < 0
    sv = torch.where(neg, vy, sv)
    g = torch.where(neg, 0.0, g)
    sv = sv.clamp_(min=1e-10)
    with_distortion = torch.log10(1 + g * g * vx / (sv + _VIF_NOISE))
    without = torch.log10(1 + vx / _VIF_NOISE)
    return g, with_distortion, without


def _vif_channel(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsVIF`` (Han et al. 2013): per scale, each pixel takes the VIF terms of the source
    whose gain g is smaller (B on ties); F_s = Σ(VID + C)/Σ(VIND + C), C = 1e-7;
    VIF = Σ_s p_s F_s with p = (1, 0, 0.15, 1)/2.15."""
    pa = cached(cache, "mefb-vif-pyramid", a, lambda: _vif_pyramid(a))
    pb = cached(cache, "mefb-vif-pyramid", b, lambda: _vif_pyramid(b))
    pf = _vif_pyramid(f)
    total: Tensor | float = 0.0
    for scale, weight in enumerate(_VIF_WEIGHTS, start=1):
        if weight == 0.0:
            continue
        ga, vid_a, vind_a = _vif_maps(pa[scale - 1], pf[scale - 1], scale)
        gb, vid_b, vind_b = _vif_maps(pb[scale - 1], pf[scale - 1], scale)
        take_a = ga < gb
        vid = torch.where(take_a, vid_a, vid_b) + _VIF_C
        vind = torch.where(take_a, vind_a, vind_b) + _VIF_C
        total = total + weight * vid.flatten(1).sum(dim=1, keepdim=True) / vind.flatten(1).sum(dim=1, keepdim=True)
    return total  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- MEF-SSIM
_MEF_WINDOW = 11
_MEF_C = (0.03 * 255) ** 2
_MEF_SCALE_WEIGHTS = tuple(w / (0.0448 + 0.2856 + 0.3001) for w in (0.0448, 0.2856, 0.3001))


def _downsample(x: Tensor) -> Tensor:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then every other pixel from the first: the
    mean of each 2×2 block, an odd last row or column paired with itself."""
    h, w = x.shape[-2], x.shape[-1]
    x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else x
    return torch.nn.functional.avg_pool2d(x, 2)


def _mef_source_stats(sources: list[Tensor]) -> dict[str, object]:
    """The source-only part of ``mef_ssim`` at one scale (see :func:`_mef_ssim_scale`)."""
    n = float(_MEF_WINDOW * _MEF_WINDOW)
    ones = [1.0] * _MEF_WINDOW
    sums = [correlate_sep_valid(x, ones) for x in sources]
    k = len(sources)
    # Centred inner products of the 11×11 patches, P_kl = Σ(x_k − μ_k)(x_l − μ_l), from exact box
    # sums (integers, or multiples of 1/16 after downsampling): (n·Σx_k x_l − Σx_k Σx_l)/n.
    inner: dict[tuple[int, int], Tensor] = {}
    for i in range(k):
        for j in range(i, k):
            sq = correlate_sep_valid(sources[i] * sources[j], ones)
            inner[i, j] = inner[j, i] = sq.mul_(n).sub_(sums[i] * sums[j]).div_(n)
    norms = [inner[i, i].clamp(min=0.0).sqrt_() for i in range(k)]
    spread = [v + 0.001 for v in norms]  # ``ed``: sqrt(max(n·σ², 0)) + 0.001
    total = sum(inner[i, j] for i in range(k) for j in range(k))
    assert isinstance(total, Tensor)
    consistency = (total.clamp(min=0.0).sqrt_() + _EPS) / (sum(norms) + _EPS)  # R
    consistency = torch.where(consistency > 1, 1 - _EPS, consistency)
    power = torch.tan(math.pi / 2 * consistency).clamp_(max=10.0)
    weights = [(v / _MEF_WINDOW).pow(power) + _EPS for v in spread]
    wsum = sum(weights)
    coef = [w / wsum / e for w, e in zip(weights, spread, strict=True)]  # a_k: the weight of (x_k − μ_k)/ed_k
    ref_sq = sum(coef[i] * coef[j] * inner[i, j] for i in range(k) for j in range(k))  # ‖rBlock‖²
    assert isinstance(ref_sq, Tensor)
    ref_norm = ref_sq.clamp(min=0.0).sqrt_()
    max_spread = torch.stack(spread).amax(dim=0)
    scale = torch.where(ref_norm > 0, max_spread / ref_norm, 1.0)
    coef = [c * scale for c in coef]  # the patch r = Σ_k coef_k (x_k − μ_k), rescaled to ‖r‖ = max ed
    g = gaussian_1d(_MEF_WINDOW, 1.5)
    means = [correlate_sep_valid(x, g) for x in sources]
    ref_var: Tensor | float = 0.0
    for i in range(k):
        for j in range(i, k):
            cov = correlate_sep_valid(sources[i] * sources[j], g).sub_(means[i] * means[j])
            ref_var = ref_var + (1 if i == j else 2) * coef[i] * coef[j] * cov
    return {"coef": coef, "means": means, "ref_var": ref_var}


def _mef_ssim_scale(sources: list[Tensor], stats: dict, f: Tensor) -> Tensor:
    """Ma–Zeng–Wang ``mef_ssim`` at one scale → mean quality ``[B, 1]``.

    Per 11×11 window: ed_k = ‖x_k − μ_k‖ + 0.001, consistency R = ‖Σ_k(x_k − μ_k)‖/Σ_k‖x_k − μ_k‖
    (eps added to both), p = min(tan(πR/2), 10), weights w_k ∝ (ed_k/11)^p + eps; the reference
    patch r = Σ_k w_k (x_k − μ_k)/ed_k rescaled to norm max_k ed_k; q = (2σ_rf + C)/(σ_r² + σ_f² + C)
    with an 11×11 Gaussian window (σ = 1.5), C = (0.03·255)². All window sums are computed as
    filters (the σ's of r expand into Gaussian-weighted covariances of the sources).
    """
    g = gaussian_1d(_MEF_WINDOW, 1.5)
    mf, vf = _stats(f, g)
    cross: Tensor | float = 0.0
    for c, x, mx in zip(stats["coef"], sources, stats["means"], strict=True):
        cross = cross + c * correlate_sep_valid(x * f, g).sub_(mx * mf)
    q = (2 * cross + _MEF_C) / (stats["ref_var"] + vf + _MEF_C)
    return _flat_mean(q)


def _mef_ssim_grey(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None) -> Tensor:
    def pyramid() -> list[tuple[list[Tensor], dict]]:
        levels = []
        srcs = [a, b]
        for level in range(len(_MEF_SCALE_WEIGHTS)):
            if level:
                srcs = [_downsample(x) for x in srcs]
            levels.append((srcs, _mef_source_stats(srcs)))
        return levels

    levels = cached(cache, f"mefb-mef-ssim-{id(b)}", a, pyramid)
    out: Tensor | float = 1.0
    for level, ((srcs, stats), weight) in enumerate(zip(levels, _MEF_SCALE_WEIGHTS, strict=True)):
        if level:
            f = _downsample(f)
        out = out * _mef_ssim_scale(srcs, stats, f).pow(weight)
    return out  # type: ignore[return-value]


def mef_ssim(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsMEF_SSIM``: Ma–Zeng–Wang MEF-SSIM of F against the sources A and B, 3 scales
    (2×2-mean downsampling) combined as Π Q_l^w_l, w ∝ (0.0448, 0.2856, 0.3001); all images grey
    (``rgb2gray`` of uint8, rounded). Any pair of sources of the same size as F (grey or colour)."""
    grey_f, grey_a, grey_b = _matlab_grey(f, True, None), _matlab_grey(a, True, cache), _matlab_grey(b, True, cache)
    return _mef_ssim_grey(grey_f, grey_a, grey_b, cache)[:, 0]


qc = _mefb_rule(_qc_channel)
qy = _mefb_rule(_qy_channel)
qw = _mefb_rule(_qw_channel)
vif = _mefb_rule(_vif_channel)

SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("Qc", qc, True, "Cvejic's covariance-weighted SSIM (7×7 Gaussian, C≈0), 0–1", min_size=7),
    MetricSpec(
        "Qw", qw, True, "Piella's edge-dependent fusion quality (Prewitt magnitudes, 11×11 SSIM), 0–1", min_size=11
    ),
    MetricSpec("Qy", qy, True, "Yang's SSIM-based quality (7×7 Gaussian, threshold 0.75), 0–1", min_size=7),
    MetricSpec("MEF-SSIM", mef_ssim, True, "Ma–Zeng–Wang multi-exposure SSIM, 3 scales, 0–1", min_size=41),
    MetricSpec("VIF", vif, True, "Han's fusion VIF, 4 scales weighted (1, 0, 0.15, 1)/2.15", min_size=41),
)
