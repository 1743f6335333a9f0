"""MEFB's ``metricsQp``: Zhao et al.'s phase-congruency-based fusion metric (the ``mefb`` profile).

MEFB (xingchenzhang/MEFB, ``metrics/metricsQp.m``, from Z. Liu's ``metricZhao.m``) computes, with
Z. Liu's ``myphasecong3`` (Kovesi's ``phasecong2`` with defaults: 4 scales, 6 orientations,
smallest wavelength 3, scale factor 2.1, σ/f₀ = 0.55, Δθ/σ = 1.2, k = 2, cut-off 0.5, g = 10),
three feature maps of each image: the phase congruency ``PC = ΣₒW·⌊E−T⌋ / (ΣₒΣₛA + ε)``, and the
maximum and minimum moments ``M``, ``m`` of the orientation covariance of the per-orientation
``PCₒ``. For each feature P of the sources 1, 2, their pixelwise pick ``max`` (the source with the
larger PC) and the fused image f, with masks ``Mᵢ = PCᵢ > 0.1``:

    Cᵢ = (σ_{Pᵢf} + C) / (√|σ²_{Pᵢ} σ²_f| + C),  C = 1e-4, on Mᵢ (0 elsewhere), Pᵢ ← Mᵢ·Pᵢ,

with local statistics from an 11×11 Gaussian window (σ = 1.5, zero padding, MATLAB ``filter2``),
and ``Q_P = Σ max(C₁, C₂, C_max) / |M_max|``. ``Qp = Q_PC · Q_M · Q_m`` (the code multiplies the
three terms; the paper's exponents are all 1). Higher is better.

Colour (``metricsQp``): colour sources and fused image are evaluated channel by channel and the
channel values averaged; grey sources with a colour fused image use its first channel only; a grey
fused image with colour sources uses ``rgb2gray`` of the sources made double (no rounding).

Precision: the 24 inverse FFTs per image and the per-pixel phase-congruency work run in float32
(PC within ~2e-6 of float64; Qp within 1.4e-6 relative over MEFB's 71 reference cases); the
noise median, the moments and the correlation terms in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaloss.metrics._ops import (
    Cache,
    cached,
    correlate_sep_same_zero,
    gaussian_1d,
    reduce_sum,
    rgb_to_gray_matlab,
)
from metaloss.metrics.profiles import MetricSpec

__all__ = ["SPECS", "phase_congruency", "qp"]

# myphasecong3's defaults (Kovesi's phasecong2).
_NSCALE = 4
_NORIENT = 6
_MIN_WAVELENGTH = 3.0
_MULT = 2.1
_SIGMA_ON_F = 0.55
_DTHETA_ON_SIGMA = 1.2
_K = 2.0
_CUT_OFF = 0.5
_G = 10.0
_EPSILON = 1e-4
#: Feature threshold and stabilising constant of Zhao et al.'s correlation terms.
_FEATURE_THRESHOLD = 0.1
_C = 1e-4
#: Pixels per chunk of images transformed together off the CPU (on the CPU: one image at a time,
#: whose smaller working set is faster).
_CHUNK_PIXELS = 1 << 22
#: Pixels per band of rows in which the CPU reduces an inverse FFT's output over the scales.
_BAND_PIXELS = 1 << 16


def _centred_range(n: int) -> Tensor:
    """``myphasecong3``'s normalised frequency axis: ``(-(n-1)/2 … (n-1)/2)/(n-1)`` for odd ``n``,
    ``(-n/2 … n/2-1)/n`` for even ``n``."""
    i = torch.arange(n, dtype=torch.float64) - n // 2
    return i / (n - 1 if n % 2 else n)


@functools.lru_cache(maxsize=2)
def _filter_bank(h: int, w: int, device: str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """``myphasecong3``'s filters for an ``h``×``w`` image, zero frequency at the corner: filter
    (s, o) is ``radial[s]·angular[o]`` (float32 ``[S, H, W, 2]``, ``[O, H, W, 2]``: each value
    twice, to scale the real and imaginary parts of a spectrum viewed as real); and the noise
    threshold per unit √noisePower of each orientation (float64 ``[O]``)."""
    y, x = torch.meshgrid(_centred_range(h), _centred_range(w), indexing="ij")
    radius = torch.sqrt(x * x + y * y)
    radius[h // 2, w // 2] = 1.0  # no log(0) at the centre (MATLAB: floor(rows/2)+1, floor(cols/2)+1)
    theta = torch.atan2(-y, x)
    radius = torch.fft.ifftshift(radius)
    theta = torch.fft.ifftshift(theta)
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)

    # lowpassfilter([rows, cols], .45, 15): its own grid ((j - fix(n/2) - 1)/n), then fftshift
    # (not ifftshift: for odd sizes its centre does not land on the zero frequency).
    ly = (torch.arange(h, dtype=torch.float64) - h // 2) / h
    lx = (torch.arange(w, dtype=torch.float64) - w // 2) / w
    ly, lx = torch.meshgrid(ly, lx, indexing="ij")
    lowpass = torch.fft.fftshift(1.0 / (1.0 + (torch.sqrt(lx * lx + ly * ly) / 0.45) ** 30))

    log_gabor = []
    for s in range(_NSCALE):
        fo = 1.0 / (_MIN_WAVELENGTH * _MULT**s)
        lg = torch.exp(-(torch.log(radius / fo) ** 2) / (2.0 * math.log(_SIGMA_ON_F) ** 2)) * lowpass
        lg[0, 0] = 0.0
        log_gabor.append(lg)
    radial = torch.stack(log_gabor)

    theta_sigma = math.pi / _NORIENT / _DTHETA_ON_SIGMA
    spread = []
    for o in range(_NORIENT):
        angle = o * math.pi / _NORIENT
        ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        dtheta = torch.atan2(ds, dc).abs()
        spread.append(torch.exp(-(dtheta**2) / (2.0 * theta_sigma**2)))
    angular = torch.stack(spread)

    # Noise model: noisePower = meanE2n / Σ filter₁², E[noise energy²] = noisePower·(2 Σₛ ΣR²ₛ +
    # 4 Σ_{i<j} Σ Rᵢ Rⱼ) with Rₛ = real(ifft2(filterₛ))·√(HW); Rayleigh τ = √(E²/2);
    # T = (τ√(π/2) + k·√(2 − π/2)·τ)/1.7. Everything but √noisePower depends on the size only.
    t_unit = []
    for o in range(_NORIENT):
        filters = radial * angular[o]
        em_n = (filters[0] ** 2).sum()
        r = torch.fft.ifft2(filters).real * math.sqrt(h * w)
        sum_an2 = (r * r).sum()
        sum_aiaj = sum((r[i] * r[j]).sum() for i in range(_NSCALE - 1) for j in range(i + 1, _NSCALE))
        energy2 = (2.0 * sum_an2 + 4.0 * sum_aiaj) / em_n  # per unit mean E²n
        tau = torch.sqrt(energy2 / 2.0)
        t_unit.append((tau * math.sqrt(math.pi / 2.0) + _K * math.sqrt(2.0 - math.pi / 2.0) * tau) / 1.7)

    def twice(x: Tensor) -> Tensor:
        return x.to(device, torch.float32).unsqueeze(-1).expand(*x.shape, 2).contiguous()

    return twice(radial), twice(angular), torch.stack(t_unit).to(device)


def _ranked(x: np.ndarray, ks: list[int]) -> np.ndarray:
    """The values of ranks ``ks`` (ascending, 0-based) of the 1-D ``x``, as ``np.partition`` gives
    them. Large arrays: partition only the values between two sample quantiles that bracket the
    ranks (checked by counting; the whole array otherwise)."""
    n = x.size
    if n >= 1 << 16:
        sample = np.sort(x[:: n >> 12])
        m = sample.size
        centre, margin = ks[0] * m // n, 4 * math.isqrt(m)
        lo, hi = sample[max(centre - margin, 0)], sample[min(centre + margin, m - 1)]
        below = int(np.count_nonzero(x < lo))
        inside = x[(x >= lo) & (x <= hi)]
        if below <= ks[0] and ks[-1] < below + inside.size:
            local = [k - below for k in ks]
            return np.partition(inside, local)[local]
    return np.partition(x, ks)[ks]


def _median_of_squares(x: Tensor) -> Tensor:
    """MATLAB ``median(x.^2)`` of each row of the non-negative ``x`` ``[N, L]`` (the mean of the
    two middle values for even L), squared and averaged in float64."""
    n = x.shape[-1]
    ks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    if x.device.type == "cpu":
        part = torch.from_numpy(np.stack([_ranked(row, ks) for row in x.numpy()]))
    else:
        part = torch.stack([x.kthvalue(k + 1, dim=-1).values for k in ks], dim=-1)
    part = part.to(torch.float64) ** 2
    return part[:, 0] if n % 2 else (part[:, 0] + part[:, 1]) / 2.0


def _phase_congruency_chunk(img: Tensor, bank: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``myphasecong3`` on ``[N, H, W]``: the forward FFT in float64, the filtering, inverse FFTs
    and per-pixel work in float32 (complex64), the noise median and the final moments in float64.
    On the CPU each inverse FFT's output is reduced over the scales a band of rows at a time, so
    the work on it stays in the cache."""
    radial, angular, t_unit = bank
    n, h, w = img.shape
    rows = max(1, _BAND_PIXELS // w) if img.device.type == "cpu" else h
    f32: dict[str, Any] = {"dtype": torch.float32, "device": img.device}
    spectrum = torch.view_as_real(torch.fft.fft2(img).to(torch.complex64))  # [N, H, W, 2]
    steered = torch.empty_like(spectrum)
    filtered = torch.empty((n, _NSCALE, h, w, 2), **f32)
    # Per band: even (real) and odd (imaginary) responses, amplitudes, their max, ΣE and ΣO, |(ΣE, ΣO)| + ε.
    band_responses = torch.empty((2, n, _NSCALE, rows, w), **f32)
    band_amp = torch.empty((n, _NSCALE, rows, w), **f32)
    band_sums = torch.empty((2, n, rows, w), **f32)
    band_max_an, band_x_energy = torch.empty((2, n, rows, w), **f32)
    amp0, sum_an, energy, weight = torch.empty((4, n, h, w), **f32)
    total_energy, total_sum_an, covx2, covy2, covxy = torch.zeros((5, n, h, w), **f32)
    for o in range(_NORIENT):
        angle = o * math.pi / _NORIENT
        torch.mul(spectrum, angular[o], out=steered)
        torch.mul(steered.unsqueeze(1), radial, out=filtered)
        eo = torch.view_as_real(torch.fft.ifft2(torch.view_as_complex(filtered)))  # [N, S, H, W, 2]
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            responses, amp, sums = (x[..., : r1 - r0, :] for x in (band_responses, band_amp, band_sums))
            max_an, x_energy = band_max_an[..., : r1 - r0, :], band_x_energy[..., : r1 - r0, :]
            responses.copy_(eo[:, :, r0:r1].permute(4, 0, 1, 2, 3))
            even, odd = responses
            torch.mul(even, even, out=amp).addcmul_(odd, odd).sqrt_()
            amp0[:, r0:r1] = amp[:, 0]
            torch.sum(amp, dim=-3, out=sum_an[:, r0:r1])
            torch.amax(amp, dim=-3, out=max_an)
            # Sigmoid weight penalising narrow frequency spread: 1 + exp((cut-off − width)·g).
            width_g = torch.div(sum_an[:, r0:r1], max_an.add_(_EPSILON), out=weight[:, r0:r1])
            width_g.mul_(-_G / _NSCALE).add_(_CUT_OFF * _G).exp_().add_(1.0)
            # Σₛ An(cos Δφ − |sin Δφ|) from dot and cross products with the mean response direction
            # (Eₘ, Oₘ) = (ΣE, ΣO)/(|(ΣE, ΣO)| + ε); the dot products sum to |(ΣE, ΣO)|²/(|(ΣE, ΣO)| + ε).
            torch.sum(responses, dim=-3, out=sums)
            sum_e, sum_o = sums
            x_energy2 = torch.mul(sum_e, sum_e, out=energy[:, r0:r1]).addcmul_(sum_o, sum_o)
            torch.sqrt(x_energy2, out=x_energy).add_(_EPSILON)
            sums.div_(x_energy)
            cross = even.mul_(sum_o.unsqueeze(-3)).addcmul_(odd, sum_e.unsqueeze(-3), value=-1.0).abs_()
            x_energy2.div_(x_energy).sub_(torch.sum(cross, dim=-3, out=x_energy))
        del eo
        # Noise threshold from the median E² of the smallest scale (Rayleigh: mean = −median/ln ½).
        mean_e2n = -_median_of_squares(amp0.reshape(n, h * w)) / math.log(0.5)
        threshold = (torch.sqrt(mean_e2n) * t_unit[o]).to(torch.float32)[:, None, None]
        weighted = energy.sub_(threshold).clamp_min_(0.0).div_(weight)
        total_sum_an += sum_an
        total_energy += weighted
        pc_o2 = weighted.div_(sum_an).square_()
        covx2.add_(pc_o2, alpha=math.cos(angle) ** 2)
        covy2.add_(pc_o2, alpha=math.sin(angle) ** 2)
        covxy.add_(pc_o2, alpha=math.cos(angle) * math.sin(angle))
    pc = total_energy.double() / (total_sum_an.double() + _EPSILON)
    covx2_, covy2_ = covx2.double() / (_NORIENT / 2), covy2.double() / (_NORIENT / 2)
    covxy_ = covxy.double() / _NORIENT
    denom = torch.sqrt(covxy_ * covxy_ + (covx2_ - covy2_) ** 2) + _EPSILON
    return pc, (covy2_ + covx2_ + denom) / 2.0, (covy2_ + covx2_ - denom) / 2.0


def phase_congruency(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``myphasecong3(x)`` on images ``[..., H, W]`` (float64, any scale): phase congruency, maximum
    and minimum moment, each ``[..., H, W]``. FFTs as MATLAB's ``fft2``/``ifft2``."""
    h, w = x.shape[-2:]
    bank = _filter_bank(h, w, str(x.device))
    flat = x.reshape(-1, h, w).to(torch.float64)
    step = max(1, _CHUNK_PIXELS // (h * w)) if x.device.type != "cpu" else 1
    parts = [_phase_congruency_chunk(flat[i : i + step], bank) for i in range(0, flat.shape[0], step)]
    return tuple(torch.cat(p).reshape(x.shape) for p in zip(*parts, strict=True))  # type: ignore[return-value]


_WINDOW = gaussian_1d(11, 1.5)


def _local(x: Tensor) -> Tensor:
    return correlate_sep_same_zero(x, _WINDOW, _WINDOW)


def _sqrt_abs_(x: Tensor) -> Tensor:
    """``√|x|`` in place (NumPy's vectorised float64 ``abs``/``sqrt`` on the CPU)."""
    if x.device.type == "cpu" and x.is_contiguous():
        arr = x.numpy()
        np.sqrt(np.abs(arr, out=arr), out=arr)
        return x
    return x.abs_().sqrt_()


def _source_masks(pc1: Tensor, pc2: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Where source 1 is the max-PC pick (PC₁ > PC₂), and the feature masks PC > 0.1 of source 1,
    source 2 and the pick."""
    first = pc1 > pc2
    pc_max = first * pc1 + ~first * pc2  # products, as in MATLAB (a NaN is kept either way)
    return first, (pc1 > _FEATURE_THRESHOLD, pc2 > _FEATURE_THRESHOLD, pc_max > _FEATURE_THRESHOLD)


def _source_terms(p1: Tensor, p2: Tensor, first: Tensor, masks: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
    """For a feature map of sources 1, 2 and of their max-PC pick: (masked map, its local mean μ,
    its local √|σ²|, and C where its mask holds, −∞ elsewhere)."""
    picked = first * p1 + ~first * p2
    out: list[tuple[Tensor, ...]] = []
    for p, mask in zip((p1, p2, picked), masks, strict=True):
        pm = mask * p
        mu = _local(pm)
        sd = _sqrt_abs_(_local(pm * pm).addcmul_(mu, mu, value=-1.0))
        out.append((pm, mu, sd, torch.full_like(pm, -math.inf).masked_fill_(mask, _C)))
    return out


def _zhao_term(floor: Tensor, count: Tensor, sources: list[tuple[Tensor, ...]], pf: Tensor) -> Tensor:
    """``correlation_coeffcient``: Σ max over the three sources of the masked local correlation
    with the fused feature map, divided by the size of the max-PC mask (``count``).

    MATLAB zeroes each source's correlation off its mask, then takes the max skipping NaN. Here the
    numerator gets −∞ off the mask (C on it), so a value off its mask never wins, and the max starts
    from ``floor``: 0 where some mask fails (MATLAB's zeros), NaN where all hold (nothing added)."""
    scratch = torch.empty_like(pf)
    muf = _local(pf)
    sdf = _sqrt_abs_(_local(torch.mul(pf, pf, out=scratch)).addcmul_(muf, muf, value=-1.0))
    best = floor.expand(pf.shape).clone()
    for pm, mu, sd, c_on_mask in sources:
        corr = _local(torch.mul(pm, pf, out=scratch)).addcmul_(mu, muf, value=-1.0).add_(c_on_mask)
        corr.div_(torch.mul(sd, sdf, out=scratch).add_(_C))
        torch.fmax(best, corr, out=best)
    return reduce_sum(best) / count


def _item(x: Tensor, i: int) -> Tensor:
    return x[i : i + 1] if x.shape[0] > 1 else x


def _source_work(feats_a: tuple[Tensor, ...], feats_b: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, list]:
    """Everything that depends on the sources only: the max start ``floor`` and mask size of
    :func:`_zhao_term`, and each feature's :func:`_source_terms`."""
    first, masks = _source_masks(feats_a[0], feats_b[0])
    all_hold = masks[0] & masks[1] & masks[2]
    floor = torch.zeros_like(feats_a[0]).masked_fill_(all_hold, math.nan)
    terms = [_source_terms(pa, pb, first, masks) for pa, pb in zip(feats_a, feats_b, strict=True)]
    return floor, reduce_sum(masks[2]), terms


def _qp_grey(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None) -> Tensor:
    """Qp of images ``[B, K, H, W]`` taken channel by channel (sources broadcast against ``f``)
    → ``[B, K]``. Fused images are done one at a time (a smaller working set is faster)."""
    feats_a = cached(cache, "mefb-qp-pc", a, lambda: phase_congruency(a))
    feats_b = cached(cache, "mefb-qp-pc", b, lambda: phase_congruency(b))
    # Keyed on a with b's id in the tag: b stays referenced by its own entry above.
    floor, count, terms = cached(cache, f"mefb-qp-src-{id(b)}", a, lambda: _source_work(feats_a, feats_b))
    values = []
    for i in range(f.shape[0]):
        feats_f = phase_congruency(f[i : i + 1])
        q = torch.ones((), dtype=torch.float64, device=f.device)
        for feature in range(3):
            sources = [tuple(_item(t, i) for t in src) for src in terms[feature]]
            q = q * _zhao_term(_item(floor, i), _item(count, i), sources, feats_f[feature])
        values.append(q)
    return torch.cat(values)


def _gray_double(x: Tensor, cache: Cache | None) -> Tensor:
    return cached(cache, "mefb-qp-gray", x, lambda: rgb_to_gray_matlab(x, uint8=False))


def qp(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQp(A, B, F)`` on images ``[B, C, H, W]`` as read (0–255, C = 1 or 3) → ``[B]``."""
    ca, cb, cf = a.shape[1], b.shape[1], f.shape[1]
    if ca == 1 and cb == 1 and cf == 3:
        f, cf = f[:, :1], 1
    if cf == 1:
        a = _gray_double(a, cache) if ca == 3 else a
        b = _gray_double(b, cache) if cb == 3 else b
        return _qp_grey(f, a, b, cache)[:, 0]
    if ca == 1:  # colour B against each channel of F: MATLAB passes the whole B, made grey inside
        b = _gray_double(b, cache)
    elif cb == 1:
        raise ValueError("metricsQp cannot pair a colour first source with a grey second source")
    return _qp_grey(f, a, b, cache).mean(dim=1)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("Qp", qp, True, "Zhao et al.'s phase-congruency metric: Q_PC·Q_M·Q_m", min_size=6),
)
