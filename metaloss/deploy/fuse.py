"""Fusing with a loaded model: a network on a pair by a tiling plan and an engine, whole pairs with
colour and weight maps, PNG output.

* :func:`fuse_pair` / :func:`generator_maps` run a network on a pair under ``torch.inference_mode``
  by a :class:`~metaloss.deploy.tiling.TilePlan` and an engine (``Engine``: the network's own forward,
  or the fast CPU engine of :mod:`metaloss.deploy.engine`);
* :func:`fuse_images` does one loaded pair end to end (luma fusion, optional min–max stretch,
  chroma, weight maps); :func:`write_png` writes atomically (temporary file in the same folder,
  then ``os.replace``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from metaloss.data.images import ImagePair, compose, stretch
from metaloss.deploy.engine import fast_forward, supports_fast
from metaloss.deploy.model import FusionModel, InferenceError
from metaloss.deploy.tiling import DEFAULT_OVERLAP, Progress, TilePlan, TilingMode, fuse_tiled, plan_tiling, run_exact
from metaloss.utils.io import atomic_write_bytes

__all__ = [
    "Engine",
    "FusedImage",
    "fuse_images",
    "fuse_pair",
    "generator_maps",
    "heatmap",
    "resolve_engine",
    "run_planned",
    "write_png",
]

#: ``"torch"``: the network's own forward (with the tiling plan); ``"fast"``: ``DualStreamRestormer``
#: backbones run by ``metaloss.deploy.engine`` (pixel-major, folded weights, row bands; the
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
            return fuse_tiled(
                lambda a, b: run_exact(module, a, b, plan.tile, on_tile=on_tile), ir, vi, 0, device=device
            )
        if plan.mode == "exact+blend":
            return fuse_tiled(
                lambda a, b: run_exact(module, a, b, plan.tile),
                ir,
                vi,
                plan.outer,
                plan.overlap,
                device=device,
                on_tile=on_tile,
            )
    raise ValueError(f"unknown tiling plan {plan}")


def run_network(
    module: nn.Module,
    a: Tensor,
    b: Tensor,
    *,
    tile: int | None = None,
    mode: TilingMode = "auto",
    overlap: int = DEFAULT_OVERLAP,
    on_tile: Progress | None = None,
    engine: Engine = "torch",
) -> Tensor | dict[str, Tensor]:
    """Run ``module`` on sources ``[B, 1, H, W]`` or ``[1, H, W]`` (in [0, 1]), whole or tiled by
    :func:`plan_tiling` (``tile``: None = automatic, 0 = whole image; ``mode``: auto, exact or
    blend), under ``torch.inference_mode``; results with the inputs' batch dimension (or none)."""
    squeeze = a.ndim == 3
    if squeeze:
        a, b = a[None], b[None]
    plan = plan_tiling(module, *a.shape[-2:], tile=tile, mode=mode, overlap=overlap)
    out = run_planned(module, a, b, plan, on_tile=on_tile, engine=engine)
    if not squeeze:
        return out
    return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]


def fuse_pair(net: nn.Module, a: Tensor, b: Tensor, **options: Any) -> Tensor:
    """The fused image of sources ``a``, ``b`` (``[B, 1, H, W]`` or ``[1, H, W]``, in [0, 1]): float32
    of the input's shape on the input's device; ``net`` runs on its own device; ``options``: those
    of :func:`run_network`."""
    out = run_network(net, a, b, **options)
    if not isinstance(out, Tensor):
        raise TypeError(f"{type(net).__name__} returned {type(out).__name__}, not the fused image")
    return out


def generator_maps(generator: nn.Module, a: Tensor, b: Tensor, **options: Any) -> dict[str, Tensor]:
    """The loss generator's maps (``"intensity"``, and ``"gradient"`` when it gives them) for a pair,
    each ``[B, 2, H, W]`` (channel 0 source a, 1 source b); ``options``: those of :func:`run_network`."""
    out = run_network(generator, a, b, **options)
    return out if isinstance(out, dict) else {"intensity": out}


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# -- whole pairs ----------------------------------------------------------------------------------------
#: Short names of the loss generator's maps in output file names: ``<name>_<short>_<source>.png``.
MAP_NAMES = {"intensity": "w", "gradient": "v"}
SOURCE_NAMES = ("a", "b")


@dataclass
class FusedImage:
    """``image``: the fused 8-bit image (``H×W`` grayscale or ``H×W×3`` RGB); ``maps``: the loss
    generator's maps by file suffix (``"w_a"``, ``"w_b"``, ``"v_a"``, ...), each ``[H, W]`` in [0, 1]."""

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
            model.generator,
            pair.ir.y,
            pair.vi.y,
            tile=tile,
            mode=mode,
            overlap=overlap,
            on_tile=on_tile,
            engine=engine,
        )
        for key, value in maps.items():
            short = MAP_NAMES.get(key, key)
            for c in range(value.shape[0]):
                source = SOURCE_NAMES[c] if value.shape[0] == len(SOURCE_NAMES) else str(c)
                result.maps[f"{short}_{source}"] = value[c]
    return result


# -- writing --------------------------------------------------------------------------------------------
def heatmap(
    values: Tensor | np.ndarray,
    colormap: str = "viridis",
    value_range: tuple[float, float] | None = (0.0, 1.0),
    colorbar: bool = False,
) -> np.ndarray:
    """``[H, W]`` values → ``H×W×3`` uint8 RGB heat map with one of OpenCV's colormaps (``viridis``,
    ``jet``, ``turbo``, ``inferno``, ...).  ``value_range``: the values at the colormap's two ends
    (None: the data's 1st and 99th percentiles, so that a map between 0.4 and 0.6 is not one flat
    colour); ``colorbar``: append a bar on the right labelled with the range's ends."""
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap {colormap!r}; e.g. viridis, jet, turbo, inferno, magma, plasma")
    v = values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float32)
    lo, hi = value_range if value_range is not None else (float(np.percentile(v, 1)), float(np.percentile(v, 99)))
    if not hi > lo:
        lo, hi = lo - 0.5e-3, lo + 0.5e-3
    grey = np.rint(np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    image = cv2.cvtColor(cv2.applyColorMap(grey, code), cv2.COLOR_BGR2RGB)
    return _with_colorbar(image, code, lo, hi) if colorbar else image


def _with_colorbar(image: np.ndarray, code: int, lo: float, hi: float) -> np.ndarray:
    """``image`` with a vertical colour bar (top: ``hi``, bottom: ``lo``) and its two labels on the right."""
    h = image.shape[0]
    scale, thick, font = max(0.3, min(1.0, h / 600)), 1, cv2.FONT_HERSHEY_SIMPLEX
    labels = [f"{hi:.3g}", f"{lo:.3g}"]
    sizes = [cv2.getTextSize(text, font, scale, thick)[0] for text in labels]
    bar_w = max(8, h // 30)
    panel = np.full((h, bar_w + 8 + max(w for w, _ in sizes), 3), 255, np.uint8)
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    panel[:, 2 : 2 + bar_w] = cv2.cvtColor(cv2.applyColorMap(ramp, code), cv2.COLOR_BGR2RGB)
    text_h = sizes[0][1]
    cv2.putText(panel, labels[0], (bar_w + 5, text_h + 2), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(panel, labels[1], (bar_w + 5, h - 3), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return np.concatenate([image, panel], axis=1)


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
