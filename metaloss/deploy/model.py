"""A trained model for inference: its fusion network (and on request its loss generator) from a checkpoint.

:func:`load` (``metaloss.load``) is the user's entry: a shipped model by name or a checkpoint, on the
device ``metaloss fuse`` picks, as a :class:`FusionModel` whose :meth:`FusionModel.fuse` fuses a pair
with the command's defaults.  :func:`load_model` reads a checkpoint written by ``metaloss run`` (or
``metaloss.checkpoint.write_model_checkpoint``), or the package's pretrained model
(``metaloss/pretrained/default.pt``, see :mod:`metaloss.pretrained`).  Only three entries of the
checkpoint are used: ``config.fusion`` / ``config.loss_generator`` (plugin name + options), built by
``metaloss.checkpoint.build_plugin``, and ``trainer.learner`` / ``trainer.generator`` (state dicts).
"""

from __future__ import annotations

import importlib.resources as resources
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import metaloss
from metaloss import pretrained, registry
from metaloss.checkpoint import CheckpointError, build_plugin, read_checkpoint
from metaloss.config import upgrade_keys
from metaloss.data.images import SourceImage, load_image, pair_of, source_image
from metaloss.deploy.tiling import DEFAULT_OVERLAP, TilingMode

if TYPE_CHECKING:
    from metaloss.deploy.fuse import Engine

__all__ = ["FusionModel", "ImageInput", "InferenceError", "NoPretrainedModelError", "load", "load_model"]

#: What :meth:`FusionModel.fuse` takes for a source image: a file path; a numpy array as images are
#: decoded (``H×W``, ``H×W×3`` RGB, ``H×W×4`` RGBA; uint8, uint16 or float); a tensor ``[H, W]``,
#: ``[1, H, W]`` or ``[3, H, W]`` (RGB), of those sample types too.
ImageInput = str | os.PathLike[str] | np.ndarray | torch.Tensor


class InferenceError(RuntimeError):
    """A model cannot be loaded or run; the message says which file and why."""


class NoPretrainedModelError(InferenceError):
    """No checkpoint was given and the package has no default pretrained model."""


@dataclass
class FusionModel:
    """A fusion network (eval mode, no gradients) and optionally its loss generator."""

    fusion: nn.Module
    generator: nn.Module | None
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    #: what goes in slot a and slot b, e.g. ("near focus", "far focus") for a shipped model
    #: (``metaloss.pretrained.SOURCES``); ("a", "b") when a checkpoint does not say
    sources: tuple[str, str] = ("a", "b")

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

    def fuse(
        self,
        a: ImageInput,
        b: ImageInput,
        *,
        tile: int | None = None,
        mode: TilingMode = "auto",
        overlap: int = DEFAULT_OVERLAP,
        stretch: bool | None = None,
        engine: Engine = "auto",
    ) -> np.ndarray:
        """Fuse one pair as ``metaloss fuse`` does, with its defaults (automatic tiling, the fast engine
        where it applies, the model's own stretch), and return the 8-bit image it would write: ``H×W``
        (two grey sources) or ``H×W×3`` RGB.  ``a``/``b``: the two sources in the model's order
        (:attr:`sources`; infrared then visible for the default model), see ``ImageInput``; the options
        are the command's ``--tile``, ``--tiling``, ``--overlap``, ``--stretch``, ``--engine``."""
        from metaloss.deploy.fuse import fuse_images

        pair = pair_of(_source(a, "a"), _source(b, "b"))
        result = fuse_images(self, pair, tile=tile, mode=mode, overlap=overlap, stretch_y=stretch, engine=engine)
        return result.image


