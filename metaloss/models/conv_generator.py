"""A small convolutional loss generator (softmax intensity weights): cheap, for tests and quick runs."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn


class ConvLossGenerator(nn.Module):
    """(ir, vi) -> 3 conv layers -> 2 logits -> softmax over the sources: maps["intensity"] = (w_a, w_b)."""

    def __init__(self, width: Annotated[int, Field(ge=1)] = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2, 3, padding=1),
        )

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        return {"intensity": torch.softmax(self.body(torch.cat([ir, vi], dim=1)), dim=1)}


class FixedLossGenerator(nn.Module):
    """Hand-made weights, the baselines of a learned loss.

    ``intensity_rule = "constant"``: w_a = ``ir_weight``, w_b = 1 - ``ir_weight`` everywhere.
    ``intensity_rule = "max"``: w_a = 1 where I_a >= I_b, else 0 (w_b = 1 - w_a), so the intensity term
    pulls I_f to max(I_a, I_b) (with ``loss.intensity_norm = "l1"``: SeAFusion's and PIAFusion's
    mean|I_f - max(I_a, I_b)|).  With ``ir_gradient_weight`` set, also constant gradient weights
    v_a = ``ir_gradient_weight``, v_b = 1 - v_a (ReFusion's per-source gradient term) instead of the max rule.

    It has no parameters, so a run with it has no meta phase (set ``meta.meta_steps = 0``)."""

    def __init__(
        self,
        ir_weight: float = 0.5,
        ir_gradient_weight: float | None = None,
        intensity_rule: Literal["constant", "max"] = "constant",
    ):
        super().__init__()
        for key, value in (("ir_weight", ir_weight), ("ir_gradient_weight", ir_gradient_weight)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        if intensity_rule not in ("constant", "max"):
            raise ValueError(f"intensity_rule must be 'constant' or 'max', got {intensity_rule!r}")
        self.ir_weight = ir_weight
        self.ir_gradient_weight = ir_gradient_weight
        self.intensity_rule = intensity_rule

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        w = (ir >= vi).to(ir.dtype) if self.intensity_rule == "max" else torch.full_like(ir, self.ir_weight)
        maps = {"intensity": torch.cat([w, 1 - w], dim=1)}
        if self.ir_gradient_weight is not None:
            v = torch.full_like(ir, self.ir_gradient_weight)
            maps["gradient"] = torch.cat([v, 1 - v], dim=1)
        return maps
