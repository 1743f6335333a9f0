"""A small convolutional loss generator (softmax intensity weights): cheap, for tests and quick runs."""

from __future__ import annotations

from typing import Annotated

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
    """Constant weights, the hand-made baseline: w_a = ``ir_weight``, w_b = 1 - ``ir_weight`` everywhere;
    with ``ir_gradient_weight`` set, also constant gradient weights v_a = ``ir_gradient_weight``,
    v_b = 1 - v_a (ReFusion's per-source gradient term) instead of the max rule.

    It has no parameters, so a run with it has no meta phase (set ``meta.meta_steps = 0``)."""

    def __init__(self, ir_weight: float = 0.5, ir_gradient_weight: float | None = None):
        super().__init__()
        for key, value in (("ir_weight", ir_weight), ("ir_gradient_weight", ir_gradient_weight)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        self.ir_weight = ir_weight
        self.ir_gradient_weight = ir_gradient_weight

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        w = torch.full_like(ir, self.ir_weight)
        maps = {"intensity": torch.cat([w, 1 - w], dim=1)}
        if self.ir_gradient_weight is not None:
            v = torch.full_like(ir, self.ir_gradient_weight)
            maps["gradient"] = torch.cat([v, 1 - v], dim=1)
        return maps