def _source(image: ImageInput, name: str) -> SourceImage:
    """One source of :meth:`FusionModel.fuse` decoded and normalised as ``metaloss fuse`` reads a file."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3:  # [C, H, W] -> H×W×C, the layout of a decoded image
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a file path, a numpy array or a tensor, got {type(image).__name__}")
    return source_image(np.ascontiguousarray(image), f"<{name} array>")


def _no_pretrained_message(name: str = pretrained.DEFAULT_NAME) -> str:
    return (
        f"no --checkpoint given and the pretrained model metaloss/pretrained/{name} is not installed "
        f"(metaloss {metaloss.__version__} does not ship it). "
        "Pass --checkpoint with a checkpoint written by `metaloss run`, e.g. RUN_DIR/checkpoints/last.pt"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        raise InferenceError(str(err)) from err


def load_model(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    generator: bool = False,
    device: str | torch.device = "cpu",
    model: str = "default",
) -> FusionModel:
    """The fusion network (and with ``generator=True`` the loss generator) of a checkpoint.

    ``checkpoint``: a checkpoint file written by ``metaloss run`` (or
    ``metaloss.checkpoint.write_model_checkpoint``), a run directory (its ``checkpoints/last.pt`` is
    used), or None for the package's pretrained model named ``model`` (``metaloss.pretrained.MODELS``;
    :class:`NoPretrainedModelError` when it is not installed).
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
            state = _read(Path(path))
        source = f"pretrained model {model!r} ({resource})"
        sources = pretrained.SOURCES.get(model, ("a", "b"))
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        state = _read(path)
        source = str(path)
        sources = ("a", "b")
    config, trainer = state.get("config"), state.get("trainer")
    if not isinstance(config, Mapping) or not isinstance(trainer, Mapping) or "learner" not in trainer:
        raise InferenceError(f"{source}: no config/trainer.learner entries; not a checkpoint of `metaloss run`")
    try:  # the section names of this version ([fusion] of earlier checkpoints is [learner])
        config = upgrade_keys(dict(config))[0]
    except ValueError as err:
        raise InferenceError(f"{source}: {err}") from None

    def build(group: str, key: str, weights: str) -> nn.Module:
        section = config.get(key, {})
        if not isinstance(section, Mapping) or "name" not in section:
            raise InferenceError(f"{source}: no {group} plugin section (with 'name') in the checkpoint's config")
        try:
            net = build_plugin(group, section)
            net.load_state_dict(trainer[weights])
        except (registry.PluginError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise InferenceError(f"{source}: cannot build its {group} network: {err}") from err
        return net.eval().requires_grad_(False).to(device)

    fusion = build("fusion", "learner", "learner")
    gen = None
    if generator:
        if trainer.get("generator") is None:
            raise InferenceError(f"{source}: holds no loss generator weights (trainer.generator)")
        gen = build("loss_generators", "loss_generator", "generator")
    sections = {k: dict(config[k]) for k in ("learner", "loss_generator", "eval") if isinstance(config.get(k), Mapping)}
    return FusionModel(fusion, gen, source, sections, sources)


def load(
    model: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device = "auto",
    generator: bool = False,
) -> FusionModel:
    """A trained model, ready to fuse (``metaloss.load``)::

        model = metaloss.load("default")          # a shipped model: metaloss.pretrained.MODELS
        model = metaloss.load("runs/x")           # a run directory (its checkpoints/last.pt) or a checkpoint
        fused = model.fuse(a, b)                  # what `metaloss fuse` writes, as an array
        model.sources                             # which source goes where: ("infrared", "visible")

    ``model``: the name of a shipped model, else a checkpoint file or run directory (a ``Path`` is
    always a path).  ``device``: ``"auto"`` (CUDA when available, as ``metaloss fuse``), ``"cpu"``,
    ``"cuda:1"``, ...; ``generator``: also load the loss generator (its weight maps,
    :func:`metaloss.deploy.fuse_images` with ``weights=True``).  Raises :class:`InferenceError`.
    """
    from metaloss.experiment import RunError, resolve_device

    try:
        where = resolve_device(device) if isinstance(device, str) else device
    except (RunError, RuntimeError) as err:
        raise InferenceError(str(err)) from None
    if isinstance(model, str) and model in pretrained.MODELS:
        return load_model(None, generator=generator, device=where, model=model)
    path = Path(model)
    if not path.exists():
        raise InferenceError(
            f"{model}: no such checkpoint or run directory, and not a shipped model ({', '.join(pretrained.MODELS)})"
        )
    return load_model(path, generator=generator, device=where)
