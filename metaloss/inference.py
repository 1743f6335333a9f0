"""Fusing images with a trained model: load it, fuse (tiled when large), write the results.

* :func:`load_model` builds the fusion network (and, on request, its loss generator) from a
  checkpoint written by ``metaloss run``, or from the package's default pretrained model
  (``metaloss/pretrained/default.pt``, see :mod:`metaloss.pretrained`).  Only three entries of the
  checkpoint are used: ``config.fusion`` / ``config.loss_generator`` (plugin name + options) and
  ``trainer.learner`` / ``trainer.generator`` (state dicts); :func:`write_checkpoint` writes a
  checkpoint with just those.
* :func:`fuse_pair` runs a network on a pair under ``torch.inference_mode``, on the whole image or
  by :func:`fuse_tiled`: overlapping square tiles, each run separately, blended with raised-cosine
  ramps across the overlaps after a margin (pixels near an inner tile edge, where zero padding
  changes the convolutions, get weight 0).  The weights of neighbouring tiles sum to one, so the
  blend is a partition of unity.  Memory: the network's working set for one tile (≈2.8 kB per
  tile pixel for ``RestormerFusion``) plus ≈30 bytes per image pixel of image buffers.
* :func:`fuse_images` does one loaded pair end to end (luma fusion, optional min–max stretch,
  chroma, weight maps); :func:`write_png` writes atomically (temporary file in the same folder,
  then ``os.replace``).

The Restormer's channel attention is global over its input, so a tile does not see exactly the
statistics the whole image gives: tiled output differs slightly from whole-image output (see
``docs/fuse.md`` for measured differences and the defaults chosen from them).
"""

from __future__ import annotations

import importlib.resources as resources
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

import metaloss
from metaloss import pretrained, registry
from metaloss.data.images import ImagePair, compose
from metaloss.utils.io import atomic_torch_save, atomic_write_bytes

__all__ = [
    "AUTO_TILE",
    "AUTO_WHOLE_MAX_PIXELS",
    "DEFAULT_OVERLAP",
    "FusedImage",
    "FusionModel",
    "InferenceError",
    "NoPretrainedModelError",
    "blend_weights",
    "fuse_images",
    "fuse_pair",
    "fuse_tiled",
    "generator_maps",
    "heatmap",
    "load_model",
    "resolve_tile",
    "stretch",
    "tile_starts",
    "write_checkpoint",
    "write_png",
]

#: Automatic tiling (``tile=None``): images of at most this many pixels are fused whole; larger ones
#: in tiles of ``AUTO_TILE`` with ``DEFAULT_OVERLAP``.  Both bound the network's working set to that
#: of a 640×640 image (≈1.1 GiB for RestormerFusion on the CPU).
AUTO_WHOLE_MAX_PIXELS = 640 * 640
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


def build_network(group: str, section: Mapping[str, Any]) -> nn.Module:
    """Build a registered plugin from a config section ``{"name": ..., **options}``."""
    if not isinstance(section, Mapping) or "name" not in section:
        raise InferenceError(f"no {group} plugin section (with 'name') in the checkpoint's config")
    options = {k: v for k, v in section.items() if k != "name"}
    factory = registry.load(group, section["name"])
    kwargs = registry.config_model(factory).model_validate(options).model_dump()
    return factory(**kwargs)


def _no_pretrained_message() -> str:
    return (
        f"no --checkpoint given and no default pretrained model is installed: metaloss "
        f"{metaloss.__version__} does not ship one yet (it will be the package file "
        f"metaloss/pretrained/{pretrained.DEFAULT_NAME}, coming with a later release). "
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
) -> FusionModel:
    """The fusion network (and with ``generator=True`` the loss generator) of a checkpoint.

    ``checkpoint``: a checkpoint file written by ``metaloss run`` (or :func:`write_checkpoint`), a
    run directory (its ``checkpoints/last.pt`` is used), or None for the package's default
    pretrained model (:class:`NoPretrainedModelError` when there is none).
    """
    if checkpoint is None:
        resource = pretrained.default_checkpoint()
        if resource is None:
            raise NoPretrainedModelError(_no_pretrained_message())
        with resources.as_file(resource) as path:
            state = _read_checkpoint(Path(path))
        source = f"default pretrained model ({resource})"
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
    sections = {k: dict(config[k]) for k in ("fusion", "loss_generator") if isinstance(config.get(k), Mapping)}
    return FusionModel(fusion, gen, source, sections)


