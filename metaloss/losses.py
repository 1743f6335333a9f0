"""The learnable fusion loss, in one place.

    L_f    = L_int + alpha * L_grad
    L_int  = mean(w_a * (I_f - I_a)^2) + mean(w_b * (I_f - I_b)^2)              weight_form="linear" (paper)
           = mean((w_a * (I_f - I_a))^2) + mean((w_b * (I_f - I_b))^2)          weight_form="squared" (reference code)
           = mean(w_a * |I_f - I_a|) + mean(w_b * |I_f - I_b|)                  intensity_norm="l1"
             (with w_a = [I_a >= I_b], w_b = 1 - w_a: mean|I_f - max(I_a, I_b)|, SeAFusion's intensity loss)
    L_grad = mean|Gx(I_f) - max_x| + mean|Gy(I_f) - max_y|                        max rule (TDFusion)
             max_x = Gx(I_a) where |Gx(I_a)| >= |Gx(I_b)| else Gx(I_b)   (sign kept; ties go to I_a)
           = mean|Gx(I_f) - Gx(T)| + mean|Gy(I_f) - Gy(T)|,  T = w_a I_a + w_b I_b   gradient_target="intensity"
             (the gradient of the intensity term's own target, so the two terms ask for the same image)
           = sum_k mean(v_k * |Gx(I_f) - Gx(I_k)|) + (same for y)                 with gradient weights V (ReFusion)

    L_ssim = 1 - (mean SSIM(I_f, I_a) + mean SSIM(I_f, I_b)) / 2                  added as beta * L_ssim (ssim_weight)
             (the structural term of SwinFusion's loss: keep the local structure of both sources)

G = 3x3 Sobel with zero padding; (w_a, w_b) = maps["intensity"], (v_a, v_b) = maps["gradient"].
The squared form squares the V weights as well.  SSIM: Wang et al.'s map with an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03 for images in [0, 1], over the windows inside the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

WeightForm = Literal["linear", "squared"]
IntensityNorm = Literal["l2", "l1"]
GradientTarget = Literal["max", "intensity"]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(image: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel responses (d/dx, d/dy) of ``[B, C, H, W]`` images, zero padding, same size out."""
    channels = image.shape[1]
    kx = _SOBEL_X.to(image).expand(channels, 1, 3, 3)
    ky = _SOBEL_X.t().to(image).expand(channels, 1, 3, 3)
    return (
        F.conv2d(image, kx, padding=1, groups=channels),
        F.conv2d(image, ky, padding=1, groups=channels),
    )


def max_abs(a: Tensor, b: Tensor) -> Tensor:
    """Per element, the one of ``a``, ``b`` with the larger magnitude, sign kept (ties: ``a``)."""
    return torch.where(a.abs() >= b.abs(), a, b)


def gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    """The normalised 1-D Gaussian of ``size`` samples and width ``sigma``, in ``like``'s dtype and device."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-window SSIM of ``[B, C, H, W]`` images in [0, 1] (Wang et al. 2004), valid windows only:
    ``(2 u_x u_y + C1)(2 s_xy + C2) / ((u_x² + u_y² + C1)(s_x² + s_y² + C2))``, Gaussian-weighted local
    moments, C1 = 0.01², C2 = 0.03²; on an image smaller than the window, the window shrinks to its shorter side."""
    size = min(window, *x.shape[-2:])
    g = gaussian_window(size, sigma, x)
    channels = x.shape[1]
    kx, ky = g.view(1, 1, 1, size).expand(channels, 1, 1, size), g.view(1, 1, size, 1).expand(channels, 1, size, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)

    ux, uy = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * ux * uy + c1) * (2 * sxy + c2)) / ((ux * ux + uy * uy + c1) * (sxx + syy + c2))


@dataclass
class FusionLoss:
    """L_f (``total``) and its terms; a ``metaloss.meta.loss.Loss``-like result (``total``, ``terms``).
    ``structure`` (L_ssim) is None when the loss has no SSIM term; ``objective`` is the objective's own
    loss where the problem adds it (``metaloss.problem.FusionProblem``'s ``objective_weight``)."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor
    structure: Tensor | None = None
    objective: Tensor | None = None

    @property
    def terms(self) -> dict[str, Tensor]:
        terms = {"intensity": self.intensity.detach(), "gradient": self.gradient.detach()}
        if self.structure is not None:
            terms["structure"] = self.structure.detach()
        if self.objective is not None:
            terms["objective"] = self.objective.detach()
        return terms


def _weighted_mean(weight: Tensor, residual: Tensor, form: WeightForm) -> Tensor:
    if form == "linear":
        return (weight * residual).mean()
    if form == "squared":
        return (weight.square() * residual).mean()
    raise ValueError(f"unknown weight_form {form!r}; choose 'linear' or 'squared'")


def fusion_loss(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    maps: Mapping[str, Tensor],
    alpha: float = 1.0,
    weight_form: WeightForm = "linear",
    intensity_norm: IntensityNorm = "l2",
    gradient_target: GradientTarget = "max",
    ssim_weight: float = 0.0,
) -> FusionLoss:
    """L_f of the module docstring; ``fused``, ``ir``, ``vi``: ``[B, 1, H, W]``; maps: ``[B, 2, H, W]``;
    ``ssim_weight`` = beta, 0 for no SSIM term."""
    if intensity_norm not in ("l2", "l1"):
        raise ValueError(f"unknown intensity_norm {intensity_norm!r}; choose 'l2' or 'l1'")
    if gradient_target not in ("max", "intensity"):
        raise ValueError(f"unknown gradient_target {gradient_target!r}; choose 'max' or 'intensity'")
    if "intensity" not in maps:
        raise KeyError("loss generator output lacks 'intensity' weights")
    w, v = maps["intensity"], maps.get("gradient")
    if gradient_target == "intensity" and v is not None:
        raise ValueError("gradient_target 'intensity' takes no gradient weights V; use a generator without them")
    if w.shape[1] != 2 or w.shape[-2:] != fused.shape[-2:]:
        raise ValueError(f"intensity weights must be [B, 2, H, W] matching the image, got {tuple(w.shape)}")
    residual = (lambda d: d.square()) if intensity_norm == "l2" else (lambda d: d.abs())
    intensity = _weighted_mean(w[:, 0:1], residual(fused - ir), weight_form) + _weighted_mean(
        w[:, 1:2], residual(fused - vi), weight_form
    )
    fx, fy = sobel(fused)
    if gradient_target == "intensity":
        tx, ty = sobel(w[:, 0:1] * ir + w[:, 1:2] * vi)
        gradient = (fx - tx).abs().mean() + (fy - ty).abs().mean()
    else:
        (ax, ay), (bx, by) = sobel(ir), sobel(vi)
        if v is None:
            gradient = (fx - max_abs(ax, bx)).abs().mean() + (fy - max_abs(ay, by)).abs().mean()
        else:
            va, vb = v[:, 0:1], v[:, 1:2]
            gradient = (
                _weighted_mean(va, (fx - ax).abs(), weight_form)
                + _weighted_mean(vb, (fx - bx).abs(), weight_form)
                + _weighted_mean(va, (fy - ay).abs(), weight_form)
                + _weighted_mean(vb, (fy - by).abs(), weight_form)
            )
    total = intensity + alpha * gradient
    structure = None
    if ssim_weight:
        structure = 1 - (ssim_map(fused, ir).mean() + ssim_map(fused, vi).mean()) / 2
        total = total + ssim_weight * structure
    return FusionLoss(total=total, intensity=intensity, gradient=gradient, structure=structure)
