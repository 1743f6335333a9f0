"""The reference fusion network of TDFusion / ReFusion, F_θ(I_a, I_b) → I_f (59,856 parameters).

Structure (all at full resolution, default sizes)::

    ir ─ conv3×3 1→16 ─ 2 × RestormerBlock(16, 8 heads) ─┐
                                                         ├─ CrossAttentionFusion(16) → 32 channels
    vi ─ conv3×3 1→16 ─ 2 × RestormerBlock(16, 8 heads) ─┘
       ─ 2 × RestormerBlock(32, 8 heads) ─ conv3×3 32→16 ─ LeakyReLU(0.01) ─ conv3×3 16→1 ─ sigmoid

With ``base="mean"`` the network predicts a correction to the average of its inputs rather than the
fused image outright: ``I_f = sigmoid(net(I_a, I_b) + logit((I_a + I_b) / 2))``, the last convolution
starting at zero, so training starts from the average with every fine detail of both sources passed
through.  A network that has to rebuild the detail from nothing blurs it at a CPU budget, and VIF
punishes blur hard (docs/refusion.md).

Restormer blocks: MDTA channel attention + GDFN (expansion 2), with-bias channel LayerNorm, no bias
in any convolution.  See ``metaloss.nn.restormer`` for the blocks and their formulas.
"""

# No ``from __future__ import annotations``: the registry builds a pydantic config from the
# constructor's signature, and real (not string) annotations keep that independent of namespaces.

from collections.abc import Mapping
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from metaloss.nn.restormer import DualStreamRestormer, LayerNormKind, convert_reference_keys

__all__ = ["RestormerFusion", "convert_reference_state_dict"]

#: The reference's module names (``nets/ReFusion.py``, class ``ReFusion``) → ours.
_REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^\.project_in_(\d)\.", r".backbone.encoder\1.stem."),
    (r"^\.encoder([12])\.(\d+)\.", r".backbone.encoder\1.blocks.\2."),
    (r"^\.FM\.", ".backbone.merge."),
    (r"^\.decoder\.", ".backbone.decoder."),
    (r"^\.project_out_0\.", ".backbone.head_in."),
    (r"^\.project_out_1\.", ".backbone.head_out."),
)


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the reference fusion network (TDFusion/ReFusion code) renamed for ``RestormerFusion``.

    Use with ``RestormerFusion().load_state_dict(convert_reference_state_dict(ckpt))`` (default sizes).
    """
    return convert_reference_keys(state_dict, _REFERENCE_RENAMES)


class RestormerFusion(nn.Module):
    """Restormer fusion network: ``forward(ir, vi) -> fused``, all ``[B, 1, H, W]`` in ``[0, 1]``.

    Any H, W (odd sizes included); double backward through ``torch.func.functional_call`` works.
    59,856 trainable parameters at the default sizes.

    Args:
        dim: channels of each per-modality stream (the merged stream has ``2·dim``).
        heads: attention heads of every block; must divide ``dim`` and ``2·dim``.
        blocks_per_modality: Restormer blocks after each modality's 3×3 stem.
        fused_blocks: Restormer blocks at ``2·dim`` after the cross-attention fusion block.
        ffn_expansion: GDFN hidden-width factor.
        bias: bias terms in the convolutions (the reference has none).
        layernorm: ``"with_bias"`` (the reference) or ``"bias_free"`` channel LayerNorm.
        base: ``"none"``: predict the fused image (the reference); ``"mean"``: predict a correction in
            logit space to ``(I_a + I_b) / 2``, from zero at initialisation.
    """

    #: inputs are clamped to [eps, 1 - eps] before the logit of their mean
    eps = 1e-3

    def __init__(
        self,
        dim: Annotated[int, Field(ge=1)] = 16,
        heads: Annotated[int, Field(ge=1)] = 8,
        blocks_per_modality: Annotated[int, Field(ge=0)] = 2,
        fused_blocks: Annotated[int, Field(ge=0)] = 2,
        ffn_expansion: Annotated[float, Field(gt=0)] = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
        base: Literal["none", "mean"] = "none",
    ) -> None:
        super().__init__()
        self.backbone = DualStreamRestormer(
            in_channels=1,
            out_channels=1,
            dim=dim,
            heads=heads,
            blocks_per_source=blocks_per_modality,
            fused_blocks=fused_blocks,
            ffn_expansion=ffn_expansion,
            bias=bias,
            layernorm=layernorm,
            merge="cross_attention",
            activation="leaky_relu",
        )
        self.base = base
        if base == "mean":  # a correction to the average, none at first
            self.backbone.zero_output()

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        out = self.backbone(ir, vi)
        if self.base == "mean":
            out = out + torch.logit(((ir + vi) / 2).clamp(self.eps, 1 - self.eps))
        return out.sigmoid()
