"""The ``mefb`` profile: the 20 metrics of the MEFB MATLAB toolkit (xingchenzhang/MEFB,
``metrics/metrics*.m``), which the multi-exposure and multi-focus benchmarks report.

MEFB calls every metric as ``metricsX(imgA, imgB, F)`` on the uint8 arrays ``imread`` gives and each
file repeats one colour rule (:func:`metaloss.metrics.profiles._mefb_rule`), so the profile passes
the images as read and every metric does its own colour handling. This module holds the ten metrics
VIFB's toolkit also has (CE, EN, PSNR, AG, EI, Qabf, SD, SF, Qcb, Qcv: VIFB's per-channel formulas
from :mod:`metaloss.metrics.vifb`, with two differences: SF is taken per channel, where VIFB's code
sees a colour image as its channels side by side, and Qcb normalises ``im2double`` images (x/255),
which moves a few rounding ties in ``normalize1``, and filters in float64, since several MEFB images
have large black regions where float32 is not enough) and assembles the profile with
:mod:`~metaloss.metrics.mefb_info` (FMI, NMI, Qncie, TE), :mod:`~metaloss.metrics.mefb_phase` (Qp)
and :mod:`~metaloss.metrics.mefb_structural` (Qc, Qw, Qy, MEF-SSIM, VIF). docs/metrics.md has the
formulas and how close each comes to MEFB's MATLAB values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaloss.metrics import mefb_info, mefb_phase, mefb_structural
from metaloss.metrics import vifb as _vifb
from metaloss.metrics._ops import Cache
from metaloss.metrics.profiles import MetricSpec, _drop_alpha, _mefb_rule

__all__ = ["MEFB_NAMES", "MEFB_SPECS", "SHARED_SPECS", "prepare"]


def _spatial_frequency_channel(f: Tensor) -> Tensor:
    """``metricsSpatial_frequency`` of one channel ``[..., H, W]``: VIFB's formula with K = 1."""
    return _vifb.spatial_frequency(f.unsqueeze(-3))


def _qcb(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQcb``: VIFB's, on ``im2double`` images, with float64 FFTs (see :func:`vifb.qcb`)."""
    return _vifb.qcb(f, a, b, cache, im2double=True, fft_dtype=torch.float64)


SHARED_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "CE",
        _mefb_rule(_vifb.cross_entropy),
        False,
        "cross entropy, mean of CE(A,F) and CE(B,F) over the 256-bin histograms (bits)",
    ),
    MetricSpec("EN", _mefb_rule(_vifb.entropy, False), True, "entropy of the fused image (bits)"),
    MetricSpec(
        "PSNR",
        _mefb_rule(_vifb.psnr, uint8_sources=False),
        True,
        "20·log10(255/sqrt(e)), e = mean over A, B of sqrt(Σ(S−F)²)/(M·N) (dB)",
    ),
    MetricSpec(
        "AG",
        _mefb_rule(_vifb.average_gradient, False, rgb2gray_fused=True),
        True,
        "average gradient, Σ sqrt((Gx²+Gy²)/2)/((M−1)(N−1)) (grey levels per pixel)",
        min_size=2,
    ),
    MetricSpec(
        "EI",
        _mefb_rule(_vifb.edge_intensity, False),
        True,
        "edge intensity, mean Sobel magnitude, replicate border (grey levels)",
    ),
    MetricSpec(
        "Qabf",
        _mefb_rule(_vifb.qabf, uint8_sources=False),
        True,
        "edge-information preservation (Xydeas–Petrović), 0–1",
        min_size=2,
    ),
    MetricSpec("SD", _mefb_rule(_vifb.std, False), True, "standard deviation of the fused image (grey levels)"),
    MetricSpec(
        "SF",
        _mefb_rule(_spatial_frequency_channel, False),
        True,
        "spatial frequency, sqrt(RF+CF), denominators M·N (grey levels per pixel)",
    ),
    MetricSpec("Qcb", _mefb_rule(_qcb, uint8_sources=False), True, "Chen–Blum perceptual quality, 0–1", min_size=2),
    MetricSpec(
        "Qcv",
        _mefb_rule(_vifb.qcv, uint8_sources=False),
        False,
        "Chen–Varshney regional distortion, saliency-weighted mean squared CSF-filtered error (grey levels²)",
        min_size=2,
    ),
)

#: Our metric name → MEFB's (``metrics<Name>.m``; the keys of MEFB's ``matlab_metrics.json``).
MEFB_NAMES: dict[str, str] = {
    "CE": "Cross_entropy",
    "EN": "Entropy",
    "FMI": "FMI",
    "NMI": "NMI",
    "PSNR": "Psnr",
    "Qncie": "Qncie",
    "TE": "TE",
    "AG": "Avg_gradient",
    "EI": "Edge_intensity",
    "Qabf": "Qabf",
    "Qp": "Qp",
    "SD": "SD",
    "SF": "Spatial_frequency",
    "Qc": "Qc",
    "Qw": "Qw",
    "Qy": "Qy",
    "MEF-SSIM": "MEF_SSIM",
    "Qcb": "Qcb",
    "Qcv": "Qcv",
    "VIF": "VIF",
}


def _all_specs() -> tuple[MetricSpec, ...]:
    """The 20 metrics in MEFB's order (``util/configMetrics.m``)."""
    by_name = {s.name: s for s in (*SHARED_SPECS, *mefb_info.SPECS, *mefb_phase.SPECS, *mefb_structural.SPECS)}
    return tuple(by_name[name] for name in MEFB_NAMES)


MEFB_SPECS: tuple[MetricSpec, ...] = _all_specs()


def prepare(f: Tensor, a: Tensor, b: Tensor, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """The images as ``imread`` gives them (alpha dropped), channels contiguous: every metric does
    its own colour handling (:func:`metaloss.metrics.profiles._mefb_rule`)."""
    return _drop_alpha(f).contiguous(), _drop_alpha(a).contiguous(), _drop_alpha(b).contiguous()
