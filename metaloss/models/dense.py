"""A small densely connected CNN fusion network: a cheap alternative to the Restormer network."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn


class DenseFusion(nn.Module):
    """Concat(ir, vi) -> 3x3 conv -> ``layers`` densely connected 3x3 convs (each sees all earlier
    features) -> 1x1 conv -> sigmoid.  About 12 k parameters at the defaults."""

    def __init__(
        self,
        width: Annotated[int, Field(ge=1)] = 16,
        growth: Annotated[int, Field(ge=1)] = 16,
        layers: Annotated[int, Field(ge=0)] = 3,
    ):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.LeakyReLU(0.2))
        self.dense = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width + i * growth, growth, 3, padding=1), nn.LeakyReLU(0.2)) for i in range(layers)
        )
        self.head = nn.Conv2d(width + layers * growth, 1, 1)

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        features = self.stem(torch.cat([ir, vi], dim=1))
        for layer in self.dense:
            features = torch.cat([features, layer(features)], dim=1)
        return torch.sigmoid(self.head(features))
