import tomllib
import warnings

import pytest

from metaloss.config import ConfigError, ExperimentConfig, load_config, parse_override

#: The plugin names a config must give: no default names a paper's plugin.
PLUGINS = "[loss_generator]\nname = 'conv'\n[objective]\nname = 'reconstruction'\n"
NETWORKS = tomllib.loads(PLUGINS)


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_quickstart_resolves_with_plugin_defaults(repo):
    cfg = load_config(repo / "examples" / "quickstart.toml")
    assert cfg.learner.name == "restormer" and cfg.learner.options["dim"] == 16
    assert cfg.objective.options["encoder"] == "mit_b0"
    # the resolved config round-trips through TOML
    again = load_config(__import__("tomllib").loads(cfg.to_toml()))
    assert again == cfg


@pytest.mark.parametrize(
    "text,key,reason",
    [
        ("[meta]\ninner_stepz = 2\n", "meta.inner_stepz", "Extra inputs are not permitted"),
        ("[meta]\ninner_steps = 'two'\n", "meta.inner_steps", "valid integer"),
        ("[meta]\ninner_steps = 0\n", "meta.inner_steps", "greater than or equal to 1"),
        ("[optim]\nlearner_lr = -1e-4\n", "optim.learner_lr", "greater than 0"),
        ("[meta]\nbackend = 'jax'\n", "meta.backend", "torch.func"),
        ("bogus = 1\n", "bogus", "Extra inputs"),
        ("[learner]\nname = 'restormer'\ndim = 'wide'\n", "learner.dim", "valid integer"),
        ("[learner]\nname = 'restormer'\nwidth = 3\n", "learner.width", "Extra inputs"),
        ("[data]\nnum_images = -3\n", "data.num_images", "greater than or equal to 1"),
        ("[data]\nobjects = [1, 2, 3]\n", "data.objects", "at most 2 items"),
    ],
)
def test_bad_configs_name_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, PLUGINS + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and key in message and reason in message


def test_unknown_plugin_lists_available_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, PLUGINS + "[learner]\nname = 'nope'\n"))
    message = str(info.value)
    assert "learner.name" in message and "'nope'" in message and "restormer" in message and "dense" in message


def test_first_order_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="exactly zero gradient"):
        load_config(write(tmp_path, PLUGINS + "[meta]\nfirst_order = true\n"))
    with pytest.warns(FutureWarning, match="meta.first_order is deprecated"):  # the resolved config of earlier versions
        assert "first_order" not in load_config(write(tmp_path, PLUGINS + "[meta]\nfirst_order = false\n")).to_toml()


