"""``metaloss new-plugin NAME``: names, refusals, the generated files, and a scaffolded package that
installs, passes its own tests (metaloss.testing) and runs through ``metaloss run``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib

import pytest

from metaloss.cli import main
from metaloss.scaffold import PluginNames, ScaffoldError, create_plugin, render

GROUPS = ("fusion", "loss_generators", "tasks", "datasets")


@pytest.mark.parametrize(
    "name, entry, dist, module, cls",
    [
        ("depth", "depth", "metaloss-depth", "metaloss_depth", "Depth"),
        ("edge-aware", "edge_aware", "metaloss-edge-aware", "metaloss_edge_aware", "EdgeAware"),
        ("edge_aware2", "edge_aware2", "metaloss-edge-aware2", "metaloss_edge_aware2", "EdgeAware2"),
        ("metaloss-saliency", "saliency", "metaloss-saliency", "metaloss_saliency", "Saliency"),
    ],
)
def test_names(name, entry, dist, module, cls):
    assert PluginNames.from_name(name) == PluginNames(entry=entry, distribution=dist, module=module, cls=cls)


@pytest.mark.parametrize("name", ["Depth", "1depth", "de pth", "", "depth-", "a--b", "a_-b", "déjà", "class"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ScaffoldError, match="invalid plugin name"):
        PluginNames.from_name(name)


def test_a_name_registered_by_another_distribution_is_refused(tmp_path):
    with pytest.raises(
        ScaffoldError, match=r"'tdfusion' is already registered in metaloss\.loss_generators \(by metaloss\)"
    ):
        create_plugin("tdfusion", tmp_path)
    assert not (tmp_path / "metaloss-tdfusion").exists()


def test_generated_files_are_complete_and_valid():
    names = PluginNames.from_name("edge-aware")
    files = render(names)
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        ".gitignore",
        "edge_aware.toml",
        "tests/test_edge_aware.py",
        *(f"metaloss_edge_aware/{m}.py" for m in ("__init__", "fusion", "loss_generator", "task", "dataset")),
    }
    for path, text in files.items():
        assert "$" not in text, path  # every placeholder substituted
        if path.endswith(".py"):
            ast.parse(text, filename=path)
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["name"] == "metaloss-edge-aware"
    assert project["project"]["entry-points"] == {
        "metaloss.fusion": {"edge_aware": "metaloss_edge_aware.fusion:EdgeAwareFusion"},
        "metaloss.loss_generators": {"edge_aware": "metaloss_edge_aware.loss_generator:EdgeAwareLossGenerator"},
        "metaloss.tasks": {"edge_aware": "metaloss_edge_aware.task:EdgeAwareTask"},
        "metaloss.datasets": {"edge_aware": "metaloss_edge_aware.dataset:EdgeAwareDataset"},
    }
    experiment = tomllib.loads(files["edge_aware.toml"])
    assert {experiment[s]["name"] for s in ("data", "val_data", "learner", "loss_generator", "objective")} == {
        "edge_aware"
    }


def test_cli_creates_the_package_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["new-plugin", "myplug", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "metaloss-myplug"
    assert f"created {root}/" in out and "pip install -e" in out and "metaloss run" in out
    assert (root / "metaloss_myplug" / "task.py").is_file() and (root / "tests" / "test_myplug.py").is_file()
    # a second time: refused, nothing changed
    (root / "metaloss_myplug" / "task.py").write_text("# mine\n")
    assert main(["new-plugin", "myplug", "--out", str(tmp_path)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (root / "metaloss_myplug" / "task.py").read_text() == "# mine\n"
    # --force rewrites the scaffold's files and keeps the others
    (root / "NOTES.md").write_text("keep\n")
    assert main(["new-plugin", "myplug", "--out", str(tmp_path), "--force"]) == 0
    assert "class MyplugTask" in (root / "metaloss_myplug" / "task.py").read_text()
    assert (root / "NOTES.md").read_text() == "keep\n"


def test_cli_bad_name_is_a_usage_error(tmp_path, capsys):
    assert main(["new-plugin", "My Plugin", "--out", str(tmp_path)]) == 2
    assert "invalid plugin name 'My Plugin'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# -- a scaffolded package, installed --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory, install_package):
    root, _ = create_plugin("myplug", tmp_path_factory.mktemp("scaffold"))
    return root, install_package(root)


@pytest.mark.slow
def test_scaffolded_package_passes_its_own_tests(scaffolded, plugin_env):
    root, site = scaffolded
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")]
    proc = subprocess.run(cmd, env=plugin_env(site), capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout  # entry points included


@pytest.mark.slow
def test_scaffolded_package_registers_and_runs(scaffolded, plugin_env, tmp_path):
    root, site = scaffolded
    env = plugin_env(site)
    proc = subprocess.run(
        [sys.executable, "-m", "metaloss", "plugins", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for group in GROUPS:
        info = {i["name"]: i for i in found[group]}["myplug"]
        assert info["distribution"] == "metaloss-myplug" and info["error"] is None
    out = tmp_path / "run"
    args = [sys.executable, "-m", "metaloss", "run", str(root / "myplug.toml"), "--out", str(out), "--quiet"]
    for item in (
        "device='cpu'",
        "meta.epochs=1",
        "meta.meta_steps=2",
        "meta.learner_steps=2",
        "data.num_images=4",
        "val_data.num_images=2",
        "eval.num_images=2",
        "eval.metrics=['EN']",
    ):
        args += ["--set", item]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {"task/mIoU", "task/pixel_accuracy", "fusion/EN"} <= set(summary["metrics"])
    config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    assert config["objective"] == {"name": "myplug", "width": 16, "ignore_index": 255}  # num_classes: from the dataset
    assert summary["parameters"]["objective"] == (9 * 16 + 16) + (9 * 16 * 16 + 16) + (16 * 2 + 2)  # 2 classes
    assert all(
        json.loads(line)["loss_generator_grad_norm"] > 0
        for line in (out / "log.jsonl").read_text().splitlines()
        if json.loads(line)["phase"] == "meta"
    )
