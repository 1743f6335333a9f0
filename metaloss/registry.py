"""Plugin registry on entry points.

Groups: ``metaloss.fusion``, ``metaloss.loss_generators``, ``metaloss.tasks``, ``metaloss.datasets``.
A third-party package registers a plugin with, in its ``pyproject.toml``::

    [project.entry-points."metaloss.tasks"]
    depth = "my_package.depth:DepthTask"

Every entry point names a class (or factory function).  Its keyword arguments are its config: they
are validated against ``Config`` (a pydantic model) when the object has one, or else against a model
built from its signature.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import traceback
import typing
from dataclasses import dataclass
from typing import Any

import pydantic

GROUPS: dict[str, str] = {
    "fusion": "metaloss.fusion",
    "loss_generators": "metaloss.loss_generators",
    "tasks": "metaloss.tasks",
    "datasets": "metaloss.datasets",
}


class PluginError(LookupError):
    """A plugin could not be found or loaded."""


class UnknownPluginError(PluginError):
    def __init__(self, group: str, name: str, available: list[str]):
        self.group, self.name, self.available = group, name, available
        names = ", ".join(sorted(available)) or "(none registered)"
        super().__init__(f"unknown {group} plugin {name!r}; available: {names}")


class PluginImportError(PluginError):
    def __init__(self, group: str, name: str, value: str, error: BaseException):
        self.group, self.name, self.value, self.error = group, name, value, error
        super().__init__(
            f"{group} plugin {name!r} ({value}) failed to import: {type(error).__name__}: {error}"
        )


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as ``metaloss plugins`` reports it."""

    group: str
    name: str
    value: str
    distribution: str
    version: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "error": self.error,
        }


def _group(group: str) -> str:
    if group in GROUPS:
        return GROUPS[group]
    if group in GROUPS.values():
        return group
    raise KeyError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")


def _entry_points(group: str) -> dict[str, md.EntryPoint]:
    # The first registration of a name wins; duplicates are ignored deterministically (sorted by dist).
    found: dict[str, md.EntryPoint] = {}
    eps = sorted(md.entry_points(group=_group(group)), key=lambda ep: (ep.name, _dist_name(ep)))
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def available(group: str) -> list[str]:
    """Names registered in ``group`` (importing nothing)."""
    return sorted(_entry_points(group))


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``.

    Raises ``UnknownPluginError`` (with the available names) or ``PluginImportError``.
    """
    eps = _entry_points(group)
    if name not in eps:
        raise UnknownPluginError(group, name, list(eps))
    ep = eps[name]
    try:
        return ep.load()
    except Exception as err:  # a broken plugin must not break the caller's error handling
        raise PluginImportError(group, name, ep.value, err) from err


def list_plugins(import_check: bool = True) -> dict[str, list[PluginInfo]]:
    """Every registered plugin by group; with ``import_check`` each one is imported and errors recorded."""
    out: dict[str, list[PluginInfo]] = {}
    for short in GROUPS:
        infos = []
        for name, ep in sorted(_entry_points(short).items()):
            dist = getattr(ep, "dist", None)
            error = None
            if import_check:
                try:
                    ep.load()
                except Exception as err:
                    last = traceback.format_exception_only(type(err), err)[-1].strip()
                    error = last
            infos.append(
                PluginInfo(
                    group=short,
                    name=name,
                    value=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else "?",
                    version=dist.version if dist is not None else "?",
                    error=error,
                )
            )
        out[short] = infos
    return out


def config_model(obj: Any) -> type[pydantic.BaseModel]:
    """The pydantic model of ``obj``'s keyword arguments: ``obj.Config``, or one built from its signature.

    Parameters without a default are required; ``*args``/``**kwargs`` and the names in
    ``INJECTED`` (filled in by the experiment builder) are left out.  NaN and infinite floats are refused.
    """
    explicit = getattr(obj, "Config", None)
    if isinstance(explicit, type) and issubclass(explicit, pydantic.BaseModel):
        return explicit
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:  # resolve string annotations (``from __future__ import annotations``), keeping Annotated[...]
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(target).parameters.items():
        if pname == "self" or pname in INJECTED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(pname, p.annotation if p.annotation is not inspect.Parameter.empty else Any)
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[pname] = (annotation, default)
    model_name = f"{getattr(obj, '__name__', 'Plugin')}Config"
    return pydantic.create_model(  # type: ignore[call-overload]
        model_name,
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
        **fields,
    )


#: Keyword arguments that the experiment builder passes itself (not user config).
INJECTED = frozenset({"split"})
