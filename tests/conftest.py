"""Shared fixtures.  Tests that need ../shared/data skip only when that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Several pytest-xdist workers on 2 cores: one intra-op thread each avoids oversubscription,
# which otherwise makes double-backward tests tens of times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
os.environ.setdefault("YOLO_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run where torch sees a CUDA device, and are skipped with the reason elsewhere."""
    if torch.cuda.is_available():
        return
    reason = f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none"
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test images not found: {SHARED_DATA} is absent (CI requires it)")
    return SHARED_DATA


@pytest.fixture
def repo() -> Path:
    return REPO


# -- plugin packages installed for a test (examples/plugins/*, scaffolded packages) ---------------------------
def _plugin_env(*site_dirs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in site_dirs), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", YOLO_OFFLINE="1")
    return env


@pytest.fixture(scope="session")
def plugin_env():
    """``plugin_env(*site_dirs) -> env``: environment for a subprocess that sees the packages installed
    into ``site_dirs`` (on PYTHONPATH), single-threaded, without this pytest's PYTEST_* variables."""
    return _plugin_env


@pytest.fixture(scope="session")
def install_package(tmp_path_factory):
    """``install_package(folder) -> site``: pip-install the package in ``folder`` (its own pyproject.toml)
    from a copy, offline and without dependencies, into a private ``site`` folder.

    Nothing goes into the test environment (so its registry, and tests/test_registry.py, never see the
    package): tests use it in subprocesses with the ``plugin_env(site)`` environment.  Each xdist
    worker installs its own copy in its own temporary folder, so workers never race.
    """
    import shutil
    import subprocess
    import sys

    done: dict[Path, Path] = {}

    def install(folder: Path) -> Path:
        folder = Path(folder).resolve()
        if folder in done:
            return done[folder]
        try:
            import setuptools  # noqa: F401  (the build backend, used without build isolation: offline)
        except ImportError:
            pytest.fail(
                "installing a plugin package needs setuptools in the test environment: pip install -e '.[test]'"
            )
        root = tmp_path_factory.mktemp(folder.name)
        source, site = root / "src", root / "site"
        shutil.copytree(
            folder, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
        )
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(source),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode:
            pytest.fail(f"pip install of {folder} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        done[folder] = site
        return site

    return install
