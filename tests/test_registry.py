import importlib.metadata as md

import pytest

from metaloss import registry


def test_builtin_plugins_are_registered_with_their_distribution():
    found = registry.list_plugins()
    assert set(found) == {"fusion", "loss_generators", "tasks", "datasets"}
    names = {g: {i.name for i in infos} for g, infos in found.items()}
    assert {"restormer", "dense"} <= names["fusion"]
    assert {"tdfusion", "refusion", "sigmoid"} <= names["loss_generators"]
    assert "segmentation" in names["tasks"] and "synthetic" in names["datasets"]
    # plugins of other installed packages (pip install -e examples/plugins/metaloss-edges) may be listed too
    builtin = [i for infos in found.values() for i in infos if i.distribution == "metaloss"]
    assert {i.name for i in builtin} >= {"restormer", "dense", "tdfusion", "segmentation", "synthetic"}
    assert all(i.error is None for i in builtin)


def test_unknown_name_lists_available():
    with pytest.raises(registry.UnknownPluginError) as info:
        registry.load("fusion", "nope")
    assert "restormer" in str(info.value) and info.value.available


class FakeDist:
    metadata = {"Name": "broken-plugin"}
    version = "9.9"


def fake_entry_points(monkeypatch, extra):
    real = md.entry_points

    def entry_points(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "metaloss.tasks":
            eps += extra
        return md.EntryPoints(eps)

    monkeypatch.setattr(md, "entry_points", entry_points)


def test_a_plugin_that_fails_to_import_is_reported_and_does_not_break_others(monkeypatch):
    ep = md.EntryPoint("broken", "metaloss_no_such_module.task:Task", "metaloss.tasks")
    fake_entry_points(monkeypatch, [ep])
    found = registry.list_plugins()
    broken = [i for i in found["tasks"] if i.name == "broken"][0]
    assert "ModuleNotFoundError" in broken.error
    assert all(i.error is None for i in found["tasks"] if i.name != "broken")
    with pytest.raises(registry.PluginImportError, match="broken.*failed to import"):
        registry.load("tasks", "broken")
    assert registry.load("tasks", "segmentation").__name__ == "SegmentationTask"


def test_config_model_from_signature():
    def factory(width: int = 4, name: str = "x", *, depth: int, split: str = "train"):
        return None

    model = registry.config_model(factory)
    assert model(depth=2).model_dump() == {"width": 4, "name": "x", "depth": 2}
    with pytest.raises(Exception, match="depth"):
        model()
    with pytest.raises(Exception, match="Extra"):
        model(depth=1, height=3)


def test_unknown_group():
    with pytest.raises(KeyError, match="groups"):
        registry.available("nope")


def test_a_plugin_that_raises_on_import_is_a_clear_error_everywhere(monkeypatch, tmp_path, capsys):
    from metaloss.cli import main
    from metaloss.config import ConfigError, load_config

    (tmp_path / "exploding_plugin.py").write_text("raise RuntimeError('boom at import')\nclass Task: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, [md.EntryPoint("exploding", "exploding_plugin:Task", "metaloss.tasks")])
    with pytest.raises(registry.PluginImportError, match=r"tasks plugin 'exploding' \(exploding_plugin:Task\) failed to import: RuntimeError: boom at import"):
        registry.load("tasks", "exploding")
    with pytest.raises(ConfigError) as info:
        load_config({"task": {"name": "exploding"}})
    assert "task.name" in str(info.value) and "boom at import" in str(info.value)
    cfg = tmp_path / "exp.toml"
    cfg.write_text("[task]\nname = 'exploding'\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "task.name" in err and "RuntimeError: boom at import" in err
    assert not (tmp_path / "run").exists()  # nothing written
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "exploding" in out and "ERROR: RuntimeError: boom at import" in out  # the others still listed
    assert "segmentation" in out
