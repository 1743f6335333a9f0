"""Deployment is a layer on top of the core: no core module imports ``metaloss.deploy``.

The core is every module of the ``metaloss`` package outside ``metaloss/deploy/`` except the command
modules that serve ``metaloss fuse`` and ``metaloss export``.  Imports are read from the source (``ast``),
so one inside a function counts as much as one at the top of a file.

``metaloss/__init__.py`` is exempt from that walk as the public facade (docs/api.md): it names
``metaloss.load`` and ``metaloss.FusionModel`` of the deploy layer, imported on first use (module
``__getattr__``); the last test checks that importing it, like any core module, loads no deploy module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import metaloss

PACKAGE = Path(metaloss.__file__).parent
#: The public facade, which imports deploy lazily (see the module docstring).
FACADE = PACKAGE / "__init__.py"
#: The command modules of `metaloss fuse` and `metaloss export`, which use the deploy layer.
DEPLOY_COMMANDS = {"cli/fuse.py", "cli/export.py"}


def _core_modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "deploy" not in p.relative_to(PACKAGE).parts[:1] and p.relative_to(PACKAGE).as_posix() not in DEPLOY_COMMANDS
    ]


def _module_name(path: Path) -> str:
    parts = ["metaloss", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (relative imports resolved), and every ``from X import name``
    as ``X.name`` too (``from metaloss import deploy``)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _is_deploy(name: str) -> bool:
    return name == "metaloss.deploy" or name.startswith("metaloss.deploy.")


def test_the_walk_sees_the_core_and_what_it_imports():
    core = {_module_name(p) for p in _core_modules()}
    assert {"metaloss.experiment", "metaloss.nn.restormer", "metaloss.checkpoint", "metaloss.testing"} <= core
    assert {"metaloss.cli", "metaloss.cli.run", "metaloss.cli.eval"} <= core
    assert not any(_is_deploy(m) for m in core) and not {"metaloss.cli.fuse", "metaloss.cli.export"} & core
    fuse_command = _imported(PACKAGE / "cli" / "fuse.py")
    assert any(_is_deploy(m) for m in fuse_command)  # the walk finds the imports inside functions


def test_no_core_module_imports_deploy():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imported(p) if _is_deploy(m))
        for p in _core_modules()
        if p != FACADE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_loads_no_deploy_module():
    modules = sorted(_module_name(p) for p in _core_modules() if p.name != "__main__.py")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('metaloss.deploy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
