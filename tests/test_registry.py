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
