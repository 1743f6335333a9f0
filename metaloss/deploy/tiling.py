"""Tiling: running a network on an image in pieces, whole-image exact or blended.

* :func:`plan_tiling` chooses a :class:`TilePlan` for a network and an image size:

  - ``whole``: one forward pass (memory ≈ 2.8 kB per pixel for ``RestormerFusion``);
  - ``exact`` (:func:`run_exact`): every ``DualStreamRestormer`` in the network is run stage by
    stage in chunks, with the global channel-attention maps accumulated over the chunks: the
    whole-image result up to float rounding, with one chunk's working set plus ≈260 bytes per
    pixel of kept feature maps;
  - ``blend`` (:func:`fuse_tiled`): independent overlapping tiles blended with raised-cosine ramps
    after a margin (weights of neighbours sum to one); any network, but only approximate for the
    Restormer, whose channel attention is global (see ``docs/fuse.md`` for measurements);
  - ``exact+blend``: blended outer tiles, each run exactly (very large images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metaloss.nn.restormer import (
    AttentionCall,
    CrossAttentionFusion,
    DualStreamRestormer,
    RestormerBlock,
    Stages,
    backbones_run_by,
)

__all__ = [
    "AUTO_TILE",
    "AUTO_WHOLE_MAX_PIXELS",
    "DEFAULT_MARGIN",
    "DEFAULT_OVERLAP",
    "EXACT_CHUNK",
    "EXACT_MAX_PIXELS",
    "EXACT_OUTER_TILE",
    "Progress",
    "TilePlan",
    "TilingMode",
    "blend_weights",
    "fuse_tiled",
    "plan_tiling",
    "run_exact",
    "supports_exact",
    "tile_starts",
]

#: Automatic tiling (``tile=None``): images of at most ``AUTO_WHOLE_MAX_PIXELS`` pixels are fused
#: whole.  Larger ones: exact tiling in ``EXACT_CHUNK`` chunks for networks that support it (images
#: above ``EXACT_MAX_PIXELS`` in blended ``EXACT_OUTER_TILE`` tiles, each exact), else blend tiling
#: in ``AUTO_TILE`` tiles with ``DEFAULT_OVERLAP``.  See docs/fuse.md for the memory these give.
AUTO_WHOLE_MAX_PIXELS = 640 * 640
EXACT_CHUNK = 384
EXACT_MAX_PIXELS = 2048 * 2048
EXACT_OUTER_TILE = 1536
AUTO_TILE = 640
DEFAULT_OVERLAP = 192
#: Pixels next to an inner tile edge that get zero blending weight (at most a quarter of the overlap).
DEFAULT_MARGIN = 16

#: ``on_tile(i, n)``: step ``i`` of ``n`` done.
Progress = Callable[[int, int], None]


# -- tiling: the plan --------------------------------------------------------------------------------------
TilingMode = Literal["auto", "exact", "blend"]


@dataclass(frozen=True)
class TilePlan:
    """How one image is run: ``"whole"`` (one forward), ``"exact"`` (layer by layer in ``tile``-pixel
    chunks with global attention statistics: equal to ``"whole"`` up to float rounding),
    ``"blend"`` (independent overlapping ``tile`` tiles, ramp-blended), or ``"exact+blend"``
    (blended ``outer`` tiles, each run exactly in ``tile`` chunks: for very large images)."""

    mode: Literal["whole", "exact", "blend", "exact+blend"]
    tile: int = 0
    overlap: int = 0
    outer: int = 0


def supports_exact(module: nn.Module) -> bool:
    """Whether ``module`` runs on ``DualStreamRestormer`` backbones, which exact tiling can stream
    (``RestormerFusion`` and the TDFusion/ReFusion loss generators do)."""
    return any(isinstance(m, DualStreamRestormer) for m in module.modules())


def plan_tiling(
    module: nn.Module,
    height: int,
    width: int,
    *,
    tile: int | None = None,
    mode: TilingMode = "auto",
    overlap: int = DEFAULT_OVERLAP,
) -> TilePlan:
    """Choose how to run ``module`` on a ``height``×``width`` image.

    ``tile``: 0 = whole image; None = automatic (whole image up to ``AUTO_WHOLE_MAX_PIXELS``
    pixels, else ``EXACT_CHUNK`` chunks or ``AUTO_TILE`` tiles).  ``mode``: ``"exact"`` (needs
    :func:`supports_exact`), ``"blend"`` (any network), or ``"auto"``: exact when the network
    supports it (blended outer tiles of ``EXACT_OUTER_TILE`` around it for images larger than
    ``EXACT_MAX_PIXELS``), blend otherwise.
    """
    if mode not in ("auto", "exact", "blend"):
        raise ValueError(f"unknown tiling mode {mode!r}; choose 'auto', 'exact' or 'blend'")
    if tile is not None and tile < 0:
        raise ValueError(f"tile must be >= 0 (0 = whole image), got {tile}")
    exact_ok = supports_exact(module)
    if mode == "exact" and not exact_ok:
        raise ValueError(
            f"exact tiling needs a network built on metaloss.nn.restormer.DualStreamRestormer; "
            f"{type(module).__name__} is not: use blend tiling"
        )
    if tile == 0 or (tile is None and height * width <= AUTO_WHOLE_MAX_PIXELS):
        return TilePlan("whole")
    if mode == "exact" or (mode == "auto" and exact_ok):
        size = tile or EXACT_CHUNK
        if mode == "auto" and height * width > EXACT_MAX_PIXELS:
            return TilePlan("exact+blend", size, overlap, EXACT_OUTER_TILE)
        if size >= height and size >= width:
            return TilePlan("whole")
        return TilePlan("exact", size)
    size = tile or AUTO_TILE
    if size >= height and size >= width:
        return TilePlan("whole")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, tile): overlap={overlap}, tile={size}")
    return TilePlan("blend", size, overlap)


# -- blend tiling ------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` between
    neighbours: the fewest tiles that do, spread evenly (first at 0, last ending at ``length``)."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile): overlap={overlap}, tile={tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int, overlap: int, margin: int) -> Tensor:
    """Rising weights over the first ``overlap`` of ``n`` pixels: 0 for ``margin`` pixels, then a
    raised-cosine ramp to 1 over ``overlap − 2·margin`` pixels, then 1."""
    w = torch.ones(n, dtype=torch.float32)
    if overlap <= 0:
        return w
    m = min(margin, overlap // 4)
    width = overlap - 2 * m
    d = torch.arange(overlap, dtype=torch.float32)
    ramp = torch.sin(0.5 * math.pi * ((d - m + 0.5) / width).clamp(0, 1)) ** 2
    ramp[:m] = 0
    w[:overlap] = ramp  # neighbours start at different offsets, so overlap < n
    return w


def blend_weights(starts: list[int], tile: int, margin: int = DEFAULT_MARGIN) -> list[Tensor]:
    """1-D blending weights of each tile along one axis (``tile`` = the tile length on that axis).

    Inner edges ramp over the actual overlap with the neighbour; the weights of two neighbours
    sum to one across their overlap; image borders keep weight 1.
    """
    out = []
    for i, s in enumerate(starts):
        w = torch.ones(tile, dtype=torch.float32)
        if i > 0:
            w = w * _ramp(tile, starts[i - 1] + tile - s, margin)
        if i + 1 < len(starts):
            w = w * _ramp(tile, s + tile - starts[i + 1], margin).flip(0)
        out.append(w)
    return out


TileFn = Callable[[Tensor, Tensor], "Tensor | Mapping[str, Tensor]"]


def fuse_tiled(
    fn: TileFn,
    ir: Tensor,
    vi: Tensor,
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    *,
    margin: int = DEFAULT_MARGIN,
    device: torch.device | str | None = None,
    on_tile: Progress | None = None,
) -> Tensor | dict[str, Tensor]:
    """Blend tiling: run ``fn(ir_tile, vi_tile)`` on overlapping ``tile``×``tile`` tiles and blend.

    ``ir``, ``vi``: ``[B, C, H, W]``.  ``fn`` returns ``[B, K, h, w]`` maps of its input's size, or a
    dict of them (a loss generator).  Tiles are moved to ``device`` (default: the input's) and the
    blended result is float32 on the input's device.  ``tile=0`` (or an image that fits one tile)
    runs ``fn`` once on the whole image.  ``on_tile(i, n)`` is called after each tile.
    """
    h, w = ir.shape[-2:]
    device = torch.device(device) if device is not None else ir.device
    if tile <= 0 or (h <= tile and w <= tile):
        out = fn(ir.to(device), vi.to(device))
        if on_tile is not None:
            on_tile(1, 1)
        return (
            {k: v.float().to(ir.device) for k, v in out.items()}
            if isinstance(out, Mapping)
            else out.float().to(ir.device)
        )
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wys, wxs = blend_weights(ys, th, margin), blend_weights(xs, tw, margin)
    acc: dict[str, Tensor] = {}
    total = torch.zeros(h, w, dtype=torch.float32, device=ir.device)
    n, k = len(ys) * len(xs), 0
    single = True
    for y0, wy in zip(ys, wys, strict=True):
        for x0, wx in zip(xs, wxs, strict=True):
            sl = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
            out = fn(ir[sl].to(device), vi[sl].to(device))
            if isinstance(out, Mapping):
                single = False
                maps = dict(out)
            else:
                maps = {"": out}
            weight = (wy[:, None] * wx[None, :]).to(ir.device)
            for key, value in maps.items():
                if key not in acc:
                    acc[key] = torch.zeros(*value.shape[:-2], h, w, dtype=torch.float32, device=ir.device)
                acc[key][sl] += value.float().to(ir.device) * weight
            total[y0 : y0 + th, x0 : x0 + tw] += weight
            del out, maps
            k += 1
            if on_tile is not None:
                on_tile(k, n)
    for value in acc.values():
        value /= total
    return acc[""] if single else acc


# -- exact tiling -----------------------------------------------------------------------------------------
# A DualStreamRestormer is run stage by stage (DualStreamRestormer.run_stages: stem, each Restormer
# block, the merge block, the head), each stage over the whole image in chunks, keeping the stage's
# full-resolution output.  Convolutions are local: a chunk is computed from its region grown by the
# stage's receptive radius (clipped at the image border, where the convolutions' own zero padding then
# matches the whole-image result) and cropped back.  Channel attention is global but decomposes into
# sums over pixels:
#     q̂ᵢ·k̂ⱼ = Σₚ qᵢₚ kⱼₚ / (‖qᵢ‖ ‖kⱼ‖),  ‖qᵢ‖² = Σₚ qᵢₚ²
# so a first pass over the chunks accumulates these sums from the block's attention_calls (its queries
# and keys), and a second pass runs the block's forward with an attention function that applies the
# resulting c×c maps.  The result equals the whole-image forward up to float summation order (about 1e-6).


def _radius(*modules: nn.Module) -> int:
    """An upper bound of the receptive radius: the sum of every convolution's radius."""
    r = 0
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                r += max((k - 1) // 2 * d for k, d in zip(m.kernel_size, m.dilation, strict=True))
    return r


def _chunks(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    return [
        (y0, min(y0 + size, height), x0, min(x0 + size, width))
        for y0 in range(0, height, size)
        for x0 in range(0, width, size)
    ]


def _region(
    inputs: Sequence[Tensor], box: tuple[int, int, int, int], halo: int
) -> tuple[list[Tensor], tuple[Any, ...]]:
    """The chunk ``box`` grown by ``halo`` (clipped to the image) of each input, and the index that
    crops a region-sized result back to the chunk."""
    y0, y1, x0, x1 = box
    h, w = inputs[0].shape[-2:]
    ya, yb, xa, xb = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
    crop = (..., slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
    return [x[..., ya:yb, xa:xb] for x in inputs], crop


class _AttentionSums:
    """Σ q kᵀ, Σ q², Σ k² per head over the chunks: the global channel attention map."""

    def __init__(self, temperature: Tensor, heads: int) -> None:
        self.temperature, self.heads = temperature, heads
        self.gram: Tensor | None = None
        self.qq: Tensor | None = None
        self.kk: Tensor | None = None

    def add(self, q: Tensor, k: Tensor) -> None:
        b, c = q.shape[:2]
        qh = q.reshape(b, self.heads, c // self.heads, -1)
        kh = k.reshape(b, self.heads, c // self.heads, -1)
        gram = (qh @ kh.transpose(-2, -1)).double()
        qq, kk = qh.square().sum(-1).double(), kh.square().sum(-1).double()
        if self.gram is None:
            self.gram, self.qq, self.kk = gram, qq, kk
        else:
            self.gram += gram
            self.qq += qq  # type: ignore[operator]
            self.kk += kk  # type: ignore[operator]

    def attention(self) -> Tensor:
        assert self.gram is not None and self.qq is not None and self.kk is not None
        eps = 1e-12  # F.normalize's
        nq, nk = self.qq.sqrt().clamp_min(eps), self.kk.sqrt().clamp_min(eps)
        logits = (self.gram / (nq[..., :, None] * nk[..., None, :])).to(self.temperature.dtype)
        return torch.softmax(logits * self.temperature, dim=-1)


class _ChunkedStages(Stages):
    """The stages of a ``DualStreamRestormer`` over the image in ``size``-pixel chunks (see above)."""

    def __init__(self, size: int, on_step: Callable[[], None]) -> None:
        self.size, self.on_step = size, on_step

    def local(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], halo: int) -> Tensor:
        h, w = inputs[0].shape[-2:]
        out: Tensor | None = None
        for box in _chunks(h, w, self.size):
            regions, crop = _region(inputs, box, halo)
            y = fn(*regions)[crop]
            if out is None:
                out = y.new_empty((*y.shape[:-2], h, w))
            out[..., box[0] : box[1], box[2] : box[3]] = y
            del y, regions
            self.on_step()
        assert out is not None
        return out

    def attention_stage(self, block: RestormerBlock | CrossAttentionFusion, inputs: Sequence[Tensor]) -> Tensor:
        """Pass 1: the global attention maps from every chunk's queries and keys; pass 2: the block's
        forward per chunk with those maps as its attention."""
        halo = _radius(block)
        h, w = inputs[0].shape[-2:]
        sums: list[_AttentionSums] = []
        for box in _chunks(h, w, self.size):
            regions, crop = _region(inputs, box, halo)
            calls: list[AttentionCall] = block.attention_calls(*regions)
            if not sums:
                sums = [_AttentionSums(call.temperature, call.heads) for call in calls]
            for s, call in zip(sums, calls, strict=True):
                s.add(call.q[crop], call.k[crop])
            del calls, regions
            self.on_step()
        maps = [s.attention() for s in sums]
        del sums

        def run(*regions: Tensor) -> Tensor:
            index = 0

            def apply(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
                nonlocal index
                attn = maps[index]
                index += 1
                b, c, hh, ww = v.shape
                return (attn @ v.reshape(b, heads, c // heads, hh * ww)).reshape(b, c, hh, ww)

            return block(*regions, attention=apply)

        return self.local(run, inputs, halo)

    def stem(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        return self.local(conv, [x], _radius(conv))

    def block(self, block: RestormerBlock, x: Tensor) -> Tensor:
        return self.attention_stage(block, [x])

    def merge(self, merge: CrossAttentionFusion | None, x1: Tensor, x2: Tensor) -> Tensor:
        return super().merge(None, x1, x2) if merge is None else self.attention_stage(merge, [x1, x2])

    def head(self, net: DualStreamRestormer, z: Tensor) -> Tensor:
        return self.local(net.head, [z], _radius(*net.head_layers()))


class _CountedStages(Stages):
    """Counts the passes over the chunks that :class:`_ChunkedStages` makes, computing nothing."""

    def __init__(self) -> None:
        self.passes = 0

    def stem(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        self.passes += 1
        return x

    def block(self, block: RestormerBlock, x: Tensor) -> Tensor:
        self.passes += 2
        return x

    def merge(self, merge: CrossAttentionFusion | None, x1: Tensor, x2: Tensor) -> Tensor:
        self.passes += 0 if merge is None else 2
        return x1

    def head(self, net: DualStreamRestormer, z: Tensor) -> Tensor:
        self.passes += 1
        return z


def _passes(backbone: DualStreamRestormer, a: Tensor, b: Tensor) -> int:
    counted = _CountedStages()
    backbone.run_stages(a, b, counted)
    return counted.passes


def run_exact(
    module: nn.Module,
    ir: Tensor,
    vi: Tensor,
    chunk: int,
    *,
    on_tile: Progress | None = None,
) -> Any:
    """``module(ir, vi)`` with every ``DualStreamRestormer`` inside it run stage by stage in
    ``chunk``-pixel chunks (exact tiling; see the comment above).  The rest of ``module`` (a
    sigmoid, a softmax, Sobel inputs) runs on the whole image.  Call under ``torch.inference_mode``
    or ``torch.no_grad``.  ``TypeError`` for a module without such a backbone."""
    backbones = [m for m in module.modules() if isinstance(m, DualStreamRestormer)]
    if not backbones:
        raise TypeError(f"{type(module).__name__} has no DualStreamRestormer to stream; use blend tiling")
    h, w = ir.shape[-2:]
    total = len(_chunks(h, w, chunk)) * sum(_passes(net, ir, vi) for net in backbones)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_tile is not None:
            on_tile(done, total)

    stages = _ChunkedStages(chunk, step)
    with backbones_run_by(lambda net, a, b: net.run_stages(a, b, stages)):
        return module(ir, vi)
