"""Every shipped experiment validates; the real-dataset ones stop at once without their data."""

from pathlib import Path

import pytest

from metaloss.cli import main
from metaloss.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))
PAPER_SIZES = {"msrs": (240, 320), "fmb": (300, 400), "m3fd": (192, 256), "llvip": (256, 320)}


def test_examples_exist():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "tdfusion_synthetic_seg", "tdfusion_synthetic_det"} | {
        f"tdfusion_{d}" for d in PAPER_SIZES
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_validates(path):
    load_config(path)


@pytest.mark.parametrize("dataset", sorted(PAPER_SIZES))
def test_paper_hyperparameters(dataset):
    cfg = load_config(EXAMPLES / f"tdfusion_{dataset}.toml")
    assert cfg.data.task_size == PAPER_SIZES[dataset] and cfg.data.crop_size == 256
    assert (cfg.meta.epochs, cfg.meta.meta_steps, cfg.meta.learner_steps) == (40, 200, 0)
    assert cfg.meta.inner_lr == "learner" and cfg.data.batch_size == 1 and cfg.data.swap_modalities
    assert (cfg.optim.learner_lr, cfg.optim.objective_lr, cfg.optim.lr_step, cfg.optim.lr_gamma) == (
        1e-4,
        1e-4,
        10,
        0.1,
    )
    assert cfg.learner.name == "restormer" and cfg.loss_generator.name == "tdfusion" and cfg.loss.alpha == 1.0
    assert cfg.objective.name == ("segmentation" if dataset in ("msrs", "fmb") else "detection")


@pytest.mark.parametrize("dataset", sorted(PAPER_SIZES))
def test_missing_dataset_root_stops_at_once(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(EXAMPLES / f"tdfusion_{dataset}.toml"),
            "--out",
            str(out),
            "--set",
            f"data.root='{tmp_path / 'none'}'",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "Expected layout" in err and "http" in err
    assert not out.exists()


@pytest.mark.parametrize("task", ["seg", "det"])
def test_synthetic_variants_run_end_to_end_shrunk(task, tmp_path):
    shrink = [
        "meta.epochs=1",
        "meta.meta_steps=1",
        "meta.learner_steps=2",
        "data.num_images=4",
        "data.height=64",
        "data.width=64",
        "data.crop_size=32",
        "data.task_size=[64, 64]",
        "val_data.num_images=2",
        "val_data.height=64",
        "val_data.width=64",
        "eval.num_images=2",
    ]
    args = ["run", str(EXAMPLES / f"tdfusion_synthetic_{task}.toml"), "--out", str(tmp_path / "run"), "--quiet"]
    for s in shrink:
        args += ["--set", s]
    assert main(args) == 0
    import json

    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert ("task/mIoU" if task == "seg" else "task/mAP50") in metrics
