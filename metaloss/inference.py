"""Fusing images with a trained model: load it, fuse (tiled when large), write the results.

* :func:`load_model` builds the fusion network (and, on request, its loss generator) from a
  checkpoint written by ``metaloss run``, or from the package's default pretrained model
  (``metaloss/pretrained/default.pt``, see :mod:`metaloss.pretrained`).  Only three entries of the
  checkpoint are used: ``config.fusion`` / ``config.loss_generator`` (plugin name + options) and
  ``trainer.learner`` / ``trainer.generator`` (state dicts); :func:`write_checkpoint` writes a
  checkpoint with just those.
* :func:`fuse_pair` / :func:`generator_maps` run a network on a pair under
  ``torch.inference_mode`` by a :class:`TilePlan` (:func:`plan_tiling`):

  - ``whole``: one forward pass (memory ≈ 2.8 kB per pixel for ``RestormerFusion``);
  - ``exact`` (:func:`run_exact`): every ``DualStreamRestormer`` in the network is run stage by
    stage in chunks, with the global channel-attention maps accumulated over the chunks: the
    whole-image result up to float rounding, with one chunk's working set plus ≈260 bytes per
    pixel of kept feature maps;
  - ``blend`` (:func:`fuse_tiled`): independent overlapping tiles blended with raised-cosine ramps
    after a margin (weights of neighbours sum to one); any network, but only approximate for the
    Restormer, whose channel attention is global (see ``docs/fuse.md`` for measurements);
  - ``exact+blend``: blended outer tiles, each run exactly (very large images).
* :func:`fuse_images` does one loaded pair end to end (luma fusion, optional min–max stretch,
  chroma, weight maps); :func:`write_png` writes atomically (temporary file in the same folder,
  then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import importlib.resources as resources
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import Tensor, nn

import metaloss
import metaloss.nn.restormer as restormer_nn
from metaloss import pretrained, registry
from metaloss.data.images import ImagePair, compose, stretch
from metaloss.nn.restormer import (
    MDTA,
    CrossAttentionFusion,
    DualStreamRestormer,
    RestormerBlock,
    RestormerEncoder,
    call_with_backbones,
)
from metaloss.nn.restormer_fast import fast_forward, supports_fast
from metaloss.utils.io import atomic_torch_save, atomic_write_bytes

__all__ = [
    "AUTO_TILE",
    "AUTO_WHOLE_MAX_PIXELS",
    "DEFAULT_OVERLAP",
    "EXACT_CHUNK",
    "Engine",
    "EXACT_MAX_PIXELS",
    "EXACT_OUTER_TILE",
    "FusedImage",
    "FusionModel",
    "InferenceError",
    "NoPretrainedModelError",
    "TilePlan",
    "blend_weights",
    "fuse_images",
    "fuse_pair",
    "fuse_tiled",
    "generator_maps",
    "heatmap",
    "load_model",
    "plan_tiling",
    "resolve_engine",
    "resolve_tile",
    "run_exact",
    "run_planned",
    "stretch",
    "supports_exact",
    "tile_starts",
    "write_checkpoint",
    "write_png",
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


class InferenceError(RuntimeError):
    """A model cannot be loaded or run; the message says which file and why."""


class NoPretrainedModelError(InferenceError):
    """No checkpoint was given and the package has no default pretrained model."""


# -- models ---------------------------------------------------------------------------------------------
@dataclass
class FusionModel:
    """A fusion network (eval mode, no gradients) and optionally its loss generator."""

    fusion: nn.Module
    generator: nn.Module | None
    source: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        p = next(self.fusion.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def stretch(self) -> bool:
        """Whether this model's fused images are min–max stretched by default: its run's ``[eval]
        stretch`` (on for checkpoints that predate the setting, as before)."""
        section = self.config.get("eval")
        return bool(section.get("stretch", True)) if isinstance(section, Mapping) else True


def build_network(group: str, section: Mapping[str, Any]) -> nn.Module:
    """Build a registered plugin from a config section ``{"name": ..., **options}``."""
    if not isinstance(section, Mapping) or "name" not in section:
        raise InferenceError(f"no {group} plugin section (with 'name') in the checkpoint's config")
    options = {k: v for k, v in section.items() if k != "name"}
    factory = registry.load(group, section["name"])
    kwargs = registry.config_model(factory).model_validate(options).model_dump()
    return factory(**kwargs)


def _no_pretrained_message(name: str = pretrained.DEFAULT_NAME) -> str:
    return (
        f"no --checkpoint given and the pretrained model metaloss/pretrained/{name} is not installed "
        f"(metaloss {metaloss.__version__} does not ship it). "
        "Pass --checkpoint with a checkpoint written by `metaloss run`, e.g. RUN_DIR/checkpoints/last.pt"
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from metaloss.experiment import RunError, load_checkpoint

    try:
        return load_checkpoint(path)
    except RunError as err:
        raise InferenceError(str(err)) from err


def load_model(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    generator: bool = False,
    device: str | torch.device = "cpu",
    model: str = "default",
) -> FusionModel:
    """The fusion network (and with ``generator=True`` the loss generator) of a checkpoint.

    ``checkpoint``: a checkpoint file written by ``metaloss run`` (or :func:`write_checkpoint`), a
    run directory (its ``checkpoints/last.pt`` is used), or None for the package's default
    pretrained model named ``model`` (``metaloss.pretrained.MODELS``; :class:`NoPretrainedModelError`
    when it is not installed).
    """
    if checkpoint is None:
        try:
            name = pretrained.model_file(model)
        except ValueError as err:
            raise InferenceError(str(err)) from None
        resource = pretrained.default_checkpoint(name=name)
        if resource is None:
            raise NoPretrainedModelError(_no_pretrained_message(name))
        with resources.as_file(resource) as path:
            state = _read_checkpoint(Path(path))
        source = f"pretrained model {model!r} ({resource})"
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        state = _read_checkpoint(path)
        source = str(path)
    config, trainer = state.get("config"), state.get("trainer")
    if not isinstance(config, Mapping) or not isinstance(trainer, Mapping) or "learner" not in trainer:
        raise InferenceError(f"{source}: no config/trainer.learner entries; not a checkpoint of `metaloss run`")

    def build(group: str, key: str, weights: str) -> nn.Module:
        try:
            net = build_network(group, config.get(key, {}))
            net.load_state_dict(trainer[weights])
        except InferenceError as err:
            raise InferenceError(f"{source}: {err}") from err
        except (registry.PluginError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise InferenceError(f"{source}: cannot build its {group} network: {err}") from err
        return net.eval().requires_grad_(False).to(device)

    fusion = build("fusion", "fusion", "learner")
    gen = None
    if generator:
        if trainer.get("generator") is None:
            raise InferenceError(f"{source}: holds no loss generator weights (trainer.generator)")
        gen = build("loss_generators", "loss_generator", "generator")
    sections = {k: dict(config[k]) for k in ("fusion", "loss_generator", "eval") if isinstance(config.get(k), Mapping)}
    return FusionModel(fusion, gen, source, sections)


def write_checkpoint(
    path: str | os.PathLike[str],
    fusion: nn.Module,
    fusion_config: Mapping[str, Any],
    generator: nn.Module | None = None,
    generator_config: Mapping[str, Any] | None = None,
    *,
    stretch: bool = True,
) -> Path:
    """Write a minimal checkpoint that :func:`load_model` (and ``metaloss fuse``) accepts.

    ``fusion_config`` / ``generator_config``: ``{"name": registered plugin, **options}``; ``stretch``:
    whether the model's fused images are min–max stretched by default (``[eval] stretch`` of its run).
    This is also the format of the package's default model (``metaloss/pretrained/default.pt``).
    """
    from metaloss.experiment import CHECKPOINT_FORMAT

    config: dict[str, Any] = {"fusion": dict(fusion_config), "eval": {"stretch": stretch}}
    trainer: dict[str, Any] = {"learner": fusion.state_dict()}
    if generator is not None:
        if generator_config is None:
            raise ValueError("generator_config is needed with a generator")
        config["loss_generator"] = dict(generator_config)
        trainer["generator"] = generator.state_dict()
    state = {"format": CHECKPOINT_FORMAT, "metaloss_version": metaloss.__version__, "config": config, "trainer": trainer}
    atomic_torch_save(state, path)
    return Path(path)


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


def resolve_tile(tile: int | None, height: int, width: int) -> int:
    """The blend tile size for ``tile`` (0 = whole image; None = automatic: whole image up to
    ``AUTO_WHOLE_MAX_PIXELS`` pixels, else ``AUTO_TILE``)."""
    if tile is None:
        return 0 if height * width <= AUTO_WHOLE_MAX_PIXELS else AUTO_TILE
    if tile < 0:
        raise ValueError(f"tile must be >= 0 (0 = whole image), got {tile}")
    return tile


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
Progress = Callable[[int, int], None]


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
        return {k: v.float().to(ir.device) for k, v in out.items()} if isinstance(out, Mapping) else out.float().to(ir.device)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wys, wxs = blend_weights(ys, th, margin), blend_weights(xs, tw, margin)
    acc: dict[str, Tensor] = {}
    total = torch.zeros(h, w, dtype=torch.float32, device=ir.device)
    n, k = len(ys) * len(xs), 0
    single = True
    for y0, wy in zip(ys, wys):
        for x0, wx in zip(xs, wxs):
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
# A DualStreamRestormer is run stage by stage (stem, each Restormer block, the merge block, the head),
# each stage over the whole image in chunks, keeping the stage's full-resolution output.  Convolutions
# are local: a chunk is computed from its region grown by the stage's receptive radius (clipped at the
# image border, where the convolutions' own zero padding then matches the whole-image result) and
# cropped back.  Channel attention is global but decomposes into sums over pixels:
#     q̂ᵢ·k̂ⱼ = Σₚ qᵢₚ kⱼₚ / (‖qᵢ‖ ‖kⱼ‖),  ‖qᵢ‖² = Σₚ qᵢₚ²
# so a first pass over the chunks accumulates these sums for every attention call of the stage, and a
# second pass runs the stage with the resulting c×c attention maps.  Both passes call the stage's own
# forward, with ``metaloss.nn.restormer.channel_attention`` temporarily replaced by a function that
# records the sums (pass 1) or applies the global map (pass 2).  The result equals the whole-image
# forward up to float summation order (about 1e-6).

_ATTENTION_LOCK = threading.RLock()
#: Leaf modules that act per pixel or as convolutions (so a chunk plus its radius computes them exactly).
_LOCAL_LEAVES = (nn.Conv2d, nn.PReLU, nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Identity, nn.Sigmoid)


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def _attention_replaced(fn: Callable[..., Tensor]) -> Iterator[None]:
    with _ATTENTION_LOCK:
        original = restormer_nn.channel_attention
        restormer_nn.channel_attention = fn
        try:
            yield
        finally:
            restormer_nn.channel_attention = original


def _radius(module: nn.Module) -> int:
    """An upper bound of the receptive radius: the sum of every convolution's radius."""
    r = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            r += max((k - 1) // 2 * d for k, d in zip(m.kernel_size, m.dilation))
    return r


def _chunks(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    return [
        (y0, min(y0 + size, height), x0, min(x0 + size, width))
        for y0 in range(0, height, size)
        for x0 in range(0, width, size)
    ]


def _region(inputs: Sequence[Tensor], box: tuple[int, int, int, int], halo: int) -> tuple[list[Tensor], tuple[Any, ...]]:
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


class _Streamer:
    """Runs modules stage by stage in ``size``-pixel chunks (see the comment above)."""

    def __init__(self, size: int, on_step: Callable[[], None] | None = None) -> None:
        self.size, self.on_step = size, on_step

    def _step(self) -> None:
        if self.on_step is not None:
            self.on_step()

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
            self._step()
        assert out is not None
        return out

    def attention_stage(self, module: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
        """A module whose attention calls all depend on its inputs only (MDTA, RestormerBlock,
        CrossAttentionFusion), otherwise local."""
        halo = _radius(module)
        h, w = inputs[0].shape[-2:]
        sums: list[_AttentionSums] = []
        expected: int | None = None
        for box in _chunks(h, w, self.size):
            regions, crop = _region(inputs, box, halo)
            calls = 0

            def record(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
                nonlocal calls
                if calls == len(sums):
                    sums.append(_AttentionSums(temperature, heads))
                sums[calls].add(q[crop], k[crop])
                calls += 1
                if calls == expected:
                    raise _StopForward
                return torch.zeros_like(v)

            try:
                with _attention_replaced(record):
                    module(*regions)
            except _StopForward:
                pass
            expected = calls
            self._step()
        maps = [s.attention() for s in sums]
        del sums
        index = 0

        def apply(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
            nonlocal index
            attn = maps[index]
            index += 1
            b, c, hh, ww = v.shape
            return (attn @ v.reshape(b, heads, c // heads, hh * ww)).reshape(b, c, hh, ww)

        def run(*regions: Tensor) -> Tensor:
            nonlocal index
            index = 0
            with _attention_replaced(apply):
                return module(*regions)

        return self.local(run, inputs, halo)

    def stream(self, module: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
        if isinstance(module, DualStreamRestormer):  # mirrors DualStreamRestormer.forward
            a, b = inputs
            ea = self.stream(module.encoder1, [a])
            eb = self.stream(module.encoder2, [b])
            z = torch.cat([ea, eb], dim=1) if module.merge is None else self.stream(module.merge, [ea, eb])
            del ea, eb
            z = self.stream(module.decoder, [z])
            head = nn.Sequential(module.head_in, module.act, module.head_out)
            return self.local(head, [z], _radius(head))
        if isinstance(module, RestormerEncoder):  # mirrors RestormerEncoder.forward
            return self.stream(module.blocks, [self.stream(module.stem, inputs)])
        if isinstance(module, nn.Sequential):
            x = list(inputs)
            for child in module:
                x = [self.stream(child, x)]
            return x[0]
        if isinstance(module, (RestormerBlock, CrossAttentionFusion, MDTA)):
            return self.attention_stage(module, inputs)
        if all(isinstance(m, _LOCAL_LEAVES) for m in module.modules() if not list(m.children())):
            return self.local(module, inputs, _radius(module))
        raise TypeError(f"exact tiling cannot stream a {type(module).__name__}")

    @staticmethod
    def steps_per_chunk(module: nn.Module) -> int:
        """Passes over the chunks that :meth:`stream` makes for ``module``."""
        if isinstance(module, DualStreamRestormer):
            merge = 0 if module.merge is None else _Streamer.steps_per_chunk(module.merge)
            return sum(_Streamer.steps_per_chunk(m) for m in (module.encoder1, module.encoder2, module.decoder)) + merge + 1
        if isinstance(module, RestormerEncoder):
            return 1 + _Streamer.steps_per_chunk(module.blocks)
        if isinstance(module, nn.Sequential):
            return sum(_Streamer.steps_per_chunk(m) for m in module)
        if isinstance(module, (RestormerBlock, CrossAttentionFusion, MDTA)):
            return 2
        return 1


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
    or ``torch.no_grad``; not for training (the backbones are swapped out during the call)."""
    h, w = ir.shape[-2:]
    if isinstance(module, DualStreamRestormer):
        backbones = [module]
    else:
        backbones = [m for m in module.modules() if isinstance(m, DualStreamRestormer)]
    total = len(_chunks(h, w, chunk)) * sum(_Streamer.steps_per_chunk(b) for b in backbones)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_tile is not None:
            on_tile(done, total)

    streamer = _Streamer(chunk, step)
    with _ATTENTION_LOCK:
        return call_with_backbones(
            module, ir, vi, lambda net, a, b: streamer.stream(net, [a, b]), "to stream; use blend tiling"
        )


# -- running a network on a pair --------------------------------------------------------------------------
#: ``"torch"``: the network's own forward (with the tiling plan); ``"fast"``: ``DualStreamRestormer``
#: backbones run by ``metaloss.nn.restormer_fast`` (pixel-major, folded weights, row bands; the
#: whole-image result up to float rounding, and it streams the image itself, so "whole" and "exact"
#: plans run the same way); ``"auto"``: fast for such networks with float32 weights on the CPU.
Engine = Literal["auto", "torch", "fast"]


def resolve_engine(module: nn.Module, engine: Engine = "auto") -> Literal["torch", "fast"]:
    """The engine :func:`run_planned` uses for ``module`` (see ``Engine``)."""
    if engine not in ("auto", "torch", "fast"):
        raise ValueError(f"unknown inference engine {engine!r}; choose 'auto', 'torch' or 'fast'")
    if engine == "torch":
        return "torch"
    ok = supports_fast(module)
    if engine == "fast":
        if not ok:
            raise ValueError(f"the fast engine needs a DualStreamRestormer network; {type(module).__name__} is not one")
        return "fast"
    p = next(module.parameters(), None)
    cpu_float = p is None or (p.device.type == "cpu" and p.dtype == torch.float32)
    return "fast" if ok and cpu_float else "torch"


def run_planned(
    module: nn.Module,
    ir: Tensor,
    vi: Tensor,
    plan: TilePlan,
    *,
    on_tile: Progress | None = None,
    engine: Engine = "torch",
) -> Tensor | dict[str, Tensor]:
    """Run ``module`` on ``[B, 1, H, W]`` inputs by ``plan`` under ``torch.inference_mode``; float32
    results (a tensor, or a dict of tensors for a loss generator) on the inputs' device.
    ``engine``: see ``Engine``."""
    device = _module_device(module)
    if resolve_engine(module, engine) == "fast":
        with torch.inference_mode():
            if plan.mode in ("whole", "exact"):  # the fast engine streams the image in bands itself
                fast = lambda a, b: fast_forward(module, a, b, on_stage=on_tile)
                return fuse_tiled(fast, ir, vi, 0, device=device)
            fast = lambda a, b: fast_forward(module, a, b)
            tile = plan.outer if plan.mode == "exact+blend" else plan.tile
            return fuse_tiled(fast, ir, vi, tile, plan.overlap, device=device, on_tile=on_tile)
    with torch.inference_mode():
        if plan.mode == "whole":
            return fuse_tiled(module, ir, vi, 0, device=device, on_tile=on_tile)
        if plan.mode == "blend":
            return fuse_tiled(module, ir, vi, plan.tile, plan.overlap, device=device, on_tile=on_tile)
        if plan.mode == "exact":
            return fuse_tiled(lambda a, b: run_exact(module, a, b, plan.tile, on_tile=on_tile), ir, vi, 0, device=device)
        if plan.mode == "exact+blend":
            return fuse_tiled(
                lambda a, b: run_exact(module, a, b, plan.tile), ir, vi, plan.outer, plan.overlap, device=device, on_tile=on_tile
            )
    raise ValueError(f"unknown tiling plan {plan}")


def fuse_pair(
    net: nn.Module,
    ir: Tensor,
    vi: Tensor,
    *,
    tile: int | None = None,
    mode: TilingMode = "auto",
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Progress | None = None,
    engine: Engine = "torch",
) -> Tensor:
    """Fuse ``ir``, ``vi`` (``[B, 1, H, W]`` or ``[1, H, W]``, in [0, 1]) with ``net`` under
    ``torch.inference_mode``, whole or tiled by :func:`plan_tiling` (``tile``: None = automatic,
    0 = whole image; ``mode``: auto, exact or blend).  Returns float32 of the input's shape on the
    input's device; ``net`` runs on its own device."""
    squeeze = ir.ndim == 3
    if squeeze:
        ir, vi = ir[None], vi[None]
    plan = plan_tiling(net, *ir.shape[-2:], tile=tile, mode=mode, overlap=overlap)
    out = run_planned(net, ir, vi, plan, on_tile=on_tile, engine=engine)
    assert isinstance(out, Tensor)
    return out[0] if squeeze else out


def generator_maps(
    generator: nn.Module,
    ir: Tensor,
    vi: Tensor,
    *,
    tile: int | None = None,
    mode: TilingMode = "auto",
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Progress | None = None,
    engine: Engine = "torch",
) -> dict[str, Tensor]:
    """The loss generator's maps (``"intensity"``, and ``"gradient"`` when it gives them) for a pair,
    each ``[B, 2, H, W]`` (channel 0 infrared, 1 visible), tiled like :func:`fuse_pair`."""
    squeeze = ir.ndim == 3
    if squeeze:
        ir, vi = ir[None], vi[None]
    plan = plan_tiling(generator, *ir.shape[-2:], tile=tile, mode=mode, overlap=overlap)
    out = run_planned(generator, ir, vi, plan, on_tile=on_tile, engine=engine)
    if not isinstance(out, dict):
        out = {"intensity": out}
    return {k: (v[0] if squeeze else v) for k, v in out.items()}


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# -- whole pairs ----------------------------------------------------------------------------------------
#: Short names of the loss generator's maps in output file names: ``<name>_<short>_<source>.png``.
MAP_NAMES = {"intensity": "w", "gradient": "v"}
SOURCE_NAMES = ("ir", "vi")


@dataclass
class FusedImage:
    """``image``: the fused 8-bit image (``H×W`` grayscale or ``H×W×3`` RGB); ``maps``: the loss
    generator's maps by file suffix (``"w_ir"``, ``"w_vi"``, ``"v_ir"``, ...), each ``[H, W]`` in [0, 1]."""

    image: np.ndarray
    maps: dict[str, Tensor] = field(default_factory=dict)


def fuse_images(
    model: FusionModel,
    pair: ImagePair,
    *,
    tile: int | None = None,
    mode: TilingMode = "auto",
    overlap: int = DEFAULT_OVERLAP,
    stretch_y: bool | None = None,
    weights: bool = False,
    on_tile: Progress | None = None,
    engine: Engine = "torch",
) -> FusedImage:
    """Fuse one loaded pair: Y of both sources through the network, optional min–max stretch of the
    fused Y (``stretch_y``; None: the model's own default, :attr:`FusionModel.stretch`), chroma by the
    colour rule; with ``weights`` also the loss generator's maps."""
    fused = fuse_pair(
        model.fusion, pair.ir.y, pair.vi.y, tile=tile, mode=mode, overlap=overlap, on_tile=on_tile, engine=engine
    )
    if model.stretch if stretch_y is None else stretch_y:
        fused = stretch(fused)
    result = FusedImage(compose(fused, pair.chroma))
    del fused
    if weights:
        if model.generator is None:
            raise InferenceError("weight maps need the loss generator: load the model with generator=True")
        maps = generator_maps(
            model.generator, pair.ir.y, pair.vi.y, tile=tile, mode=mode, overlap=overlap, on_tile=on_tile,
            engine=engine,
        )
        for key, value in maps.items():
            short = MAP_NAMES.get(key, key)
            for c in range(value.shape[0]):
                source = SOURCE_NAMES[c] if value.shape[0] == len(SOURCE_NAMES) else str(c)
                result.maps[f"{short}_{source}"] = value[c]
    return result


# -- writing --------------------------------------------------------------------------------------------
def heatmap(values: Tensor | np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """``[H, W]`` values in [0, 1] (fixed scale, not stretched) → ``H×W×3`` uint8 RGB heat map with
    one of OpenCV's colormaps (``viridis``, ``jet``, ``turbo``, ``inferno``, ...)."""
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap {colormap!r}; e.g. viridis, jet, turbo, inferno, magma, plasma")
    v = values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float32)
    grey = np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, code), cv2.COLOR_BGR2RGB)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an 8-bit ``H×W`` or ``H×W×3`` (RGB) image as PNG, atomically (temporary file in the same
    folder, fsync, ``os.replace``): a crash never leaves a half-written PNG under the final name."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8 image data, got {image.dtype}")
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)
