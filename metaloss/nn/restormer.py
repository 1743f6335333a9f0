"""Restormer building blocks (Zamir et al., CVPR 2022), at full resolution, as TDFusion and ReFusion use them.

All modules take and return ``[B, C, H, W]`` tensors, work at any ``H, W`` (every convolution has
stride 1 and "same" padding) and use only operations with double-backward support (plain matmuls,
no ``scaled_dot_product_attention``, no in-place ops), so a meta-learning inner update through
``torch.func.functional_call`` can differentiate through them twice.

Layout:

* ``WithBiasLayerNorm`` / ``BiasFreeLayerNorm``: LayerNorm over the channels of every pixel.
* ``MDTA``: multi-Dconv-head transposed attention (attention between channels, not pixels).
* ``GDFN``: gated-Dconv feed-forward network.
* ``RestormerBlock``: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``.
* ``CrossAttentionFusion``: the two-stream fusion block of the reference fusion network (its ``AFM``).
* ``RestormerEncoder``: a 3×3 convolution stem followed by Restormer blocks.
* ``convert_reference_keys``: renames a reference checkpoint's keys to this module layout.
* ``DualStreamRestormer``: two encoders, a merge (concatenation or cross attention), Restormer
  blocks at twice the width and a small convolutional head.  The fusion network and the loss
  generators of the TDFusion and ReFusion plugins are all built on it.

What deployment (``metaloss.deploy``: exact tiling, the fast CPU engine) builds on, so that it composes
these modules instead of patching them:

* the attention blocks (``MDTA``, ``RestormerBlock``, ``CrossAttentionFusion``) take the attention
  function as an argument of ``forward`` (default :func:`channel_attention`) and give the queries and
  keys of their attention calls, in call order, by ``attention_calls``;
* ``DualStreamRestormer.run_stages(a, b, stages)`` is its forward as a sequence of stages (stem,
  Restormer block, merge, head), each computed by a :class:`Stages` object (the base class: the
  modules' own forward, which is what ``forward`` uses);
* :func:`backbones_run_by` runs, for the calls made inside it in this thread, every
  ``DualStreamRestormer`` by a given function (e.g. ``run_stages`` with other stages), so that a
  network built on backbones (a sigmoid, a softmax, Sobel inputs around them) runs as it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerNormKind = Literal["with_bias", "bias_free"]
MergeKind = Literal["concat", "cross_attention"]
ActivationKind = Literal["prelu", "leaky_relu"]

__all__ = [
    "GDFN",
    "MDTA",
    "ActivationKind",
    "AttentionCall",
    "AttentionFn",
    "BackboneRun",
    "BiasFreeLayerNorm",
    "CrossAttentionFusion",
    "DualStreamRestormer",
    "LayerNormKind",
    "MergeKind",
    "RestormerBlock",
    "RestormerEncoder",
    "Stages",
    "WithBiasLayerNorm",
    "backbones_run_by",
    "channel_attention",
    "channel_layer_norm",
    "conv3x3",
    "convert_reference_keys",
]


def conv3x3(in_channels: int, out_channels: int, bias: bool = False, groups: int = 1) -> nn.Conv2d:
    """A 3×3 convolution, stride 1, zero padding 1 (output size = input size)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias, groups=groups)


def conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """A pointwise (1×1) convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def dwconv3x3(channels: int, bias: bool = False) -> nn.Conv2d:
    """A depthwise 3×3 convolution (one filter per channel)."""
    return conv3x3(channels, channels, bias=bias, groups=channels)


def _check_heads(dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
        raise ValueError(f"the number of heads ({heads}) must divide the channel count ({dim})")


# --------------------------------------------------------------------------------------------------
# LayerNorm over channels
# --------------------------------------------------------------------------------------------------


def _mean_square(d: Tensor) -> Tensor:
    """``mean(d², over channels)``: the biased variance of ``x`` when ``d = x − mean(x)``.

    Written out rather than ``Tensor.var(dim=1)``, whose strided reduction over the channel axis of
    an NCHW map is 3–4× slower on the CPU than these two passes (same value, same autograd).
    """
    return (d * d).mean(dim=1, keepdim=True)


class WithBiasLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a bias (the variant the reference uses).

    ``y = (x − μ) / sqrt(σ² + ε) · γ + β`` with μ, σ² the mean and biased variance over C.
    Equal to ``F.layer_norm`` on ``x`` permuted to ``[B, H, W, C]``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        d = x - x.mean(dim=1, keepdim=True)
        y = d * torch.rsqrt(_mean_square(d) + self.eps)
        return torch.addcmul(self.bias[:, None, None], y, self.weight[:, None, None])


class BiasFreeLayerNorm(nn.Module):
    """Restormer's bias-free LayerNorm over channels: ``y = x / sqrt(σ² + ε) · γ``.

    The mean is not subtracted from ``x`` (only used in σ²) and there is no β.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        var = _mean_square(x - x.mean(dim=1, keepdim=True))
        return x * (torch.rsqrt(var + self.eps) * self.weight[:, None, None])


