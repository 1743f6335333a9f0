import pytest

from metaloss.config import ConfigError, ExperimentConfig, load_config, parse_override


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_quickstart_resolves_with_plugin_defaults(repo):
    cfg = load_config(repo / "examples" / "quickstart.toml")
    assert cfg.fusion.name == "restormer" and cfg.fusion.options["dim"] == 16
    assert cfg.task.options["encoder"] == "mit_b0"
    # the resolved config round-trips through TOML
    again = load_config(__import__("tomllib").loads(cfg.to_toml()))
    assert again == cfg


@pytest.mark.parametrize(
    "text,key,reason",
    [
        ("[meta]\ninner_stepz = 2\n", "meta.inner_stepz", "Extra inputs are not permitted"),
        ("[meta]\ninner_steps = 'two'\n", "meta.inner_steps", "valid integer"),
        ("[meta]\ninner_steps = 0\n", "meta.inner_steps", "greater than or equal to 1"),
        ("[optim]\nfusion_lr = -1e-4\n", "optim.fusion_lr", "greater than 0"),
        ("[meta]\nbackend = 'jax'\n", "meta.backend", "torch.func"),
        ("bogus = 1\n", "bogus", "Extra inputs"),
        ("[fusion]\nname = 'restormer'\ndim = 'wide'\n", "fusion.dim", "valid integer"),
        ("[fusion]\nname = 'restormer'\nwidth = 3\n", "fusion.width", "Extra inputs"),
        ("[data]\nnum_images = -3\n", "data.num_images", "greater than or equal to 1"),
        ("[data]\nobjects = [1, 2, 3]\n", "data.objects", "at most 2 items"),
    ],
)
def test_bad_configs_name_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and key in message and reason in message


def test_unknown_plugin_lists_available_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[fusion]\nname = 'nope'\n"))
    message = str(info.value)
    assert "fusion.name" in message and "'nope'" in message and "restormer" in message and "dense" in message


def test_first_order_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="exactly zero gradient"):
        load_config(write(tmp_path, "[meta]\nfirst_order = true\n"))


def test_truncate_must_not_exceed_inner_steps(tmp_path):
    with pytest.raises(ConfigError, match="truncate"):
        load_config(write(tmp_path, "[meta]\ninner_steps = 2\ntruncate = 3\n"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[meta\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_overrides(tmp_path):
    path = write(tmp_path, "[meta]\ninner_steps = 2\n")
    cfg = load_config(path, ["meta.inner_steps=3", "meta.inner_lr=0.01", "name=demo", "data.task_size=[32, 48]"])
    assert cfg.meta.inner_steps == 3 and cfg.meta.inner_lr == 0.01 and cfg.name == "demo"
    assert cfg.data.task_size == (32, 48)
    cfg = load_config(path, ["fusion.name=dense", "fusion.width=8"])
    assert cfg.fusion.options["width"] == 8
    with pytest.raises(ConfigError) as info:
        load_config(path, ["meta.inner_steps=-1"])
    assert "--set meta.inner_steps=-1" in str(info.value) and "meta.inner_steps" in str(info.value)


def test_parse_override_reads_toml_values_else_strings():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=mit_b1") == (["a"], "mit_b1")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")


def test_defaults_are_the_papers():
    cfg = ExperimentConfig()
    assert (cfg.meta.epochs, cfg.meta.meta_steps, cfg.meta.inner_lr) == (40, 200, "learner")
    assert (cfg.optim.fusion_lr, cfg.optim.lr_step, cfg.optim.lr_gamma) == (1e-4, 10, 0.1)
    assert cfg.data.crop_size == 256 and cfg.data.swap_modalities and cfg.loss.alpha == 1.0
    assert cfg.loss.weight_form == "linear"
