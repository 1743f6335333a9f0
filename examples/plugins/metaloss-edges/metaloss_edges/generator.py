"""A loss generator with a different parameterisation: a per-pixel MLP on hand-made features.

    f(p)   = [I_ir, I_vi, M(I_ir), M(I_vi), I_ir - mean_k(I_ir), I_vi - mean_k(I_vi)](p)   6 features
             (M: Sobel magnitude; mean_k: k x k box mean, so the last two are local contrast)
    z(p)   = MLP(f(p))                          1x1 convolutions: the same small MLP at every pixel
    maps["intensity"] = softmax(z[0:2] / tau)   (w_ir, w_vi), sum to 1 per pixel
    maps["gradient"]  = softmax(z[2:4] / tau)   (v_ir, v_vi) with gradient_weights = true; otherwise
                                                the fusion loss uses its max rule for the gradient term

Unlike metaloss's convolutional generators it sees no spatial context beyond its features, so what it
learns is a readable rule: which source to trust at a pixel, given how bright, how textured and how
contrasted each source is there.  The last layer starts near zero: every weight starts near 1/2.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metaloss_edges.edges import sobel_magnitude

FEATURES = ("ir", "vi", "grad_ir", "grad_vi", "contrast_ir", "contrast_vi")


def pixel_features(ir: Tensor, vi: Tensor, context: int = 5) -> Tensor:
    """The ``[B, 6, H, W]`` features of ``FEATURES`` for ``[B, 1, H, W]`` sources."""
    pad = context // 2
    means = [F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), context, stride=1) for x in (ir, vi)]
    return torch.cat([ir, vi, sobel_magnitude(ir), sobel_magnitude(vi), ir - means[0], vi - means[1]], dim=1)


class PixelMLPLossGenerator(nn.Module):
    """``forward(ir, vi) -> {"intensity": [B, 2, H, W], "gradient": [B, 2, H, W]}`` from a per-pixel MLP
    (``layers`` hidden layers of ``hidden`` units, 1x1 convolutions) on 6 per-pixel features; softmax
    over the two sources with temperature ``temperature``.  About 0.4 k parameters at the defaults."""

    def __init__(
        self,
        hidden: Annotated[int, Field(ge=1)] = 16,
        layers: Annotated[int, Field(ge=1)] = 2,
        gradient_weights: bool = True,
        temperature: Annotated[float, Field(gt=0)] = 1.0,
        context: Annotated[int, Field(ge=3)] = 5,
    ):
        super().__init__()
        if context % 2 == 0:
            raise ValueError(f"loss_generator.context must be odd, got {context}")
        self.gradient_weights, self.temperature, self.context = gradient_weights, temperature, context
        body: list[nn.Module] = []
        channels = len(FEATURES)
        for _ in range(layers):
            body += [nn.Conv2d(channels, hidden, 1), nn.Tanh()]
            channels = hidden
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(channels, 4 if gradient_weights else 2, 1)
        nn.init.normal_(self.head.weight, std=0.01)  # small, not zero: a zero head would cut the body's gradient
        nn.init.zeros_(self.head.bias)
        # features are O(1) except the gradient magnitudes (up to ~5.7): a fixed input scaling, as a buffer
        # so that it follows .to(device) and dtype changes
        self.register_buffer("scale", torch.tensor([1.0, 1.0, 0.25, 0.25, 4.0, 4.0]).view(1, -1, 1, 1))

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        z = self.head(self.body(pixel_features(ir, vi, self.context) * self.scale)) / self.temperature
        maps = {"intensity": torch.softmax(z[:, 0:2], dim=1)}
        if self.gradient_weights:
            maps["gradient"] = torch.softmax(z[:, 2:4], dim=1)
        return maps
