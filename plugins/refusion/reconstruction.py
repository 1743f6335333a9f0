"""ReFusion's meta-objective: reconstruct both source images from the fused image.

    (I^_a, I^_b) = R_psi(I_f)
    L_r = mean((I^_a - I_a)^2) + mean((I^_b - I_b)^2)
          + alpha * (mean|S(I^_a) - S(I_a)| + mean|S(I^_b) - S(I_b)|),     S = Sobel (x and y)

ReFusion's code and exact equations were not available; this is the structure its paper describes
(docs/refusion.md).  The formula lives in ``reconstruction_loss`` alone.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from metaloss.losses import sobel
from metaloss.protocols import Batch


def reconstruction_loss(recon: Tensor, ir: Tensor, vi: Tensor, alpha: float = 1.0) -> Tensor:
    """L_r of the module docstring; ``recon`` is [B, 2, H, W] = (I^_a, I^_b), ``ir``/``vi`` [B, 1, H, W]."""
    target = torch.cat([ir, vi], dim=1)
    intensity = (recon - target).square().mean(dim=(0, 2, 3)).sum()
    (rx, ry), (tx, ty) = sobel(recon), sobel(target)
    gradient = ((rx - tx).abs().mean(dim=(0, 2, 3)) + (ry - ty).abs().mean(dim=(0, 2, 3))).sum()
    return intensity + alpha * gradient


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, width, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ReconstructionTask(nn.Module):
    """R: fused [B, 1, H, W] -> (I^_a, I^_b) [B, 2, H, W] in [0, 1]; a residual CNN (about 19 k
    parameters at the defaults), trained from scratch in the loop on ``reconstruction_loss``."""

    #: the label keys of a batch it trains on (the others are dropped)
    targets = ()

    def __init__(
        self,
        width: Annotated[int, Field(ge=1)] = 16,
        blocks: Annotated[int, Field(ge=0)] = 4,
        alpha: Annotated[float, Field(ge=0)] = 1.0,
    ):
        super().__init__()
        self.alpha = alpha
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            *[_ResidualBlock(width) for _ in range(blocks)],
            nn.Conv2d(width, 2, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return reconstruction_loss(outputs, batch["task_ir"], batch["task_vi"], self.alpha)

    def evaluator(self) -> "ReconstructionPSNR":
        return ReconstructionPSNR()


class ReconstructionPSNR:
    """PSNR (dB, peak 1) of each reconstructed source, averaged over images."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {"psnr_ir": [], "psnr_vi": []}

    def update(self, outputs: Tensor, batch: Batch) -> None:
        for channel, key, name in ((0, "task_ir", "psnr_ir"), (1, "task_vi", "psnr_vi")):
            mse = (outputs[:, channel : channel + 1] - batch[key]).square().flatten(1).mean(1)
            self.values[name].extend((10 * torch.log10(1 / mse.clamp_min(1e-12))).tolist())

    def compute(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items() if v}
