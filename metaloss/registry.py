"""Plugin registry on entry points.

Groups: ``metaloss.fusion``, ``metaloss.loss_generators``, ``metaloss.tasks``, ``metaloss.datasets``.
A third-party package registers a plugin with, in its ``pyproject.toml``::

    [project.entry-points."metaloss.tasks"]
    depth = "my_package.depth:DepthTask"

Every entry point names a class (or factory function).  Its keyword arguments are its config: they
are validated against ``Config`` (a pydantic model) when the object has one, or else against a model
built from its signature.

Names: a config's ``name = "depth"`` picks the plugin registered as ``depth``.  When several
distributions register one name in a group -- two plugin packages, or a plugin package and this
package's built-ins (distribution ``metaloss``) -- no registration wins: the bare name is refused with
the spellings that pick one, ``name = "DISTRIBUTION:NAME"`` (e.g. ``"my-plugins:depth"``, the
distribution as ``metaloss plugins`` lists it; ``-``, ``_`` and ``.`` and case do not matter in it).
That spelling is accepted wherever a plugin ``name`` is, and also when the name is not shared.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import re
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


class AmbiguousPluginError(PluginError):
    """Several distributions register one bare name: none of them wins silently."""

    def __init__(self, group: str, name: str, distributions: list[str]):
        self.group, self.name, self.distributions = group, name, distributions
        spellings = " or ".join(f'name = "{qualified_name(dist, name)}"' for dist in distributions)
        super().__init__(
            f"{group} plugin {name!r} is registered by {len(distributions)} distributions "
            f"({', '.join(distributions)}); name one as DISTRIBUTION:NAME: {spellings}"
        )


class PluginImportError(PluginError):
    def __init__(self, group: str, name: str, value: str, error: BaseException):
        self.group, self.name, self.value, self.error = group, name, value, error
        #: The exception's last line, e.g. ``"ModuleNotFoundError: No module named 'x'"``.
        self.reason = traceback.format_exception_only(type(error), error)[-1].strip()
        super().__init__(f"{group} plugin {name!r} ({value}) failed to import: {self.reason}")


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as ``metaloss plugins`` reports it.

    ``shared_with``: the other distributions that register the same name in the group; a config
    must then name this one as ``config_name`` (``"dist:name"``).
    """

    group: str
    name: str
    value: str
    distribution: str
    version: str
    error: str | None = None
    shared_with: tuple[str, ...] = ()

    @property
    def config_name(self) -> str:
        """The ``name`` a config uses for this plugin: the bare name unless another distribution shares it."""
        return qualified_name(self.distribution, self.name) if self.shared_with else self.name

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


def short_group(group: str) -> str:
    """The short name of a group given by either name (``"metaloss.fusion"`` or ``"fusion"`` -> ``"fusion"``)."""
    return _group(group).split(".")[-1]


def registrations(group: str) -> dict[str, list[md.EntryPoint]]:
    """Every entry point of ``group`` by bare name, sorted by distribution; two or more under one name
    are a clash that a config resolves with ``"dist:name"``."""
    found: dict[str, list[md.EntryPoint]] = {}
    for ep in sorted(md.entry_points(group=_group(group)), key=lambda ep: (ep.name, _canonical(distribution_name(ep)))):
        found.setdefault(ep.name, []).append(ep)
    return found


def distribution_name(ep: md.EntryPoint) -> str:
    """The name of the installed distribution that registers ``ep`` (``"?"`` if unknown)."""
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _canonical(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``My_Plugins`` and ``my-plugins`` are one."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def qualified_name(distribution: str, name: str) -> str:
    """``"dist:name"``: the spelling that picks ``distribution``'s plugin ``name`` when several register it."""
    return f"{_canonical(distribution)}:{name}"


def available(group: str) -> list[str]:
    """Names registered in ``group`` (importing nothing)."""
    return sorted(registrations(group))


def resolve(group: str, name: str) -> md.EntryPoint:
    """The entry point that ``name`` (a bare name, or ``"dist:name"``) stands for in ``group``.

    A bare name that several distributions register (this package's built-ins included, as
    distribution ``metaloss``) is refused with ``AmbiguousPluginError``; ``UnknownPluginError`` lists
    what is there.
    """
    distribution, colon, bare = name.partition(":")  # a distribution's name has no colon; a plugin's may
    if not colon:
        bare = name
    eps = registrations(group).get(bare, [])
    if colon:
        mine = [ep for ep in eps if _canonical(distribution_name(ep)) == _canonical(distribution)]
        if mine:
            return mine[0]
        raise UnknownPluginError(
            group, name, [qualified_name(distribution_name(ep), bare) for ep in eps] or available(group)
        )
    if len(eps) > 1:
        raise AmbiguousPluginError(group, bare, [distribution_name(ep) for ep in eps])
    if not eps:
        raise UnknownPluginError(group, name, available(group))
    return eps[0]


def _import(group: str, name: str, ep: md.EntryPoint) -> Any:
    """``ep.load()``, with anything the plugin's import raises -- ``sys.exit`` included -- as
    ``PluginImportError``, so one broken plugin cannot end the caller; Ctrl-C still stops it."""
    try:
        return ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        raise PluginImportError(group, name, ep.value, err) from err


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` (bare or ``"dist:name"``, see ``resolve``) in ``group``.

    Raises ``UnknownPluginError``, ``AmbiguousPluginError`` or ``PluginImportError``.
    """
    return _import(group, name, resolve(group, name))


def list_plugins(import_check: bool = True) -> dict[str, list[PluginInfo]]:
    """Every registered plugin by group, each registration of a shared name on its own; with
    ``import_check`` each one is imported and errors recorded."""
    return {
        short: [info for eps in registrations(short).values() for info in _infos(short, eps, import_check)]
        for short in GROUPS
    }


def _infos(group: str, eps: list[md.EntryPoint], import_check: bool) -> list[PluginInfo]:
    """The ``PluginInfo`` of each entry point that registers one name in ``group``."""
    dists = [distribution_name(ep) for ep in eps]
    infos = []
    for i, ep in enumerate(eps):
        error = None
        if import_check:
            try:
                _import(group, ep.name, ep)
            except PluginImportError as err:
                error = err.reason
        dist = getattr(ep, "dist", None)
        infos.append(
            PluginInfo(
                group=group,
                name=ep.name,
                value=ep.value,
                distribution=dists[i],
                version=dist.version if dist is not None else "?",
                error=error,
                shared_with=tuple(d for j, d in enumerate(dists) if j != i),
            )
        )
    return infos


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
    return pydantic.create_model(
        model_name,
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
        **fields,
    )


#: Keyword arguments that the experiment builder passes itself (not user config).
INJECTED = frozenset({"split"})
