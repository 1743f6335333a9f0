"""The CPU parts of the GPU check (benchmarks.gpu_check, gpu_wheels, gpu_run.sh): the comparisons run
against the CPU itself, the wheel set installs offline into CPython 3.12, the runner refuses an empty
folder.  On a GPU, ``python -m benchmarks.gpu_check`` runs them against CUDA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_wheels
from benchmarks.gpu_check import main, run_steps


def test_fuse_and_metrics_steps_write_the_json_and_the_doc_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n<!-- BEGIN gpu -->\nnot yet run on a GPU\n<!-- END gpu -->\n")
    assert main(["--device", "cpu", "--steps", "fuse", "metrics", "--out", str(tmp_path), "--doc", str(doc)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["steps"]) == ["fuse", "metrics"] and report["device"] == "cpu"
    assert report["steps"]["fuse"]["max_grey_diff"] == 0  # the same device: the same image
    assert all(report["steps"]["metrics"][p]["relative"] == 0 for p in ("cddfuse", "vifb", "tdfusion", "mefb"))
    text = doc.read_text()
    assert "not yet run" not in text and "| `fuse` | ok: max difference 0 grey level(s)" in text
    assert text.count("<!-- BEGIN gpu -->") == 1


@pytest.mark.slow  # two meta-steps and four learner steps of the TDFusion problem at 64×64
def test_meta_and_bf16_steps_on_the_cpu(tmp_path):
    steps = run_steps(["meta", "bf16"], "cpu", 600, tmp_path, log=lambda s: None)
    for kind in ("meta", "learner"):
        row = steps["meta"][kind]
        # the "device" is the CPU: its float32 result is the CPU's, bit for bit, and float32 is not float64
        assert row["device_float32_vs_cpu_float64"] == row["cpu_float32_vs_float64"] > 0
        assert row["device_float64_vs_cpu_float64"] == 0 and row["ok"]
    assert 0.99 <= steps["bf16"]["cosine"] < 1 and steps["bf16"]["ok"]  # autocast changed the gradients


def test_a_failing_step_is_recorded_and_a_spent_budget_starts_no_step(tmp_path):
    device = "cuda:99"  # an index no machine here has
    steps = run_steps(["fuse", "metrics"], device, 600, tmp_path, log=lambda s: None)
    assert not steps["fuse"]["ok"] and "exited with status" in steps["fuse"]["error"]
    assert not steps["metrics"]["ok"] and "error" in steps["metrics"]
    steps = run_steps(["fuse"], "cpu", 0, tmp_path, log=lambda s: None)
    assert steps["fuse"]["error"] == "not started: the budget of 0 s was spent"


def test_the_wheel_command_targets_cpython_312_on_manylinux_without_dependencies(tmp_path):
    cmd = gpu_wheels.download_command(tmp_path, gpu_wheels.pins())
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert {cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"} == set(gpu_wheels.PLATFORMS)
    assert [r.split("==")[0] for r in cmd if "==" in r] == list(gpu_wheels.PACKAGES)


def test_pins_name_a_package_that_is_not_installed():
    with pytest.raises(SystemExit, match="no-such-package-xyz is not installed here"):
        gpu_wheels.pins(("no-such-package-xyz",))


def test_wheels_over_the_limit_are_refused(tmp_path):
    (tmp_path / "a.whl").write_bytes(b"x" * 2048)
    assert gpu_wheels.check_size(tmp_path, limit=4096) == 2048
    with pytest.raises(SystemExit, match=r"holds 0\.0 MiB of wheels, over 0 MiB"):
        gpu_wheels.check_size(tmp_path, limit=1024)


@pytest.mark.slow  # builds the project's wheel (a few seconds)
def test_the_project_wheel_carries_the_plugin_entry_points(tmp_path):
    subprocess.run(gpu_wheels.project_wheel_command(tmp_path), check=True, capture_output=True)
    (wheel,) = tmp_path.glob("metaloss-*.whl")
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    for name in ("tdfusion = metaloss_tdfusion", "segmentation = metaloss_tdfusion", "restormer = metaloss.models"):
        assert name in entry_points


def python312() -> str | None:
    """A CPython 3.12 with pip that runs here (PATH, else pyenv's versions), or None."""
    found = [shutil.which("python3.12"), *map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for py in filter(None, found):
        probe = subprocess.run(
            [py, "-c", "import pip, sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            return py
    return None


@pytest.mark.skipif(not (gpu_check.ROOT / "wheels").is_dir(), reason="no wheels/ (python -m benchmarks.gpu_wheels)")
def test_the_wheel_set_installs_offline_into_cpython_312_and_pydantic_imports(tmp_path):
    """What gpu_run.sh does first; the machine's own packages (torch) are not needed for this part."""
    py = python312()
    if py is None:
        pytest.skip("no CPython 3.12 with pip here to install the wheels into")
    wheels = sorted(str(p) for p in (gpu_check.ROOT / "wheels").glob("*.whl"))
    pip = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(tmp_path), *wheels]
    subprocess.run(pip, check=True, capture_output=True)
    probe = (
        "import sys, importlib.metadata as md; sys.path.insert(0, sys.argv[1]); import pydantic, tomli_w; "
        "print(sorted(e.name for e in md.entry_points(group='metaloss.tasks')))"
    )
    out = subprocess.run([py, "-c", probe, str(tmp_path)], check=True, capture_output=True, text=True).stdout
    assert "segmentation" in out and "reconstruction" in out


def test_the_runner_refuses_a_folder_without_wheels(tmp_path):
    proc = subprocess.run(
        ["bash", str(gpu_check.ROOT / "benchmarks" / "gpu_run.sh")],
        env={"PATH": "/usr/bin:/bin", "WHEELS": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"no wheels in {tmp_path}" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the cuda tests would run, not skip")
def test_the_tests_step_collects_only_the_modules_with_cuda_tests_and_here_skips_them():
    assert gpu_check.ROOT / "tests" / "utils" / "test_cuda.py" in gpu_check.cuda_test_files()
    result = gpu_check.tests_check(300)
    assert result["ok"] and " skipped" in result["summary"] and "passed" not in result["summary"]