def channel_layer_norm(dim: int, kind: LayerNormKind = "with_bias") -> nn.Module:
    """The channel LayerNorm of the given kind (``"with_bias"``, as in the reference, or ``"bias_free"``)."""
    if kind == "with_bias":
        return WithBiasLayerNorm(dim)
    if kind == "bias_free":
        return BiasFreeLayerNorm(dim)
    raise ValueError(f"unknown LayerNorm kind {kind!r}; expected 'with_bias' or 'bias_free'")


# --------------------------------------------------------------------------------------------------
# Attention and feed-forward
# --------------------------------------------------------------------------------------------------


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """Transposed (channel) attention of ``[B, C, H, W]`` maps, split into ``heads`` groups of channels.

    Per head, with ``Q, K, V ∈ R^{c×HW}`` (c = C / heads) and rows L2-normalised for Q and K:
    ``out = softmax(τ · Q̂ K̂ᵀ) V`` (softmax over the last axis; the attention map is ``c × c``).
    ``temperature`` has shape ``[heads, 1, 1]``.  Plain matmuls, so second-order gradients work.
    """
    b, c, h, w = q.shape

    def split(t: Tensor) -> Tensor:
        return t.reshape(b, heads, c // heads, h * w)

    qh = F.normalize(split(q), dim=-1)
    kh = F.normalize(split(k), dim=-1)
    attn = torch.softmax((qh @ kh.transpose(-2, -1)) * temperature, dim=-1)
    return (attn @ split(v)).reshape(b, c, h, w)


class AttentionFn(Protocol):
    """The signature of :func:`channel_attention`: ``(q, k, v, temperature, heads) -> out``."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor: ...


class AttentionCall(NamedTuple):
    """The queries, keys, temperature and head count of one attention call of a block (no values:
    what a global attention map is computed from)."""

    q: Tensor
    k: Tensor
    temperature: Tensor
    heads: int


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention.

    ``Q, K, V = split(DW3×3(PW(x)))``, ``y = PW_out(attention(Q, K, V, τ))``, with a learnable
    temperature τ per head (initialised to 1) and ``attention`` :func:`channel_attention` unless
    another is given.
    """

    def __init__(self, dim: int, heads: int, bias: bool = False) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = conv1x1(dim, dim * 3, bias=bias)
        self.qkv_dwconv = dwconv3x3(dim * 3, bias=bias)
        self.project_out = conv1x1(dim, dim, bias=bias)

    def _qkv(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)

    def attention_calls(self, x: Tensor) -> list[AttentionCall]:
        """The one attention call's queries and keys for input ``x``."""
        q, k, _ = self._qkv(x)
        return [AttentionCall(q, k, self.temperature, self.heads)]

    def forward(self, x: Tensor, attention: AttentionFn = channel_attention) -> Tensor:
        q, k, v = self._qkv(x)
        return self.project_out(attention(q, k, v, self.temperature, self.heads))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network.

    ``X1, X2 = split(DW3×3(PW(x)))`` (each ``hidden = int(dim · expansion)`` channels),
    ``y = PW_out(GELU(X1) ⊙ X2)``.
    """

    def __init__(self, dim: int, expansion: float = 2.0, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = conv1x1(dim, hidden * 2, bias=bias)
        self.dwconv = dwconv3x3(hidden * 2, bias=bias)
        self.project_out = conv1x1(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """One Restormer transformer block: ``x ← x + MDTA(LN₁(x))``, then ``x ← x + GDFN(LN₂(x))``
    (``attention``: MDTA's)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_expansion: float = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
    ) -> None:
        super().__init__()
        self.norm1 = channel_layer_norm(dim, layernorm)
        self.attn = MDTA(dim, heads, bias=bias)
        self.norm2 = channel_layer_norm(dim, layernorm)
        self.ffn = GDFN(dim, ffn_expansion, bias=bias)

    def attention_calls(self, x: Tensor) -> list[AttentionCall]:
        """MDTA's attention call for block input ``x``."""
        return self.attn.attention_calls(self.norm1(x))

    def forward(self, x: Tensor, attention: AttentionFn = channel_attention) -> Tensor:
        x = x + self.attn(self.norm1(x), attention)
        return x + self.ffn(self.norm2(x))


class CrossAttentionFusion(nn.Module):
    """The reference fusion network's two-stream fusion block (``AFM``); ``dim``-channel inputs, ``2·dim`` out.

    With ``Q_k, K_k, V_k = split(DW(PW(x_k)))`` for the two streams k = 1, 2, each stream attends
    with the *other* stream's queries::

        x₁' = x₁ + P₁(channel_attention(Q₂, K₁, V₁, τ₁))
        x₂' = x₂ + P₂(channel_attention(Q₁, K₂, V₂, τ₂))
        z   = [x₁'; x₂']                                        (2·dim channels)
        G₁, G₂ = split(DW(PW(z)))                               (e·dim channels each)
        y   = z + O₁(GELU(G₁) ⊙ DW(PW(x₁'))) + O₂(GELU(G₂) ⊙ DW(PW(x₂')))

    i.e. a gated feed-forward step per stream whose gate is computed from both streams.  ``e`` is
    ``expansion`` (4 in the reference).  No normalisation inside the block, as in the reference.
    ``forward``'s ``attention`` replaces ``channel_attention`` in both calls.
    """

    def __init__(self, dim: int, heads: int, bias: bool = False, expansion: float = 4.0) -> None:
        super().__init__()
        _check_heads(dim, heads)
        hidden = int(dim * expansion)
        self.heads = heads
        self.temperature1 = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv1 = conv1x1(dim, dim * 3, bias=bias)
        self.qkv1_dwconv = dwconv3x3(dim * 3, bias=bias)
        self.qkv2 = conv1x1(dim, dim * 3, bias=bias)
        self.qkv2_dwconv = dwconv3x3(dim * 3, bias=bias)
        self.project_mid1 = conv1x1(dim, dim, bias=bias)
        self.project_mid2 = conv1x1(dim, dim, bias=bias)
        self.gate_in = conv1x1(dim * 2, hidden * 2, bias=bias)
        self.gate_dwconv = dwconv3x3(hidden * 2, bias=bias)
        self.value1_in = conv1x1(dim, hidden, bias=bias)
        self.value1_dwconv = dwconv3x3(hidden, bias=bias)
        self.value2_in = conv1x1(dim, hidden, bias=bias)
        self.value2_dwconv = dwconv3x3(hidden, bias=bias)
        self.project_out1 = conv1x1(hidden, dim * 2, bias=bias)
        self.project_out2 = conv1x1(hidden, dim * 2, bias=bias)

    def _qkv(self, x1: Tensor, x2: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        return self.qkv1_dwconv(self.qkv1(x1)).chunk(3, dim=1), self.qkv2_dwconv(self.qkv2(x2)).chunk(3, dim=1)

    def attention_calls(self, x1: Tensor, x2: Tensor) -> list[AttentionCall]:
        """The two attention calls' queries and keys, in the order ``forward`` makes them."""
        (q1, k1, _), (q2, k2, _) = self._qkv(x1, x2)
        return [
            AttentionCall(q2, k1, self.temperature1, self.heads),
            AttentionCall(q1, k2, self.temperature2, self.heads),
        ]

    def forward(self, x1: Tensor, x2: Tensor, attention: AttentionFn = channel_attention) -> Tensor:
        (q1, k1, v1), (q2, k2, v2) = self._qkv(x1, x2)
        x1 = x1 + self.project_mid1(attention(q2, k1, v1, self.temperature1, self.heads))
        x2 = x2 + self.project_mid2(attention(q1, k2, v2, self.temperature2, self.heads))
        z = torch.cat([x1, x2], dim=1)
        g1, g2 = self.gate_dwconv(self.gate_in(z)).chunk(2, dim=1)
        y1 = F.gelu(g1) * self.value1_dwconv(self.value1_in(x1))
        y2 = F.gelu(g2) * self.value2_dwconv(self.value2_in(x2))
        return z + self.project_out1(y1) + self.project_out2(y2)


# --------------------------------------------------------------------------------------------------
# Encoders and the two-stream network
# --------------------------------------------------------------------------------------------------


class RestormerEncoder(nn.Module):
    """``in_channels → dim`` 3×3 convolution followed by ``num_blocks`` Restormer blocks at ``dim``."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        heads: int,
        num_blocks: int,
        ffn_expansion: float = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
    ) -> None:
        super().__init__()
        self.stem = conv3x3(in_channels, dim, bias=bias)
        self.blocks = nn.Sequential(
            *(RestormerBlock(dim, heads, ffn_expansion, bias, layernorm) for _ in range(num_blocks))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))


class DualStreamRestormer(nn.Module):
    """Two-stream Restormer: the shared skeleton of the reference fusion network and loss generators.

    ``e_a = Enc_a(a)``, ``e_b = Enc_b(b)`` (3×3 conv ``in_channels → dim`` + ``blocks_per_source``
    Restormer blocks each), ``z = Merge(e_a, e_b)`` (``"concat"``: ``[e_a; e_b]``, as the loss
    proposal network; ``"cross_attention"``: ``CrossAttentionFusion``, as the fusion network), then
    ``fused_blocks`` Restormer blocks at ``2·dim``, and a head
    ``conv3×3(2·dim → dim) → activation → conv3×3(dim → out_channels)``.

    Returns unnormalised ``[B, out_channels, H, W]`` maps; the caller applies sigmoid / softmax.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 16,
        heads: int = 8,
        blocks_per_source: int = 2,
        fused_blocks: int = 2,
        ffn_expansion: float = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
        merge: MergeKind = "concat",
        activation: ActivationKind = "prelu",
    ) -> None:
        super().__init__()
        _check_heads(dim, heads)
        _check_heads(2 * dim, heads)
        self.encoder1 = RestormerEncoder(in_channels, dim, heads, blocks_per_source, ffn_expansion, bias, layernorm)
        self.encoder2 = RestormerEncoder(in_channels, dim, heads, blocks_per_source, ffn_expansion, bias, layernorm)
        self.merge: CrossAttentionFusion | None
        if merge == "cross_attention":
            self.merge = CrossAttentionFusion(dim, heads, bias=bias)
        elif merge == "concat":
            self.merge = None
        else:
            raise ValueError(f"unknown merge {merge!r}; expected 'concat' or 'cross_attention'")
        self.decoder = nn.Sequential(
            *(RestormerBlock(2 * dim, heads, ffn_expansion, bias, layernorm) for _ in range(fused_blocks))
        )
        self.head_in = conv3x3(2 * dim, dim, bias=bias)
        self.act: nn.Module
        if activation == "prelu":
            self.act = nn.PReLU(num_parameters=1, init=0.25)
        elif activation == "leaky_relu":
            self.act = nn.LeakyReLU(negative_slope=0.01)
        else:
            raise ValueError(f"unknown activation {activation!r}; expected 'prelu' or 'leaky_relu'")
        self.head_out = conv3x3(dim, out_channels, bias=bias)

    def zero_output(self) -> None:
        """Set the last convolution to zero, so the output is 0 everywhere until training moves it:
        for a network that learns a correction to something (a prior, a base image), none at first."""
        nn.init.zeros_(self.head_out.weight)
        if self.head_out.bias is not None:
            nn.init.zeros_(self.head_out.bias)

    def head(self, z: Tensor) -> Tensor:
        """``conv3×3(dim → out_channels) ∘ activation ∘ conv3×3(2·dim → dim)``: convolutions and a
        pointwise activation only (receptive radius 2)."""
        return self.head_out(self.act(self.head_in(z)))

    def head_layers(self) -> tuple[nn.Module, ...]:
        """The modules :meth:`head` applies, in order."""
        return self.head_in, self.act, self.head_out

    def run_stages(self, a: Tensor, b: Tensor, stages: Stages) -> Tensor:
        """The forward pass, each stage computed by ``stages``: per source the stem and its Restormer
        blocks, the merge, the fused blocks, the head.  With :class:`Stages` itself this is ``forward``."""
        streams = []
        for encoder, x in ((self.encoder1, a), (self.encoder2, b)):
            x = stages.stem(encoder.stem, x)
            for block in encoder.blocks:
                x = stages.block(cast(RestormerBlock, block), x)
            streams.append(x)
        z = stages.merge(self.merge, *streams)
        del streams
        for block in self.decoder:
            z = stages.block(cast(RestormerBlock, block), z)
        return stages.head(self, z)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        run = _BACKBONE_RUN.get()
        return self.run_stages(a, b, EAGER) if run is None else run(self, a, b)


class Stages:
    """How :meth:`DualStreamRestormer.run_stages` computes each stage: this class by the modules' own
    forward (the network's ``forward``).  Deployment subclasses it (chunks, row bands, another layout
    of the maps between stages)."""

    def stem(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        return conv(x)

    def block(self, block: RestormerBlock, x: Tensor) -> Tensor:
        return block(x)

    def merge(self, merge: CrossAttentionFusion | None, x1: Tensor, x2: Tensor) -> Tensor:
        """``merge(x1, x2)``; ``None`` (the concat merge): the channels of both, ``[x1; x2]``."""
        return torch.cat([x1, x2], dim=1) if merge is None else merge(x1, x2)

    def head(self, net: DualStreamRestormer, z: Tensor) -> Tensor:
        return net.head(z)


#: The stages of ``DualStreamRestormer.forward``.
EAGER = Stages()

#: ``run(backbone, a, b)``: computes a ``DualStreamRestormer``'s output in its place (see ``backbones_run_by``).
BackboneRun = Callable[[DualStreamRestormer, Tensor, Tensor], Tensor]
_BACKBONE_RUN: contextvars.ContextVar[BackboneRun | None] = contextvars.ContextVar("backbone_run", default=None)


@contextlib.contextmanager
def backbones_run_by(run: BackboneRun) -> Iterator[None]:
    """Inside the block, every ``DualStreamRestormer`` called in this thread (or asyncio context)
    returns ``run(backbone, a, b)`` instead of computing its own stages; the rest of a network built
    on backbones runs as it is.  ``run`` computes the backbone by :meth:`~DualStreamRestormer.run_stages`
    (calling the backbone itself would come back to ``run``).  Other threads are not affected."""
    token = _BACKBONE_RUN.set(run)
    try:
        yield
    finally:
        _BACKBONE_RUN.reset(token)


# --------------------------------------------------------------------------------------------------
# Reference checkpoints
# --------------------------------------------------------------------------------------------------

#: Renames shared by every reference network: block internals (after the wrappers are dropped).
_REFERENCE_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.project_E_d\.", ".gate_dwconv."),
    (r"\.project_E\.", ".gate_in."),
    (r"\.project_E(\d)_d\.", r".value\1_dwconv."),
    (r"\.project_E(\d)\.", r".value\1_in."),
)


def convert_reference_keys(state_dict: Mapping[str, Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Rename the keys of a reference (TDFusion / ReFusion code) checkpoint to this module layout.

    Drops a ``module.`` prefix (DataParallel), the ``.conv`` of the reference's ``MetaConv2d``
    wrapper and the ``.body`` of its LayerNorm wrapper (the wrapper registers each convolution's
    weight twice, as ``x.weight`` and ``x.conv.weight``: the duplicates collapse to one key), then
    applies the model's ``renames`` (regular expressions, in order, on ``"." + key``) and the
    cross-attention block's internal renames.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        k = "." + key.removeprefix("module.")
        k = k.replace(".conv.", ".").replace(".body.", ".")
        for pattern, repl in (*renames, *_REFERENCE_BLOCK_RENAMES):
            k = re.sub(pattern, repl, k)
        out[k[1:]] = value
    return out
