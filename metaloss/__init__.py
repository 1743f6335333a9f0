"""metaloss: learn the loss function of an image-fusion network by meta-learning.

The public API (docs/api.md) is what ``__all__`` names::

    import metaloss

    model = metaloss.load("default")                     # a shipped model, a checkpoint or a run directory
    fused = model.fuse(ir, vi)                           # what `metaloss fuse` writes, as an 8-bit array
    scores = metaloss.evaluate_folders("ir/", "vi/", ["fused/"])
    cfg = metaloss.load_config("examples/quickstart.toml", ["train.epochs=1"])
    summary = metaloss.run(cfg, "runs/quickstart")

The root is a facade: every name is imported from its module on first use (module ``__getattr__``),
so ``import metaloss`` stays cheap and the deployment layer (``metaloss.deploy``, which the core never
imports) is loaded only when ``load`` or ``FusionModel`` is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_SOURCES: dict[str, str] = {
    # using a trained model (the deployment layer)
    "load": "metaloss.deploy.model",
    "FusionModel": "metaloss.deploy.model",
    "InferenceError": "metaloss.deploy.model",
    # scoring fused images
    "evaluate": "metaloss.metrics",
    "evaluate_folders": "metaloss.metrics",
    # running an experiment
    "load_config": "metaloss.config",
    "ExperimentConfig": "metaloss.config",
    "ConfigError": "metaloss.config",
    "run": "metaloss.experiment",
    "RunError": "metaloss.experiment",
    # plugins: what a plugin implements, how the core finds and builds one, and its contract checks
    "FusionNet": "metaloss.protocols",
    "LossGenerator": "metaloss.protocols",
    "Task": "metaloss.protocols",
    "PairedDataset": "metaloss.protocols",
    "TargetView": "metaloss.protocols",
    "list_plugins": "metaloss.registry",
    "PluginError": "metaloss.registry",
    "build_plugin": "metaloss.checkpoint",
}
#: Public submodules, also loaded on first use.
_MODULES = ("testing",)

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "FusionModel",
    "FusionNet",
    "InferenceError",
    "LossGenerator",
    "PairedDataset",
    "PluginError",
    "RunError",
    "TargetView",
    "Task",
    "build_plugin",
    "evaluate",
    "evaluate_folders",
    "list_plugins",
    "load",
    "load_config",
    "run",
    "testing",
]


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names come from __getattr__
    from metaloss import testing
    from metaloss.checkpoint import build_plugin
    from metaloss.config import ConfigError, ExperimentConfig, load_config
    from metaloss.deploy.model import FusionModel, InferenceError, load
    from metaloss.experiment import RunError, run
    from metaloss.metrics import evaluate, evaluate_folders
    from metaloss.protocols import FusionNet, LossGenerator, PairedDataset, TargetView, Task
    from metaloss.registry import PluginError, list_plugins
