import importlib.metadata as md
import json

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
    """What ``registry`` reads of an installed distribution: its name and version."""

    def __init__(self, name: str, version: str = "9.9"):
        self.metadata, self.version = {"Name": name}, version


def task_ep(name: str, value: str, dist: str) -> md.EntryPoint:
    """A ``metaloss.tasks`` entry point of the (fake) installed distribution ``dist``."""
    return md.EntryPoint(name, value, "metaloss.tasks")._for(FakeDist(dist))


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
    broken = next(i for i in found["tasks"] if i.name == "broken")
    assert "ModuleNotFoundError" in broken.error
    assert all(i.error is None for i in found["tasks"] if i.name != "broken")
    with pytest.raises(registry.PluginImportError, match=r"broken.*failed to import"):
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
    with pytest.raises(
        registry.PluginImportError,
        match=r"tasks plugin 'exploding' \(exploding_plugin:Task\) failed to import: RuntimeError: boom at import",
    ):
        registry.load("tasks", "exploding")
    with pytest.raises(ConfigError) as info:
        load_config({"loss_generator": {"name": "conv"}, "objective": {"name": "exploding"}})
    assert "objective.name" in str(info.value) and "boom at import" in str(info.value)
    cfg = tmp_path / "exp.toml"
    cfg.write_text("[loss_generator]\nname = 'conv'\n[objective]\nname = 'exploding'\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "objective.name" in err and "RuntimeError: boom at import" in err
    assert not (tmp_path / "run").exists()  # nothing written
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "exploding" in out and "ERROR: RuntimeError: boom at import" in out  # the others still listed
    assert "segmentation" in out


SEGMENTATION = "metaloss_tdfusion.segmentation:SegmentationTask"
RECONSTRUCTION = "metaloss_refusion.reconstruction:ReconstructionTask"


def test_a_name_two_distributions_register_is_refused_until_the_config_names_one(monkeypatch, tmp_path, capsys):
    from metaloss.cli import main
    from metaloss.config import ConfigError, load_config

    fake_entry_points(
        monkeypatch,
        [task_ep("edges", SEGMENTATION, "metaloss-edges"), task_ep("edges", RECONSTRUCTION, "Other_Plugins")],
    )
    with pytest.raises(registry.AmbiguousPluginError) as info:
        registry.load("tasks", "edges")
    message = str(info.value)
    assert "metaloss-edges, Other_Plugins" in message
    assert 'name = "metaloss-edges:edges" or name = "other-plugins:edges"' in message
    assert registry.load("tasks", "metaloss-edges:edges").__name__ == "SegmentationTask"
    assert registry.load("tasks", "other_plugins:edges").__name__ == "ReconstructionTask"  # as pip compares names
    for wrong in ("nobody:edges", ":edges"):
        with pytest.raises(
            registry.UnknownPluginError, match=rf"'{wrong}'; available: metaloss-edges:edges, other-plugins:edges$"
        ):
            registry.load("tasks", wrong)

    with pytest.raises(ConfigError, match=r"objective\.name: tasks plugin 'edges' is registered by 2 distributions"):
        load_config({"loss_generator": {"name": "conv"}, "objective": {"name": "edges"}})
    cfg = load_config({"loss_generator": {"name": "conv"}, "objective": {"name": "other-plugins:edges"}})
    assert 'name = "other-plugins:edges"' in cfg.to_toml()
    path = tmp_path / "exp.toml"
    path.write_text("[loss_generator]\nname = 'conv'\n[objective]\nname = 'edges'\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "objective.name" in err and "metaloss-edges:edges" in err and "other-plugins:edges" in err
    assert not (tmp_path / "run").exists()


def test_a_plugin_cannot_replace_a_builtin(monkeypatch):
    fake_entry_points(monkeypatch, [task_ep("segmentation", RECONSTRUCTION, "metaloss-edges")])
    with pytest.raises(
        registry.AmbiguousPluginError, match=r'\(metaloss, metaloss-edges\).*name = "metaloss:segmentation"'
    ):
        registry.load("tasks", "segmentation")
    assert registry.load("tasks", "metaloss:segmentation").__name__ == "SegmentationTask"
    assert registry.load("tasks", "metaloss-edges:segmentation").__name__ == "ReconstructionTask"
    assert registry.load("tasks", "metaloss:reconstruction").__name__ == "ReconstructionTask"  # unshared names too
    shared = [i for i in registry.list_plugins()["tasks"] if i.name == "segmentation"]
    assert [(i.distribution, i.config_name, i.shared_with) for i in shared] == [
        ("metaloss", "metaloss:segmentation", ("metaloss-edges",)),
        ("metaloss-edges", "metaloss-edges:segmentation", ("metaloss",)),
    ]


def test_plugins_command_lists_every_registration_of_a_shared_name(monkeypatch, capsys):
    from metaloss.cli import main

    fake_entry_points(monkeypatch, [task_ep("segmentation", RECONSTRUCTION, "metaloss-edges")])
    assert main(["plugins"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("segmentation ")]
    assert len(lines) == 2
    assert (
        "metaloss 0.1.0" in lines[0]
        and 'AMBIGUOUS: also registered by metaloss-edges; use name = "metaloss:segmentation"' in lines[0]
    )
    assert "metaloss-edges 9.9" in lines[1] and 'use name = "metaloss-edges:segmentation"' in lines[1]
    assert main(["plugins", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)["tasks"]
    assert [(e["distribution"], e["object"]) for e in tasks if e["name"] == "segmentation"] == [
        ("metaloss", SEGMENTATION),
        ("metaloss-edges", RECONSTRUCTION),
    ]


@pytest.mark.parametrize(
    "module,source,reason",
    [
        ("exit_3_plugin", "import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("exit_plugin", "import sys\nsys.exit()\n", "SystemExit"),
        ("stop_plugin", "class Stop(BaseException): pass\nraise Stop('gone')\n", "stop_plugin.Stop: gone"),
    ],
    ids=["sys.exit(3)", "sys.exit()", "BaseException"],
)
def test_a_plugin_that_exits_on_import_is_reported_like_any_broken_plugin(
    monkeypatch, tmp_path, capsys, module, source, reason
):
    from metaloss.cli import main

    (tmp_path / f"{module}.py").write_text(source + "class Task: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, [task_ep("exiting", f"{module}:Task", "exiting-plugin")])
    with pytest.raises(registry.PluginImportError) as info:
        registry.load("tasks", "exiting")
    assert str(info.value) == f"tasks plugin 'exiting' ({module}:Task) failed to import: {reason}"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"ERROR: {reason}" in out and "segmentation" in out


def test_ctrl_c_during_a_plugin_import_still_stops_the_program(monkeypatch, tmp_path):
    (tmp_path / "interrupted_plugin.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, [task_ep("interrupted", "interrupted_plugin:Task", "slow-plugin")])
    with pytest.raises(KeyboardInterrupt):
        registry.load("tasks", "interrupted")
    with pytest.raises(KeyboardInterrupt):
        registry.list_plugins()
