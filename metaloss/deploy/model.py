"""A trained model for inference: its fusion network (and on request its loss generator) from a checkpoint.

:func:`load_model` reads a checkpoint written by ``metaloss run`` (or
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
from typing import Any

import torch
from torch import nn

import metaloss
from metaloss import pretrained, registry
from metaloss.checkpoint import CheckpointError, build_plugin, read_checkpoint
from metaloss.config import upgrade_keys

__all__ = ["FusionModel", "InferenceError", "NoPretrainedModelError", "load_model"]


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
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        state = _read(path)
        source = str(path)
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
    return FusionModel(fusion, gen, source, sections)
