"""A small convolutional loss generator (softmax intensity weights): cheap, for tests and quick runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvLossGenerator(nn.Module):
    """(ir, vi) -> 3 conv layers -> 2 logits -> softmax over the sources: maps["intensity"] = (w_a, w_b)."""

    def __init__(self, width: int = 16):
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
    """Constant weights, the hand-made baseline: w_a = ``ir_weight``, w_b = 1 - ``ir_weight`` everywhere.

    It has no parameters, so a run with it has no meta phase (set ``meta.meta_steps = 0``)."""

    def __init__(self, ir_weight: float = 0.5):
        super().__init__()
        if not 0.0 <= ir_weight <= 1.0:
            raise ValueError(f"ir_weight must be in [0, 1], got {ir_weight}")
        self.ir_weight = ir_weight

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        w = torch.full_like(ir, self.ir_weight)
        return {"intensity": torch.cat([w, 1 - w], dim=1)}