def write_checkpoint(
    path: str | os.PathLike[str],
    fusion: nn.Module,
    fusion_config: Mapping[str, Any],
    generator: nn.Module | None = None,
    generator_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a minimal checkpoint that :func:`load_model` (and ``metaloss fuse``) accepts.

    ``fusion_config`` / ``generator_config``: ``{"name": registered plugin, **options}``.  This is
    also the format of the package's default model (``metaloss/pretrained/default.pt``).
    """
    from metaloss.experiment import CHECKPOINT_FORMAT

    config: dict[str, Any] = {"fusion": dict(fusion_config)}
    trainer: dict[str, Any] = {"learner": fusion.state_dict()}
    if generator is not None:
        if generator_config is None:
            raise ValueError("generator_config is needed with a generator")
        config["loss_generator"] = dict(generator_config)
        trainer["generator"] = generator.state_dict()
    state = {"format": CHECKPOINT_FORMAT, "metaloss_version": metaloss.__version__, "config": config, "trainer": trainer}
    atomic_torch_save(state, path)
    return Path(path)


# -- tiling ---------------------------------------------------------------------------------------------
def resolve_tile(tile: int | None, height: int, width: int) -> int:
    """The tile size to use: ``tile`` itself (0 = whole image), or for None the automatic choice
    (whole image up to ``AUTO_WHOLE_MAX_PIXELS`` pixels, else ``AUTO_TILE``)."""
    if tile is None:
        return 0 if height * width <= AUTO_WHOLE_MAX_PIXELS else AUTO_TILE
    if tile < 0:
        raise ValueError(f"tile must be >= 0 (0 = whole image), got {tile}")
    return tile


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
    on_tile: Callable[[int, int], None] | None = None,
) -> Tensor | dict[str, Tensor]:
    """Run ``fn(ir_tile, vi_tile)`` on overlapping ``tile``×``tile`` tiles and blend the outputs.

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


def fuse_pair(
    net: nn.Module,
    ir: Tensor,
    vi: Tensor,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    margin: int = DEFAULT_MARGIN,
    on_tile: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Fuse ``ir``, ``vi`` (``[B, 1, H, W]`` or ``[1, H, W]``, in [0, 1]) with ``net`` under
    ``torch.inference_mode``: whole, or tiled (``tile`` pixels; None = automatic, 0 = whole image).
    Returns float32 of the input's shape, on the input's device; ``net`` runs on its own device."""
    squeeze = ir.ndim == 3
    if squeeze:
        ir, vi = ir[None], vi[None]
    size = resolve_tile(tile, *ir.shape[-2:])
    device = _module_device(net)
    with torch.inference_mode():
        out = fuse_tiled(net, ir, vi, size, overlap, margin=margin, device=device, on_tile=on_tile)
    assert isinstance(out, Tensor)
    return out[0] if squeeze else out


def generator_maps(
    generator: nn.Module,
    ir: Tensor,
    vi: Tensor,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    margin: int = DEFAULT_MARGIN,
    on_tile: Callable[[int, int], None] | None = None,
) -> dict[str, Tensor]:
    """The loss generator's maps (``"intensity"``, and ``"gradient"`` when it gives them) for a pair,
    each ``[B, 2, H, W]`` (channel 0 infrared, 1 visible), tiled like :func:`fuse_pair`."""
    squeeze = ir.ndim == 3
    if squeeze:
        ir, vi = ir[None], vi[None]
    size = resolve_tile(tile, *ir.shape[-2:])
    with torch.inference_mode():
        out = fuse_tiled(generator, ir, vi, size, overlap, margin=margin, device=_module_device(generator), on_tile=on_tile)
    if not isinstance(out, dict):
        out = {"intensity": out}
    return {k: (v[0] if squeeze else v) for k, v in out.items()}


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# -- whole pairs ----------------------------------------------------------------------------------------
def stretch(y: Tensor) -> Tensor:
    """Per-image min–max stretch ``(y − min) / (max − min)`` (unchanged when the image is constant),
    as the reference test scripts apply it to the fused Y channel."""
    lo, hi = y.amin(), y.amax()
    if float(hi - lo) <= 0:
        return y
    return (y - lo) / (hi - lo)


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
    overlap: int = DEFAULT_OVERLAP,
    stretch_y: bool = True,
    weights: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
) -> FusedImage:
    """Fuse one loaded pair: Y of both sources through the network, optional min–max stretch of the
    fused Y, chroma by the colour rule; with ``weights`` also the loss generator's maps."""
    fused = fuse_pair(model.fusion, pair.ir.y, pair.vi.y, tile=tile, overlap=overlap, on_tile=on_tile)
    if stretch_y:
        fused = stretch(fused)
    result = FusedImage(compose(fused, pair.chroma))
    del fused
    if weights:
        if model.generator is None:
            raise InferenceError("weight maps need the loss generator: load the model with generator=True")
        maps = generator_maps(model.generator, pair.ir.y, pair.vi.y, tile=tile, overlap=overlap, on_tile=on_tile)
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