def test_truncate_must_not_exceed_inner_steps(tmp_path):
    with pytest.raises(ConfigError, match="truncate"):
        load_config(write(tmp_path, PLUGINS + "[meta]\ninner_steps = 2\ntruncate = 3\n"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[meta\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_overrides(tmp_path):
    path = write(tmp_path, PLUGINS + "[meta]\ninner_steps = 2\n")
    cfg = load_config(path, ["meta.inner_steps=3", "meta.inner_lr=0.01", "name=demo", "data.task_size=[32, 48]"])
    assert cfg.meta.inner_steps == 3 and cfg.meta.inner_lr == 0.01 and cfg.name == "demo"
    assert cfg.data.task_size == (32, 48)
    cfg = load_config(path, ["learner.name=dense", "learner.width=8"])
    assert cfg.learner.options["width"] == 8
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
    cfg = ExperimentConfig.model_validate(tomllib.loads(PLUGINS))
    assert (cfg.meta.epochs, cfg.meta.meta_steps, cfg.meta.inner_lr) == (40, 200, "learner")
    assert (cfg.optim.learner_lr, cfg.optim.lr_step, cfg.optim.lr_gamma) == (1e-4, 10, 0.1)
    assert cfg.data.crop_size == 256 and cfg.data.swap_modalities and cfg.loss.alpha == 1.0
    assert cfg.loss.weight_form == "linear"


# -- checked before work: what used to fail after training began, or as a traceback ------------------------
@pytest.mark.parametrize(
    "section,options,key,reason",
    [  # sizes the option models refuse, then sizes they allow but the network cannot have
        ("learner", {"name": "restormer", "dim": 0}, "learner.dim", "greater than or equal to 1"),
        (
            "learner",
            {"name": "restormer", "blocks_per_modality": -1},
            "learner.blocks_per_modality",
            "greater than or equal to 0",
        ),
        ("learner", {"name": "dense", "width": 0}, "learner.width", "greater than or equal to 1"),
        ("learner", {"name": "dense", "layers": -1}, "learner.layers", "greater than or equal to 0"),
        ("loss_generator", {"name": "conv", "width": 0}, "loss_generator.width", "greater than or equal to 1"),
        ("loss_generator", {"name": "tdfusion", "dim": 0}, "loss_generator.dim", "greater than or equal to 1"),
        (
            "learner",
            {"name": "restormer", "heads": 3},
            "learner.heads",
            "the 'restormer' network fails with heads = 3 (",
        ),
    ],
)
def test_network_sizes_the_network_cannot_have_are_refused_naming_the_key(section, options, key, reason):
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, section: options})
    message = str(info.value)
    assert f"<config>: {key}: " in message and reason in message
    if "network fails" in reason:
        assert "the default is" in message


def test_building_the_networks_leaves_the_random_state_and_threads_alone():
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_config(
        {**NETWORKS, "learner": {"name": "dense", "width": 3, "growth": 5, "layers": 2}}
    )  # options seen nowhere else
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_the_loss_generator_and_objective_must_be_named():
    with pytest.raises(ConfigError) as info:
        load_config({})
    assert "<config>: loss_generator: Field required" in str(info.value)
    assert "<config>: objective: Field required" in str(info.value)


def test_keys_of_earlier_versions_are_read_with_a_deprecation_warning(tmp_path):
    old = write(
        tmp_path,
        "[fusion]\nname = 'dense'\nwidth = 8\n[loss_generator]\nname = 'conv'\n"
        "[task]\nname = 'reconstruction'\n[optim]\nfusion_lr = 2e-3\ntask_lr = 3e-3\n",
    )
    with pytest.warns(FutureWarning) as caught:
        cfg = load_config(old, ["fusion.growth=4", "optim.task_lr=5e-3"])
    messages = " ".join(str(w.message) for w in caught)
    for before, after in (
        ("fusion", "learner"),
        ("task", "objective"),
        ("optim.fusion_lr", "optim.learner_lr"),
        ("optim.task_lr", "optim.objective_lr"),
        ("fusion.growth", "learner.growth"),
    ):
        assert f"config key {before} is deprecated; write {after} instead" in messages
    assert (cfg.learner.name, cfg.learner.options["width"], cfg.learner.options["growth"]) == ("dense", 8, 4)
    assert cfg.objective.name == "reconstruction"
    assert (cfg.optim.learner_lr, cfg.optim.objective_lr) == (2e-3, 5e-3)
    assert "[learner]" in cfg.to_toml() and "fusion" not in cfg.to_toml()  # written back with the new names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names: no warning
        assert load_config(tomllib.loads(cfg.to_toml())) == cfg
    with pytest.raises(ConfigError, match="fusion and learner are the same key"):
        load_config({**NETWORKS, "fusion": {"name": "dense"}, "learner": {"name": "dense"}})


@pytest.mark.parametrize("device", ["tpu:7", "gpu", "cuda1", "cuda:x", "CPU"])
def test_unknown_devices_are_refused_listing_the_valid_forms(device):
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, "device": device}, check_plugins=False)
    assert f"<config>: device: unknown device {device!r}; valid: auto, cpu, cuda" in str(info.value)
    assert "cuda:N" in str(info.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_device_forms_pass_the_config(device):
    assert load_config({**NETWORKS, "device": device}, check_plugins=False).device == device


def test_bfloat16_on_the_cpu_is_refused_naming_dtype():
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, "device": "cpu", "dtype": "bfloat16"}, check_plugins=False)
    assert "<config>: dtype: 'bfloat16' needs a CUDA device, but device = 'cpu'" in str(info.value)


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_bfloat16_passes_the_config_where_the_device_may_be_cuda(device):
    assert load_config({**NETWORKS, "device": device, "dtype": "bfloat16"}, check_plugins=False).dtype == "bfloat16"


def test_an_unknown_dtype_is_refused_naming_the_key_and_the_valid_values():
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, "dtype": "float16"}, check_plugins=False)
    assert "<config>: dtype: Input should be 'float32', 'float64' or 'bfloat16'" in str(info.value)


