"""The public API: `metaloss/__init__.py`'s `__all__`, a lazy facade documented in docs/api.md."""

import re
import subprocess
import sys
from pathlib import Path

import metaloss

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_resolves_and_is_documented():
    documented = set(re.findall(r"metaloss\.(\w+)", DOCS.read_text(encoding="utf-8")))
    for name in metaloss.__all__:
        assert getattr(metaloss, name) is not None
        assert name in dir(metaloss)
    assert set(metaloss.__all__) - documented == set()
    assert sorted(metaloss.__all__) == sorted([*metaloss._SOURCES, *metaloss._MODULES])
    assert metaloss.load_config is metaloss.config.load_config
    assert metaloss.evaluate is metaloss.metrics.evaluate


def test_unknown_names_raise_attribute_error():
    try:
        metaloss.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy():
    """`import metaloss` loads neither torch nor the deploy layer; `metaloss.run` loads no deploy module."""
    code = (
        "import sys, metaloss\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('metaloss.')))\n"
        "metaloss.run, metaloss.evaluate, metaloss.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('metaloss.deploy')))\n"
        "metaloss.load\n"
        "print('metaloss.deploy.model' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["[]", "[]", "True"]
