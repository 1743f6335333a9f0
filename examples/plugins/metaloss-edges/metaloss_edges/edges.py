"""Edge maps of the source images: the targets of the edge task and features of the loss generator.

    M(I)  = sqrt(Gx(I)^2 + Gy(I)^2)            Sobel magnitude, replicate padding (no border edges)
    E     = [M(I) > t]                           binary edge map; t = 0.5 marks about 7 % of the pixels
                                                 of each source of metaloss's synthetic scenes
    source "both": E = [max(M(I_ir), M(I_vi)) > t] (the edges of either source)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloss.losses import sobel

Source = Literal["both", "infrared", "visible"]


def sobel_magnitude(image: Tensor, eps: float = 1e-12) -> Tensor:
    """Sobel gradient magnitude of ``[B, C, H, W]`` images, same size (replicate padding, so the image
    border is not an edge)."""
    gx, gy = sobel(F.pad(image, (1, 1, 1, 1), mode="replicate"))
    return (gx.square() + gy.square() + eps).sqrt()[..., 1:-1, 1:-1]


def edge_map(ir: Tensor, vi: Tensor, source: Source = "both", threshold: float = 0.5) -> Tensor:
    """Binary edge map ``[B, 1, H, W]`` (float, 0 or 1) of the infrared, visible or both sources."""
    if source == "infrared":
        magnitude = sobel_magnitude(ir)
    elif source == "visible":
        magnitude = sobel_magnitude(vi)
    elif source == "both":
        magnitude = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vi))
    else:
        raise ValueError(f"source must be 'both', 'infrared' or 'visible', got {source!r}")
    return (magnitude > threshold).to(ir.dtype)
