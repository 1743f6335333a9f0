"""The checkpoint format, and building plugins from the config sections a checkpoint (or a run) holds.

A checkpoint is a ``torch.save`` file of plain data: ``{"format": CHECKPOINT_FORMAT,
"metaloss_version": str, "config": {section: {...}}, "trainer": {...}, **extra}``.  ``metaloss run``
writes the whole training state (``trainer.learner`` / ``trainer.generator`` are the networks' state
dicts; docs/reliability.md lists the rest); a model checkpoint (:func:`write_model_checkpoint`, the
package's pretrained models) holds just ``config.learner``, ``config.loss_generator``, ``config.eval``
and those two state dicts (older files name the learner's section ``fusion``: readers pass the config
through :func:`metaloss.config.upgrade_keys`).  Files are written atomically and read as data only
(:func:`read_checkpoint`).

A plugin section is ``{"name": registered plugin, **options}``; :func:`build_plugin` loads the
plugin, validates the options by its config model and calls it.  The experiment, deployment
(``metaloss.deploy``) and ``metaloss.testing`` all build plugins this way.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import metaloss
from metaloss import registry
from metaloss.utils.io import atomic_torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "build_plugin",
    "build_with",
    "checkpoint_state",
    "plugin_kwargs",
    "read_checkpoint",
    "write_checkpoint",
    "write_model_checkpoint",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (missing, empty, truncated, not a metaloss checkpoint, or naming code)."""


def checkpoint_state(config: Mapping[str, Any], trainer: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint of ``config`` (plain data, by section) and ``trainer`` (state dicts and counters)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "metaloss_version": metaloss.__version__,
        "config": dict(config),
        **extra,
        "trainer": dict(trainer),
    }


def write_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` (from :func:`checkpoint_state`) atomically: a crash leaves the old file or the new one."""
    atomic_torch_save(dict(state), path)
    return Path(path)


def write_model_checkpoint(
    path: str | os.PathLike[str],
    learner: nn.Module,
    learner_config: Mapping[str, Any],
    generator: nn.Module | None = None,
    generator_config: Mapping[str, Any] | None = None,
    *,
    stretch: bool = True,
) -> Path:
    """Write a model checkpoint: what ``metaloss fuse`` / ``metaloss.deploy.load_model`` read.

    ``learner_config`` / ``generator_config``: ``{"name": registered plugin, **options}``; ``stretch``:
    whether the model's fused images are min–max stretched by default (``[eval] stretch`` of its run).
    This is also the format of the package's pretrained models (``metaloss/pretrained/*.pt``).
    """
    config: dict[str, Any] = {"learner": dict(learner_config), "eval": {"stretch": stretch}}
    trainer: dict[str, Any] = {"learner": learner.state_dict()}
    if generator is not None:
        if generator_config is None:
            raise ValueError("generator_config is needed with a generator")
        config["loss_generator"] = dict(generator_config)
        trainer["generator"] = generator.state_dict()
    return write_checkpoint(path, checkpoint_state(config, trainer))


def _allowed_globals() -> list[Any]:
    """The only classes a checkpoint may name besides torch's own tensors and plain containers: numpy's
    array reconstruction, for the numpy random state a run saves (``np.random.get_state()``).  Each
    builds data; none runs code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint as data: ``torch.load(weights_only=True)`` with :func:`_allowed_globals`, so
    a crafted file cannot run code (a pickle names the function to call; anything not allowed is refused
    before it is called).  :class:`CheckpointError` names the file and why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: empty file (0 bytes)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand[^\n.]*", str(err))
        if found is None:
            raise CheckpointError(
                f"cannot read checkpoint {path} (truncated, corrupt or not a torch file): UnpicklingError: {err}"
            ) from err
        raise CheckpointError(
            f"refused to load checkpoint {path}: it names code to run ({found.group(1) or found.group(0)}), and a "
            "metaloss checkpoint holds only tensors, numbers, strings and containers of them; do not use a file of "
            "unknown origin"
        ) from None
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated, corrupt or not a torch file): {type(err).__name__}: {reason}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a metaloss checkpoint (format {CHECKPOINT_FORMAT})")
    return state


# -- plugins from config sections ------------------------------------------------------------------------
def plugin_kwargs(factory: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments to call ``factory`` with: ``options`` validated (and defaulted, python-typed)
    by its config model (``registry.config_model``); pydantic's ``ValidationError`` when they do not fit."""
    return registry.config_model(factory).model_validate(dict(options)).model_dump()


def build_with(factory: Any, options: Mapping[str, Any], *, dataset: Any = None, **injected: Any) -> Any:
    """``factory(**plugin_kwargs(factory, options), **injected)``.  With ``dataset``, options left unset
    (None) are filled from the dataset's attribute of the same name, or of the name the factory maps it to
    in its ``dataset_fields`` (a task's ``{"num_classes": "num_box_classes"}``)."""
    kwargs = plugin_kwargs(factory, options)
    if dataset is not None:
        fields = getattr(factory, "dataset_fields", {})
        for key, value in kwargs.items():
            attr = fields.get(key, key)
            if value is None and hasattr(dataset, attr):
                kwargs[key] = getattr(dataset, attr)
    return factory(**kwargs, **injected)


def build_plugin(group: str, section: Mapping[str, Any], *, dataset: Any = None, **injected: Any) -> Any:
    """The plugin of ``group`` (``"fusion"``, ``"loss_generators"``, ``"tasks"``, ``"datasets"``) that the
    config section ``{"name": ..., **options}`` names, built by :func:`build_with`."""
    if not isinstance(section, Mapping) or "name" not in section:
        raise ValueError(f"no {group} plugin section (with 'name')")
    options = {k: v for k, v in section.items() if k != "name"}
    return build_with(registry.load(group, section["name"]), options, dataset=dataset, **injected)
