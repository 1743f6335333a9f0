import json
import os
import subprocess
import sys
from pathlib import Path

from metaloss.cli import main


def test_plugins_lists_groups_with_distribution(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for group in ("metaloss.fusion:", "metaloss.loss_generators:", "metaloss.tasks:", "metaloss.datasets:"):
        assert group in out
    assert "restormer" in out and "metaloss 0.1.0" in out


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {e["name"] for e in data["fusion"]} >= {"restormer", "dense"}
    # (plugins of other installed packages, e.g. examples/plugins/metaloss-edges, may be listed too)
    assert all(e["error"] is None for g in data.values() for e in g if e["distribution"] == "metaloss")
    assert {e["distribution"] for e in data["loss_generators"] if e["name"] in ("tdfusion", "refusion", "conv")} == {
        "metaloss"
    }


def test_bad_config_fails_before_work_with_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[meta]\ninner_steps = 0\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "meta.inner_steps" in err
    assert not (tmp_path / "run").exists()


def test_check_prints_resolved_config(tmp_path, capsys, repo):
    assert main(["run", str(repo / "examples" / "quickstart.toml"), "--check", "--set", "meta.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs = 7" in out and 'encoder = "mit_b0"' in out


def test_plot_of_a_non_run_directory_fails_clearly(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "log.jsonl" in capsys.readouterr().err


def test_run_needs_config_or_resume(capsys):
    assert main(["run"]) == 2
    assert "CONFIG" in capsys.readouterr().err


# -- one clear line, no traceback, before any work ----------------------------------------------------------
def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("metaloss: error: ")]


def test_check_refuses_an_unknown_device(repo, capsys):
    assert main(["run", str(repo / "examples" / "quickstart.toml"), "--check", "--set", "device='tpu:7'"]) == 2
    err = capsys.readouterr().err
    assert "device: unknown device 'tpu:7'; valid: auto, cpu, cuda" in err


def test_an_out_that_is_a_file_or_under_a_file_is_refused_before_work(tmp_path, repo, capsys):
    config = str(repo / "examples" / "quickstart.toml")
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for out, reason in (
        (afile, f"--out {afile}: is a file, not a folder"),
        (afile / "run", f"--out {afile / 'run'}: {afile} is a file, not a folder"),
    ):
        for extra in ([], ["--check"]):
            assert main(["run", config, "--out", str(out), *extra]) == 2
            captured = capsys.readouterr()
            assert _error_lines(captured.err) == [f"metaloss: error: {reason}"] and not captured.out
    assert afile.read_text() == "x"


def test_an_out_in_a_folder_without_write_permission_is_refused(tmp_path, repo, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    assert main(["run", str(repo / "examples" / "quickstart.toml"), "--out", str(locked / "run")]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"metaloss: error: --out {locked / 'run'}: no permission to write in {locked}"]


def test_plot_into_a_folder_writes_curves_png_there(tmp_path, capsys):
    run_dir, target = tmp_path / "run", tmp_path / "figures"
    run_dir.mkdir()
    target.mkdir()
    records = [{"phase": "meta", "inner_loss": 0.5, "outer_loss": 0.4}, {"phase": "learner", "learner_loss": 0.3}]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", str(run_dir), "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target / "curves.png")
    assert (target / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["plot", str(run_dir), "--out", str(blocker / "curves.png")]) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"metaloss: error: cannot write {blocker / 'curves.png'}: {blocker} is a file, not a folder"
    ]


def test_eval_results_into_a_missing_folder_are_refused_before_scoring(tmp_path, capsys):
    import cv2
    import numpy as np

    for folder in ("ir", "vi", "fused"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "a.png"), np.full((48, 48), 100, np.uint8))
    target = tmp_path / "missing" / "scores.json"
    args = ["eval", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"), "--fused", str(tmp_path / "fused")]
    assert main([*args, "--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert f"--json {str(target)!r}: the folder {str(target.parent)!r} does not exist" in captured.err
    assert "Traceback" not in captured.err and not captured.out  # nothing scored


def test_a_closed_stdout_ends_quietly(repo):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `metaloss plugins | head` once head has exited
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "metaloss", "plugins"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 1
