from metaloss.config import ExperimentConfig
from metaloss.docgen import generate


def test_config_reference_is_current(repo):
    expected = generate()
    actual = (repo / "docs" / "config.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/config.md is stale: run `python -m metaloss.docgen docs/config.md`"


def test_config_reference_covers_every_key():
    text = generate()
    for section, field in ExperimentConfig.model_fields.items():
        model = field.annotation
        names = getattr(model, "model_fields", None)
        if names:
            for key in names:
                assert f"`{key}`" in text, f"{section}.{key}"
    for plugin in ("restormer", "dense", "tdfusion", "refusion", "sigmoid", "segmentation", "synthetic"):
        assert f"`{plugin}`" in text
