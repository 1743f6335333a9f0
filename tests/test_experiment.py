"""End-to-end runs on tiny synthetic scenes through the real plugins and the CLI."""

import json
import math

import cv2
import pytest
import torch

from metaloss.checkpoint import CheckpointError, read_checkpoint
from metaloss.cli import main
from metaloss.config import load_config
from metaloss.experiment import RunError, run

pytest.importorskip("segmentation_models_pytorch")

METRICS = ["EN", "SD"]
TINY = {
    "name": "tiny",
    "seed": 1,
    "device": "cpu",
    "data": {"name": "synthetic", "num_images": 6, "height": 32, "width": 32, "crop_size": 24},
    "val_data": {"name": "synthetic", "num_images": 2, "height": 48, "width": 48},  # metrics need >= 41 px
    "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
    "loss_generator": {"name": "conv", "width": 4},
    "objective": {"name": "segmentation"},
    "meta": {"epochs": 2, "meta_steps": 2, "learner_steps": 3, "outer_lr": 1e-3},
    "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3},
    "eval": {"num_images": 2, "metrics": METRICS},
}


def tiny(**sections):
    cfg = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(cfg)


def test_epoch_checkpoints_and_validation_images_are_as_many_as_asked(tmp_path):
    run(tiny(checkpoint={"every": 2}, meta={"epochs": 3}, eval={"save_images": 1}), tmp_path / "run", quiet=True)
    d = tmp_path / "run"
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["epoch_002.pt", "last.pt"]
    for epoch in ("epoch_001", "epoch_002", "epoch_003"):
        images = list((d / "val_images" / epoch).iterdir())
        assert [p.name for p in images] == ["val_00000.png"]
        assert cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED).shape == (48, 48)  # the whole validation image


def params(path):
    return read_checkpoint(path)["trainer"]


