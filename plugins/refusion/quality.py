"""A fixed meta-objective: the no-reference quality of the fused image against its two sources.

    L_q = -(VIF + Qabf + SSIM)(I_f; I_a, I_b)

with differentiable forms of the three measures the fusion literature reports (CDDFuse's
definitions, ``metaloss.metrics.cddfuse``), on images scaled to 0-255 as they are scored:

* VIF = VIFp(I_a, I_f) + VIFp(I_b, I_f): Sheikh & Bovik's pixel-domain VIF, 4 scales, Gaussian
  windows N = 17, 9, 5, 3 (sigma = N/5), sigma_n^2 = 2, with the reference's clipping written as
  g = max(s_12, 0) / (s_1^2 + eps), s_v^2 = max(s_2^2 - g s_12, eps);
* Qabf: Xydeas & Petrovic's edge preservation, Sobel strength g = |grad| and line angle
  atan(g_y / g_x), Q^{kF} = Qg Qa with the reference's sigmoids, weighted by each source's strength;
* SSIM = SSIM(I_f, I_a) + SSIM(I_f, I_b), ``ssim_form = "scored"``: as CDDFuse scores it, scikit-image's
  7x7 uniform window, sample covariance, constants of data range 2 on 0-255 values (1/16,000 of the
  usual: a change of a grey level on a flat region costs as much as losing an edge), or
  ``ssim_form = "gaussian"``: ``metaloss.losses.ssim_map`` (Wang et al.'s 11x11 Gaussian window, the
  usual constants for [0, 1]).  With the Gaussian form a learned target trades the scored SSIM away
  (docs/refusion.md).

Used as the objective of a ReFusion-style meta-step (``[objective] name = "quality"``) the loss
proposal module learns the weights W whose loss most raises the fused image's quality on held-out
crops: after one learner step, or at the loss's own optimum (``meta.horizon``).  It has no parameters: nothing is trained in the learner phase.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metaloss.losses import gaussian_window, sobel, ssim_map
from metaloss.protocols import Batch

__all__ = ["QualityObjective", "qabf", "quality_terms", "ssim_scored", "vif"]

_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def _vif_window(size: int, like: Tensor) -> Tensor:
    """VIF's 2-D Gaussian window of ``size`` samples, sigma = size / 5, as a conv2d weight."""
    g = gaussian_window(size, size / 5.0, like)
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def vif(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``[B]`` VIFp(a, F) + VIFp(b, F) of ``[B, 1, H, W]`` images on a 0-255 scale (module docstring)."""
    total = fused.new_zeros(fused.shape[0])
    for ref in (a, b):
        dist, num, den = fused, 0.0, 0.0
        for scale in range(1, 5):
            window = _vif_window(2 ** (5 - scale) + 1, fused)
            if scale > 1:
                ref, dist = F.conv2d(ref, window)[..., ::2, ::2], F.conv2d(dist, window)[..., ::2, ::2]
            mu1, mu2 = F.conv2d(ref, window), F.conv2d(dist, window)
            s1 = (F.conv2d(ref * ref, window) - mu1 * mu1).clamp_min(0)
            s2 = (F.conv2d(dist * dist, window) - mu2 * mu2).clamp_min(0)
            s12 = F.conv2d(ref * dist, window) - mu1 * mu2
            g = s12.clamp_min(0) / (s1 + _VIF_EPS)
            sv = (s2 - g * s12).clamp_min(_VIF_EPS)
            num = num + torch.log10(1 + g * g * s1 / (sv + _VIF_SIGMA_NSQ)).flatten(1).sum(1)
            den = den + torch.log10(1 + s1 / _VIF_SIGMA_NSQ).flatten(1).sum(1)
        total = total + num / den.clamp_min(_VIF_EPS)
    return total


def _strength_angle(x: Tensor) -> tuple[Tensor, Tensor]:
    gx, gy = sobel(x)
    strength = torch.sqrt(gx * gx + gy * gy + 1e-8)
    angle = torch.atan(gy / torch.where(gx.abs() < 1e-6, torch.full_like(gx, 1e-6), gx))  # a line's angle
    return strength, angle


def qabf(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``[B]`` Qabf = Σ(Q^{aF} g_a + Q^{bF} g_b) / Σ(g_a + g_b) of ``[B, 1, H, W]`` images (module docstring)."""
    gf, af = _strength_angle(fused)
    num, den = 0.0, 0.0
    for source in (a, b):
        gs, as_ = _strength_angle(source)
        ratio = torch.minimum(gs, gf) / torch.maximum(gs, gf)
        qg = _TG / (1 + torch.exp(_KG * (ratio - _DG)))
        qa = _TA / (1 + torch.exp(_KA * (1 - (as_ - af).abs() * (2 / math.pi) - _DA)))
        num = num + (qg * qa * gs).flatten(1).sum(1)
        den = den + gs.flatten(1).sum(1)
    return num / den


def ssim_scored(x: Tensor, y: Tensor) -> Tensor:
    """``[B]`` scikit-image's SSIM of ``[B, 1, H, W]`` images on 0-255 with ``data_range = 2`` (CDDFuse's
    score): 7x7 uniform window, sample covariance (49/48), mean over the windows inside the image."""
    ux, uy = F.avg_pool2d(x, 7, 1), F.avg_pool2d(y, 7, 1)
    norm = 49 / 48
    vx = (F.avg_pool2d(x * x, 7, 1) - ux * ux) * norm
    vy = (F.avg_pool2d(y * y, 7, 1) - uy * uy) * norm
    vxy = (F.avg_pool2d(x * y, 7, 1) - ux * uy) * norm
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


SsimForm = Literal["scored", "gaussian"]


def quality_terms(fused: Tensor, a: Tensor, b: Tensor, ssim_form: SsimForm = "scored") -> dict[str, Tensor]:
    """``{"VIF", "Qabf", "SSIM"}``, each ``[B]``, of ``[B, 1, H, W]`` images in [0, 1]."""
    f255, a255, b255 = fused * 255, a * 255, b * 255
    if ssim_form == "scored":
        ssim = ssim_scored(f255, a255) + ssim_scored(f255, b255)
    elif ssim_form == "gaussian":
        ssim = ssim_map(fused, a).flatten(1).mean(1) + ssim_map(fused, b).flatten(1).mean(1)
    else:
        raise ValueError(f"unknown ssim_form {ssim_form!r}; choose 'scored' or 'gaussian'")
    return {"VIF": vif(f255, a255, b255), "Qabf": qabf(f255, a255, b255), "SSIM": ssim}


class QualityObjective(nn.Module):
    """L_q = -(w_vif VIF + w_qabf Qabf + w_ssim SSIM), batch mean: the module docstring's measures of the
    fused image against the sources (``task_ir``, ``task_vi``).  No parameters; ``forward`` is the identity."""

    #: it needs no labels
    targets = ()

    def __init__(
        self,
        vif_weight: Annotated[float, Field(ge=0)] = 1.0,
        qabf_weight: Annotated[float, Field(ge=0)] = 1.0,
        ssim_weight: Annotated[float, Field(ge=0)] = 1.0,
        ssim_form: SsimForm = "scored",
    ):
        super().__init__()
        if vif_weight + qabf_weight + ssim_weight <= 0:
            raise ValueError("the quality objective needs at least one of vif_weight, qabf_weight, ssim_weight > 0")
        self.weights = {"VIF": vif_weight, "Qabf": qabf_weight, "SSIM": ssim_weight}
        self.ssim_form = ssim_form

    def forward(self, fused: Tensor) -> Tensor:
        return fused

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        terms = quality_terms(outputs, batch["task_ir"], batch["task_vi"], self.ssim_form)
        return -sum(w * terms[k].mean() for k, w in self.weights.items() if w)  # type: ignore[return-value]

    def evaluator(self) -> QualityMeans:
        return QualityMeans(self.ssim_form)


class QualityMeans:
    """Means over images of the three differentiable measures (the objective's own view of quality)."""

    def __init__(self, ssim_form: SsimForm = "scored") -> None:
        self.ssim_form = ssim_form
        self.values: dict[str, list[float]] = {"VIF": [], "Qabf": [], "SSIM": []}

    def update(self, outputs: Tensor, batch: Batch) -> None:
        with torch.no_grad():
            for k, v in quality_terms(outputs, batch["task_ir"], batch["task_vi"], self.ssim_form).items():
                self.values[k].extend(v.tolist())

    def compute(self) -> dict[str, float]:
        return {f"quality_{k}": sum(v) / len(v) for k, v in self.values.items() if v}
