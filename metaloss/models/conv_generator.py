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
