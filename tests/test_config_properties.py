"""Property-based tests of the config parser: any TOML document, parsed table or ``--set`` override
gives a validated config or a ``ConfigError`` naming the source -- never another exception -- and an
accepted config survives the round trip through its resolved TOML."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaloss import registry
from metaloss.config import ConfigError, ExperimentConfig, apply_overrides, load_config, parse_override

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The plugin names every config gives (they have no defaults); the drawn tables may change them.
NETWORKS = {"loss_generator": {"name": "conv"}, "objective": {"name": "reconstruction"}}

SECTIONS = {
    name: list(field.annotation.model_fields) if hasattr(field.annotation, "model_fields") else []
    for name, field in ExperimentConfig.model_fields.items()
}
SECTIONS["val_data"] = SECTIONS["data"]
PLUGIN_KEYS = [
    "root",
    "width",
    "dim",
    "num_images",
    "height",
    "encoder",
    "blocks",
    "alpha",
    "ir_weight",
    "val_fraction",
]
PLUGIN_NAMES = sorted({n for g in registry.GROUPS for n in registry.available(g)}) + ["nope"]

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(PLUGIN_NAMES + ["auto", "cpu", "linear", "stop", "skip", "learner", "adam"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def config_tables(draw) -> dict:
    table: dict = {k: dict(v) for k, v in NETWORKS.items()}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS) + ["bogus"]), max_size=4, unique=True)):
        keys = SECTIONS.get(section, [])
        if not keys:  # a top-level key
            table[section] = draw(values)
            continue
        key_names = st.sampled_from(keys + PLUGIN_KEYS) | st.text(max_size=8)
        table[section] = draw(st.dictionaries(key_names, values, max_size=4))
    return table


def _accepted(cfg: ExperimentConfig) -> None:
    again = load_config(tomllib.loads(cfg.to_toml()))
    assert again == cfg


@SETTINGS
@given(table=config_tables())
def test_any_table_gives_a_config_or_a_config_error(table):
    try:
        cfg = load_config(table)
    except ConfigError as err:
        assert str(err).startswith("invalid config\n  <config>") and err.problems
        return
    _accepted(cfg)


@SETTINGS
@given(text=st.text(max_size=200) | st.builds(lambda t: tomllib_dumps(t), config_tables()))
def test_any_file_gives_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "exp.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert str(path) in str(err)
        return
    _accepted(cfg)


def tomllib_dumps(table: dict) -> str:
    import tomli_w

    try:
        return tomli_w.dumps(table)
    except (TypeError, ValueError):  # e.g. a key that TOML cannot write
        return ""


@pytest.mark.filterwarnings("ignore:.*config key .* is deprecated:FutureWarning")  # old keys are drawn too
@SETTINGS
@given(
    items=st.lists(
        st.text(max_size=30)
        | st.builds(
            "{}={}".format,
            st.sampled_from(
                [
                    "meta.inner_steps",
                    "optim.learner_lr",
                    "guard.on_nonfinite",
                    "learner.name",
                    "fusion.name",
                    "data",
                    "meta",
                    "a..b",
                    "name",
                ]
            ),
            st.text(max_size=12),
        ),
        max_size=3,
    )
)
def test_any_override_gives_a_config_or_a_config_error(items):
    try:
        cfg = load_config(NETWORKS, items)
    except ConfigError as err:
        assert "--set" in str(err) or "<config>" in str(err)
        return
    _accepted(cfg)


def test_examples_of_each_documented_refusal():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("meta.inner_steps")
    with pytest.raises(ConfigError, match="'meta' is not a table"):
        apply_overrides({"meta": 3}, ["meta.epochs=2"])
    for key in ("optim.learner_lr", "optim.objective_lr", "meta.outer_lr", "meta.inner_lr"):
        with pytest.raises(ConfigError, match=rf"{key}: .*(greater than 0|must be > 0)"):
            load_config(NETWORKS, [f"{key}=-0.001"])
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match=r"optim\.objective_lr: Input should be a finite number"):
            load_config(NETWORKS, [f"optim.objective_lr={bad}"])
        with pytest.raises(ConfigError, match=r"objective\.alpha"):
            load_config({**NETWORKS, "objective": {"name": "reconstruction", "alpha": float(bad)}})
