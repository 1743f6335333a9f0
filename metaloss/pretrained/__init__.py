"""Where the package's default pretrained model lives.

The default model is a metaloss checkpoint (the format ``metaloss run`` writes; see
``metaloss.checkpoint.read_checkpoint``) shipped as package data: ``metaloss/pretrained/default.pt``.
It is looked up with :mod:`importlib.resources`, so it is found in a source checkout, an editable
install and an installed wheel alike, provided the packaging lists ``metaloss.pretrained`` as a
package and ``*.pt`` as its package data.
"""

from __future__ import annotations

import importlib.resources as resources
from importlib.resources.abc import Traversable

__all__ = ["DEFAULT_NAME", "MODELS", "PACKAGE", "SOURCES", "default_checkpoint", "model_file"]

#: The package holding the pretrained files, and the default model's file name in it.
PACKAGE = __name__
DEFAULT_NAME = "default.pt"
#: The shipped models by name (``metaloss fuse --model NAME``) and what each is for.
MODELS = {
    "default": "infrared-visible fusion, trained on RoadScene (docs/pretrained.md)",
    "medical": "CT/PET/SPECT-MRI fusion, trained on the Harvard atlas pairs (docs/pretrained.md)",
    "mfif": "multi-focus fusion, trained on MFIFB pairs (docs/pretrained.md)",
    "mef": "multi-exposure fusion, trained on MEFB scenes (docs/pretrained.md)",
}
#: Which source each shipped model takes in slot a and slot b (``--a``/``--b``, ``model.fuse(a, b)``);
#: every model was trained with the sources swapped half the time, but this is the order it was scored in.
SOURCES = {
    "default": ("infrared", "visible"),
    "medical": ("CT, PET or SPECT", "MRI"),
    "mfif": ("near focus", "far focus"),
    "mef": ("under-exposed", "over-exposed"),
}


def model_file(model: str) -> str:
    """The file name of a shipped model (``"default"`` -> ``default.pt``); ValueError for an unknown name."""
    if model not in MODELS:
        raise ValueError(f"unknown pretrained model {model!r}; choose from {', '.join(MODELS)}")
    return f"{model}.pt"


def default_checkpoint(package: str | None = None, name: str = DEFAULT_NAME) -> Traversable | None:
    """The default pretrained checkpoint as a package resource, or None when it is not shipped.

    Read it with ``importlib.resources.as_file(resource)`` (a real path even from a zip).
    """
    try:
        resource = resources.files(package or PACKAGE).joinpath(name)
    except ModuleNotFoundError:
        return None
    return resource if resource.is_file() else None