@pytest.mark.parametrize(
    "eval_section,key,reason",
    [
        ({"metrics": ["VIF", "XX"]}, "eval.metrics", "profile 'cddfuse' has no metric 'XX'; known: EN, SD, SF, AG, MI"),
        ({"profile": "vifb", "metrics": ["SCD"]}, "eval.metrics", "profile 'vifb' has no metric 'SCD'; known: EN, MI"),
        ({"profile": "nope"}, "eval.profile", "unknown profile 'nope'; known: cddfuse, vifb, tdfusion"),
    ],
)
def test_unknown_metrics_and_profiles_are_refused_listing_the_known_ones(eval_section, key, reason):
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, "eval": eval_section}, check_plugins=False)
    assert f"<config>: {key}: {reason}" in str(info.value)


@pytest.mark.parametrize(
    "text,key",
    [
        ("[meta]\nepochs = true\n", "meta.epochs"),
        ("[meta]\ninner_lr = true\n", "meta.inner_lr"),
        ("[loss]\nalpha = false\n", "loss.alpha"),
        ("[data]\nbatch_size = true\n", "data.batch_size"),
        ("[learner]\nname = 'restormer'\ndim = true\n", "learner.dim"),
    ],
)
def test_a_bool_is_not_taken_as_a_number(tmp_path, text, key):
    path = write(tmp_path, PLUGINS + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: {key}: expected a number, got " in str(info.value)


def test_bool_keys_still_take_bools():
    cfg = load_config({**NETWORKS, "deterministic": False, "data": {"swap_modalities": False}}, check_plugins=False)
    assert cfg.deterministic is False and cfg.data.swap_modalities is False


@pytest.mark.parametrize("name", ["../../..", "/tmp/x", "a/b", "a\\b", "", " "])
def test_a_run_name_that_would_leave_runs_is_refused(name):
    with pytest.raises(ConfigError) as info:
        load_config({**NETWORKS, "name": name}, check_plugins=False)
    reason = f"must be a plain name without '/' or '\\' (the run directory is runs/<name>-<time>); got {name!r}"
    assert f"<config>: name: {reason}" in str(info.value)


def test_validation_images_smaller_than_the_metrics_need_are_refused():
    from metaloss.config import check_eval_size

    cfg = load_config({**NETWORKS, "eval": {"metrics": ["EN", "VIF", "SSIM"]}}, check_plugins=False)
    with pytest.raises(ConfigError) as info:
        check_eval_size(cfg, 24, 64)
    assert str(info.value).endswith(
        "<config>: eval.metrics: VIF needs at least 41x41, but the validation images ([data], split 'val') are 24x64; "
        "use larger validation images or leave these metrics out"
    )
    check_eval_size(cfg, 41, 41)
    check_eval_size(load_config({**NETWORKS, "eval": {"metrics": ["EN", "SSIM"]}}, check_plugins=False), 24, 24)
    check_eval_size(load_config({**NETWORKS, "eval": {"metrics": []}}, check_plugins=False), 2, 2)
    vifb = load_config({**NETWORKS, "eval": {"profile": "vifb", "metrics": ["SSIM"]}}, check_plugins=False)
    with pytest.raises(ConfigError, match="SSIM needs at least 11x11"):
        check_eval_size(vifb, 10, 10)


def _metric_is_finite(profile, spec, size: int) -> bool:
    """On random sources and their rounded average as the fused image (of unrelated noise, MEF-SSIM's
    quality can be negative, where MATLAB's value is complex and ours NaN)."""
    import torch

    g = torch.Generator().manual_seed(size)
    a, b = ((torch.rand(1, 1, size, size, generator=g, dtype=torch.float64) * 255).round() for _ in range(2))
    f = ((a + b) / 2).round()
    try:
        return bool(torch.isfinite(spec.fn(*profile.prepare(f, a, b, spec.sources), None)).all())
    except (ValueError, RuntimeError):
        return False


def test_each_metric_s_minimum_size_is_the_smallest_it_works_on():
    from metaloss.metrics.profiles import PROFILES

    wrong = [
        (profile.name, spec.name, spec.min_size)
        for profile in PROFILES.values()
        for spec in profile.specs
        if not _metric_is_finite(profile, spec, spec.min_size)
        or (spec.min_size > 1 and _metric_is_finite(profile, spec, spec.min_size - 1))
    ]
    assert not wrong
