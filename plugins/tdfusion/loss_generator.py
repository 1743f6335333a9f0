"""TDFusion's loss generator G_φ(I_a, I_b) → per-pixel weights of the intensity term.

Structure (the reference's loss proposal network, default sizes)::

    ir ─ conv3×3 1→16 ─ 2 × RestormerBlock(16, 8 heads) ─┐
                                                         ├─ concat → 32 channels
    vi ─ conv3×3 1→16 ─ 2 × RestormerBlock(16, 8 heads) ─┘
       ─ 2 × RestormerBlock(32, 8 heads) ─ conv3×3 32→16 ─ PReLU ─ conv3×3 16→2 ─ normalisation

``TDFusionLossGenerator`` normalises with a softmax over the two channels (w_a + w_b = 1, as in the
paper); ``SigmoidLossGenerator`` with an independent sigmoid per source.
"""

# No ``from __future__ import annotations``: the registry builds a pydantic config from the
# constructor's signature (see metaloss.registry.config_model).

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from metaloss.nn.restormer import DualStreamRestormer, LayerNormKind, convert_reference_keys

__all__ = ["SigmoidLossGenerator", "TDFusionLossGenerator", "convert_reference_state_dict"]

#: The reference's module names (``nets/ReFusion.py``, class ``LPN``) → ours.
_REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^\.patch_embed(\d)\.", r".backbone.encoder\1.stem."),
    (r"^\.encoder([12])\.(\d+)\.", r".backbone.encoder\1.blocks.\2."),
    (r"^\.encoder3\.", ".backbone.decoder."),
    (r"^\.out1\.", ".backbone.head_in."),
    (r"^\.out2\.", ".backbone.act."),
    (r"^\.out3\.", ".backbone.head_out."),
)


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the reference loss proposal network (``LPN``) renamed for these generators."""
    return convert_reference_keys(state_dict, _REFERENCE_RENAMES)


class _TwoSourceWeightGenerator(nn.Module):
    """Shared part: the two-stream Restormer backbone producing 2 logit maps; subclasses normalise."""

    def __init__(
        self,
        dim: Annotated[int, Field(ge=1)] = 16,
        heads: Annotated[int, Field(ge=1)] = 8,
        blocks_per_modality: Annotated[int, Field(ge=0)] = 2,
        fused_blocks: Annotated[int, Field(ge=0)] = 2,
        ffn_expansion: Annotated[float, Field(gt=0)] = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
    ) -> None:
        super().__init__()
        self.backbone = DualStreamRestormer(
            in_channels=1,
            out_channels=2,
            dim=dim,
            heads=heads,
            blocks_per_source=blocks_per_modality,
            fused_blocks=fused_blocks,
            ffn_expansion=ffn_expansion,
            bias=bias,
            layernorm=layernorm,
            merge="concat",
            activation="prelu",
        )

    def normalise(self, logits: Tensor) -> Tensor:
        """Map the ``[B, 2, H, W]`` logits to weights."""
        raise NotImplementedError

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        return {"intensity": self.normalise(self.backbone(ir, vi))}


class TDFusionLossGenerator(_TwoSourceWeightGenerator):
    """TDFusion's loss generator: ``forward(ir, vi) -> {"intensity": w}``, w ``[B, 2, H, W]``.

    Channel 0 is the infrared weight w_a, channel 1 the visible weight w_b; softmax over the two
    channels, so ``w_a + w_b = 1`` at every pixel.  44,529 trainable parameters at the default sizes
    (the same constructor arguments as ``RestormerFusion``).
    """

    def normalise(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=1)


class SigmoidLossGenerator(_TwoSourceWeightGenerator):
    """The same backbone with an independent sigmoid per source: ``w_a = σ(l_a)``, ``w_b = σ(l_b)``.

    ``w_a + w_b`` is *not* constrained (anywhere in ``(0, 2)``): both sources can be emphasised (or
    both neglected) at the same pixel, which a softmax pair cannot express, the limitation the
    TDFusion paper names.  Output as ``TDFusionLossGenerator`` (channel 0 infrared, 1 visible);
    44,529 trainable parameters at the default sizes.
    """

    def normalise(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()
