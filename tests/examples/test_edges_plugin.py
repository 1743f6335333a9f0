"""The third-party plugin package examples/plugins/metaloss-edges: installed on its own (into a private
folder, see the ``install_package`` fixture), found by metaloss through its entry points only, and run
through ``metaloss run``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from metaloss import registry

REPO = Path(__file__).resolve().parents[2]
EDGES = REPO / "examples" / "plugins" / "metaloss-edges"
SHRINK = [
    "device='cpu'",
    "meta.epochs=1",
    "meta.meta_steps=2",
    "meta.learner_steps=2",
    "data.num_images=4",
    "val_data.num_images=2",
    "eval.num_images=2",
    "eval.metrics=['EN', 'SD']",
]


@pytest.fixture(scope="module")
def site(install_package):
    return install_package(EDGES)


def metaloss_cli(args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "metaloss", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_metaloss_itself_does_not_know_the_plugin():
    """No edit of metaloss: its code and metadata never name the package, and this process (where it is
    not installed) does not see it."""
    sources = [p.read_text(encoding="utf-8") for p in (REPO / "metaloss").rglob("*.py")]
    sources.append((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert not any("metaloss_edges" in s or "metaloss-edges" in s for s in sources)
    assert "edges" not in registry.available("tasks") and "pixel_mlp" not in registry.available("loss_generators")


def test_installed_package_registers_its_plugins(site, plugin_env):
    proc = metaloss_cli(["plugins", "--json"], plugin_env(site))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    task = {i["name"]: i for i in found["tasks"]}["edges"]
    generator = {i["name"]: i for i in found["loss_generators"]}["pixel_mlp"]
    for info, value in (
        (task, "metaloss_edges.task:EdgeTask"),
        (generator, "metaloss_edges.generator:PixelMLPLossGenerator"),
    ):
        assert info == {
            "name": info["name"],
            "object": value,
            "distribution": "metaloss-edges",
            "version": "0.1.0",
            "error": None,
        }


@pytest.mark.slow
def test_metaloss_run_with_the_plugin(site, plugin_env, tmp_path):
    out = tmp_path / "run"
    args = ["run", str(EDGES / "edges_synthetic.toml"), "--out", str(out), "--quiet"]
    for item in SHRINK:
        args += ["--set", item]
    proc = metaloss_cli(args, plugin_env(site))
    assert proc.returncode == 0, proc.stderr
    config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    # the plugins' options are resolved from their signatures, defaults included
    assert config["objective"] == {
        "name": "edges",
        "source": "both",
        "threshold": 0.5,
        "width": 16,
        "depth": 3,
        "balanced": True,
        "tolerance": 1,
    }
    assert config["loss_generator"] == {
        "name": "pixel_mlp",
        "hidden": 16,
        "layers": 2,
        "gradient_weights": True,
        "temperature": 1.0,
        "context": 5,
    }
    records = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    meta = [r for r in records if r["phase"] == "meta"]
    assert len(meta) == 2 and all(r["loss_generator_grad_norm"] > 0 for r in meta)  # the meta-gradient reaches G
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs"] == 1 and (out / "checkpoints" / "last.pt").is_file()
    metrics = summary["metrics"]
    assert {"task/precision", "task/recall", "task/F1", "task/IoU", "fusion/EN", "fusion/SD"} <= set(metrics)
    assert all(0 <= metrics[f"task/{k}"] <= 1 for k in ("precision", "recall", "F1", "IoU"))
    assert summary["parameters"]["loss_generator"] == 16 * 6 + 16 + 16 * 16 + 16 + 4 * 16 + 4


def test_bad_plugin_option_is_refused_before_any_work(site, plugin_env, tmp_path):
    out = tmp_path / "run"
    proc = metaloss_cli(
        ["run", str(EDGES / "edges_synthetic.toml"), "--out", str(out), "--set", "objective.source='thermal'"],
        plugin_env(site),
    )
    assert proc.returncode == 2 and "objective.source" in proc.stderr and not out.exists()


@pytest.mark.slow
def test_the_plugins_own_tests_pass_against_the_installed_package(site, plugin_env):
    """Its tests (metaloss.testing contracts, meta-gradient vs finite difference, check_distribution)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::metaloss.testing.PluginContractWarning",
        str(EDGES / "tests"),
    ]
    proc = subprocess.run(cmd, env=plugin_env(site), capture_output=True, text=True, timeout=300, cwd=EDGES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" not in proc.stdout and " passed" in proc.stdout, proc.stdout