def test_run_writes_the_run_directory(tmp_path):
    summary = run(tiny(), tmp_path / "run", quiet=True)
    d = tmp_path / "run"
    assert (d / "config.toml").is_file() and (d / "summary.json").is_file()
    assert [p.name for p in (d / "checkpoints").iterdir()] == ["last.pt"]  # what --resume needs, no more
    assert sorted(p.name for p in (d / "val_images").iterdir()) == ["epoch_001", "epoch_002"]
    assert sorted(p.name for p in (d / "val_images" / "epoch_002").iterdir()) == ["val_00000.png", "val_00001.png"]
    records = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases.count("meta") == 4 and phases.count("learner") == 6 and phases.count("epoch") == 2
    meta = [r for r in records if r["phase"] == "meta"]
    assert all(r["loss_generator_grad_norm"] > 0 for r in meta)  # the second-order signal reaches G
    assert {"inner_loss", "outer_loss", "objective_loss", "inner_intensity", "inner_gradient"} <= set(meta[0])
    assert summary["epochs"] == 2 and summary["loss_weight_form"] == "linear"
    assert {"task/mIoU", "fusion/EN", "fusion/SD"} <= set(summary["metrics"])
    assert 0 <= summary["metrics"]["task/mIoU"] <= 1
    assert json.loads((d / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # the resolved config in the run directory reproduces the run's config
    assert load_config(d / "config.toml") == tiny()


def test_fixed_seed_repeats_exactly_and_resume_continues_exactly(tmp_path):
    run(tiny(), tmp_path / "a", quiet=True)
    run(tiny(), tmp_path / "b", quiet=True)
    a, b = params(tmp_path / "a/checkpoints/last.pt"), params(tmp_path / "b/checkpoints/last.pt")
    for net in ("learner", "generator", "objective"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    # stop after epoch 1, then resume the same run directory to epoch 2
    run(tiny(meta={**TINY["meta"], "epochs": 1}), tmp_path / "c", quiet=True)
    run(tiny(), tmp_path / "c", quiet=True, resume=True)
    c = params(tmp_path / "c/checkpoints/last.pt")
    assert c["epoch"] == 2
    for net in ("learner", "generator", "objective"):
        for k in a[net]:
            assert torch.equal(a[net][k], c[net][k]), (net, k)


def test_different_seed_differs(tmp_path):
    run(tiny(), tmp_path / "a", quiet=True)
    run(tiny(seed=2), tmp_path / "b", quiet=True)
    a, b = params(tmp_path / "a/checkpoints/last.pt"), params(tmp_path / "b/checkpoints/last.pt")
    assert not torch.equal(a["generator"]["body.0.weight"], b["generator"]["body.0.weight"])


def test_existing_run_directory_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(RunError, match="not empty"):
        run(tiny(), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        run(tiny(), tmp_path / "nothing", quiet=True, resume=True)


def test_cli_run_plot_and_resume(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny().to_toml())
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--set", "meta.epochs=1"]) == 0
    assert main(["run", "--resume", str(out), "--quiet", "--set", "meta.epochs=2"]) == 0
    assert read_checkpoint(out / "checkpoints/last.pt")["trainer"]["epoch"] == 2
    assert main(["plot", str(out)]) == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_progress_bar_and_quiet(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny(meta={**TINY["meta"], "epochs": 1}).to_toml())
    assert main(["run", str(cfg), "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1 meta" in err and "epoch 1/1 learner" in err and "outer=" in err
    quiet = tmp_path / "quiet"
    assert main(["run", str(cfg), "--out", str(quiet), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""  # no bar, no warning
    summary = json.loads((quiet / "summary.json").read_text())
    for key, value in summary["metrics"].items():  # the final metrics are kept with --quiet
        assert f"  {key:24s} {value:.4f}\n" in printed.out
    assert f"results in {quiet}: summary.json, log.jsonl, checkpoints/last.pt, val_images\n" in printed.out


def test_unknown_metric_fails_before_work(tmp_path):
    from metaloss.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.metrics: profile 'cddfuse' has no metric 'NOPE'"):
        tiny(eval={"num_images": 2, "metrics": ["NOPE"]})  # the config itself: before any run starts


def test_performance_switches_reach_the_problem():
    from metaloss.experiment import build_experiment

    problem = build_experiment(tiny()).problem
    assert problem.meta_gradient_method == "auto" and not problem.recompute_generator and not problem.recompute_outer
    cfg = tiny(performance={"meta_gradient": "double_backward", "recompute_generator": True, "recompute_outer": True})
    problem = build_experiment(cfg).problem
    assert problem.meta_gradient_method == "double_backward" and problem.recompute_generator and problem.recompute_outer


# -- checkpoints are data, not code ----------------------------------------------------------------------
class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the payload a crafted checkpoint could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path, marker, like=None):
    state = dict(like) if like is not None else {"format": 1}
    state["payload"] = _RunsCode(marker)
    torch.save(state, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=r"refused to load checkpoint .*evil\.pt: it names code to run") as err:
        read_checkpoint(evil)
    assert "(io.open)" in str(err.value)  # the function the file names
    assert not marker.exists()


def test_fuse_and_resume_refuse_a_crafted_checkpoint(tmp_path, capsys):
    import cv2
    import numpy as np

    marker = tmp_path / "ran"
    d = tmp_path / "run"
    run(tiny(meta={"epochs": 1, "meta_steps": 1, "learner_steps": 1}), d, quiet=True)
    last = d / "checkpoints" / "last.pt"
    assert read_checkpoint(last)["trainer"]["rng"]["numpy"][0] == "MT19937"  # numpy's state loads as data
    _evil_checkpoint(last, marker, like=read_checkpoint(last))
    img = np.full((48, 48), 128, np.uint8)
    for name in ("ir.png", "vi.png"):
        cv2.imwrite(str(tmp_path / name), img)
    fuse_args = [
        "--ir",
        str(tmp_path / "ir.png"),
        "--vi",
        str(tmp_path / "vi.png"),
        "--out",
        str(tmp_path / "out"),
        "-q",
    ]
    for source in (last, d):  # a checkpoint file, and a run directory (its last.pt)
        assert main(["fuse", "-c", str(source), *fuse_args]) != 0
        assert "refused to load checkpoint" in capsys.readouterr().err
    with pytest.raises(RunError, match=r"refused to load checkpoint .*last\.pt"):
        run(load_config(d / "config.toml"), d, quiet=True, resume=True)
    assert not marker.exists() and not (tmp_path / "out").exists()


# -- resumes that honour what they are told; one writer per run; SIGTERM ------------------------------------
def test_resume_applies_a_lower_learning_rate_after_the_nan_guard_stopped_the_run(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny().to_toml())
    d = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(d), "-q", "--set", "optim.learner_lr=1e30"]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert main(["run", "--resume", str(d), "--set", "optim.learner_lr=1e-3", "--set", "meta.outer_lr=2e-3"]) == 0
    err = capsys.readouterr().err
    assert "optim.learner_lr: 1e+30 -> 0.001 (applied to the restored optimizer and schedule)" in err
    state = params(d / "checkpoints" / "last.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in state["learner"].values())
    fusion_opt, _, outer_opt = state["optimizers"]
    assert fusion_opt["param_groups"][0]["initial_lr"] == 1e-3 and outer_opt["param_groups"][0]["initial_lr"] == 2e-3
    change = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines() if '"config_change"' in line]
    assert change[0]["changes"]["optim.learner_lr"] == [1e30, 1e-3] and change[0]["applied"] == [
        "meta.outer_lr",
        "optim.learner_lr",
    ]
    assert load_config(d / "config.toml").optim.learner_lr == 1e-3  # the run's config says what it ran with


def test_rescheduled_rate_is_where_the_schedule_had_reached(tmp_path):
    d = tmp_path / "run"
    run(tiny(optim={"lr_step": 1, "lr_gamma": 0.5}, meta={"epochs": 1}), d, quiet=True)
    run(tiny(optim={"lr_step": 1, "lr_gamma": 0.5, "learner_lr": 4e-3}, meta={"epochs": 2}), d, quiet=True, resume=True)
    group = params(d / "checkpoints" / "last.pt")["optimizers"][0]["param_groups"][0]
    assert group["lr"] == pytest.approx(4e-3 * 0.5**2)  # base 4e-3, decayed after epochs 1 and 2


def test_a_run_directory_in_use_is_refused_naming_its_holder(tmp_path):
    import os

    from metaloss.utils.runlock import RunLock

    d = tmp_path / "run"
    run(tiny(meta={"epochs": 1}), d, quiet=True)
    with RunLock(d):
        with pytest.raises(RunError, match=f"in use by PID {os.getpid()}"):
            run(tiny(meta={"epochs": 2}), d, quiet=True, resume=True)
    assert params(d / "checkpoints" / "last.pt")["epoch"] == 1  # untouched


def test_sigterm_stops_a_run_resumably_like_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny(meta={"epochs": 200}).to_toml())
    d = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaloss", "run", str(cfg), "--out", str(d), "-q"], stderr=subprocess.PIPE, text=True
    )
    log = d / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and '"epoch"' in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and f"metaloss run --resume {d}" in err
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["phase"] == "interrupted" and last["signal"] == "SIGTERM"
    assert not (d / ".lock").exists()
    saved = params(d / "checkpoints" / "last.pt")["epoch"]
    assert main(["run", "--resume", str(d), "-q", "--set", f"meta.epochs={saved + 1}"]) == 0
    assert params(d / "checkpoints" / "last.pt")["epoch"] == saved + 1


def test_eval_stretch_scores_the_images_as_fuse_writes_them(tmp_path):
    """[eval] stretch: the validation images are min-max stretched before they are scored (as
    `metaloss fuse` writes them for this run's models), so their spread (SD) only grows."""
    one = {"meta": {"epochs": 1, "meta_steps": 0, "learner_steps": 1}}
    raw = run(tiny(**one, eval={"stretch": False}), tmp_path / "raw", quiet=True)["metrics"]
    stretched = run(tiny(**one, eval={"stretch": True}), tmp_path / "stretched", quiet=True)["metrics"]
    assert stretched["fusion/SD"] > raw["fusion/SD"]
    assert load_config(tmp_path / "raw" / "config.toml").eval.stretch is False


# -- GPU: device, precision and cuDNN settings (docs/gpu.md) ----------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="device = 'auto' resolves to CUDA here")
def test_bfloat16_with_device_auto_on_a_machine_without_cuda_is_refused_naming_dtype(tmp_path):
    with pytest.raises(RunError, match=r"dtype = 'bfloat16': it needs a CUDA device, and the run is on cpu"):
        run(tiny(device="auto", dtype="bfloat16"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.cuda
def test_a_cuda_index_the_machine_lacks_is_refused_naming_device():
    from metaloss.experiment import resolve_device

    index = torch.cuda.device_count()
    with pytest.raises(RunError, match=rf"device = 'cuda:{index}' but this machine has {index} CUDA device"):
        resolve_device(f"cuda:{index}")
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0").type == "cuda"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_run_on_cuda_trains_with_float32_weights_and_the_documented_cudnn_settings(tmp_path, dtype):
    summary = run(tiny(device="cuda", dtype=dtype), tmp_path / "run", quiet=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic  # deterministic = true
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    state = params(tmp_path / "run" / "checkpoints" / "last.pt")
    weights = [
        t for role in ("learner", "generator", "objective") for t in state[role].values() if t.is_floating_point()
    ]
    assert weights and all(t.dtype == torch.float32 and bool(t.isfinite().all()) for t in weights)
    assert summary["environment"]["cuda"] == torch.cuda.get_device_name()
    assert all(math.isfinite(v) for v in summary["metrics"].values())
