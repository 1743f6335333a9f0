import json

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
    assert {e["distribution"] for e in data["loss_generators"] if e["name"] in ("tdfusion", "refusion", "conv")} == {"metaloss"}


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
