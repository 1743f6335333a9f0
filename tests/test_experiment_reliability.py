"""Runs under bad inputs, numerical faults and interruptions (docs/reliability.md).

Tiny runs on synthetic scenes with the reconstruction task (no heavy dependencies).  The SIGKILL and
SIGINT tests start ``metaloss run`` as separate processes and compare the parameters a resumed run
ends with against an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from metaloss.checkpoint import read_checkpoint
from metaloss.cli import main
from metaloss.config import load_config
from metaloss.experiment import RunDirectory, RunError, run
from metaloss.problem import FusionProblem

TINY = {
    "name": "tiny",
    "seed": 3,
    "device": "cpu",
    "data": {"name": "synthetic", "num_images": 6, "height": 24, "width": 24, "crop_size": 16},
    "val_data": {"name": "synthetic", "num_images": 1, "height": 24, "width": 24},
    "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
    "loss_generator": {"name": "conv", "width": 4},
    "objective": {"name": "reconstruction", "width": 4, "blocks": 1},
    "meta": {"epochs": 2, "meta_steps": 2, "learner_steps": 2, "outer_lr": 1e-3},
    "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3},
    "eval": {"num_images": 1, "metrics": []},
    "checkpoint": {"every": 1},  # the epoch files these tests kill writes of and resume from
}
NETS = ("learner", "generator", "objective")


def tiny(**sections):
    """TINY with sections updated; a plugin section naming another plugin replaces the section."""
    cfg = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        if isinstance(value, dict) and value.get("name", cfg.get(key, {}).get("name")) == cfg.get(key, {}).get("name"):
            value = {**cfg.get(key, {}), **value}
        cfg[key] = value
    return load_config(cfg)


def write_config(path: Path, **sections) -> Path:
    path.write_text(tiny(**sections).to_toml(), encoding="utf-8")
    return path


def trainer_state(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    for net in NETS:
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    for oa, ob in zip(a["optimizers"], b["optimizers"], strict=True):  # Adam moments too
        for sa, sb in zip(oa["state"].values(), ob["state"].values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def temporary_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.tmp"))


# -- bad inputs -------------------------------------------------------------------------------------------------
def test_a_missing_data_root_fails_before_anything_is_written(tmp_path, capsys):
    cfg = write_config(tmp_path / "exp.toml", data={"name": "folders", "root": str(tmp_path / "no_data")})
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"data.root {str(tmp_path / 'no_data')!r} does not exist" in err and "Expected layout" in err
    assert not (tmp_path / "run").exists()


def test_a_corrupt_image_stops_the_run_naming_it_with_nothing_half_written(tmp_path, capsys):
    root = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    for side in ("ir", "vi"):
        (root / side).mkdir(parents=True)
        for i in range(4):
            assert cv2.imwrite(str(root / side / f"p{i}.png"), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    (root / "vi" / "p2.png").write_bytes(b"")
    cfg = write_config(
        tmp_path / "exp.toml",
        data={"name": "folders", "root": str(root)},
        meta={"epochs": 1, "meta_steps": 1, "learner_steps": 0},  # the learner phase reads every pair
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read image {str(root / 'vi' / 'p2.png')!r}: empty file (0 bytes)" in err
    assert not temporary_files(out) and not (out / "summary.json").exists()
    assert trainer_state(out)["epoch"] == 0  # last.pt: the consistent initial state, nothing of epoch 1
    assert all(isinstance(r, dict) for r in records(out))  # every log line whole


def test_a_checkpoint_of_another_architecture_is_refused_and_left_alone(tmp_path, capsys):
    cfg = write_config(tmp_path / "exp.toml", meta={"epochs": 1})
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["run", "--resume", str(out), "-q", "--set", "learner.width=8", "--set", "meta.epochs=2"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {out / 'checkpoints' / 'last.pt'} does not fit this config" in err
    assert "'width': 4" in err and "'width': 8" in err and "size mismatch" in err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    # the fusion command refuses it too, naming the file
    from metaloss.deploy import InferenceError, load_model

    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["learner"] = {"name": "restormer"}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(InferenceError, match=r"other\.pt: cannot build its fusion network"):
        load_model(tmp_path / "other.pt")


def test_a_truncated_or_empty_checkpoint_is_a_clear_error(tmp_path):
    from metaloss.deploy import InferenceError, load_model

    out = tmp_path / "run"
    run(tiny(), out, quiet=True)
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError) as info:
        run(tiny(meta={"epochs": 3}), out, quiet=True, resume=True)
    message = str(info.value)
    assert f"cannot read checkpoint {last} (truncated, corrupt or not a torch file)" in message
    assert f"an earlier state is in {out / 'checkpoints' / 'epoch_002.pt'}" in message
    with pytest.raises(InferenceError, match=r"last\.pt \(truncated"):
        load_model(last)
    last.write_bytes(b"")
    with pytest.raises(RunError, match=r"last\.pt: empty file"):
        run(tiny(meta={"epochs": 3}), out, quiet=True, resume=True)
    (out / "checkpoints" / "epoch_002.pt").replace(last)  # what the message suggests
    run(tiny(meta={"epochs": 3}), out, quiet=True, resume=True)
    assert trainer_state(out)["epoch"] == 3


# -- numerical faults ---------------------------------------------------------------------------------------------
def poison_outer_loss(monkeypatch, calls: set[int]) -> None:
    """The fusion problem's outer loss becomes NaN on the given calls (1-based, two meta-steps per epoch)."""
    real = FusionProblem.outer_loss
    count = {"n": 0}

    def outer_loss(self, *args):
        count["n"] += 1
        loss = real(self, *args)
        return loss * float("nan") if count["n"] in calls else loss

    monkeypatch.setattr(FusionProblem, "outer_loss", outer_loss)


def test_nan_stops_the_run_naming_network_and_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.toml", meta={"epochs": 3})
    out = tmp_path / "run"
    poison_outer_loss(monkeypatch, {4})  # epoch 2, meta-step 2
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "non-finite outer loss of the loss generator" in err and "epoch 2, meta step 2" in err
    assert "holds the last good state (epoch 1)" in err and f"metaloss run --resume {out}" in err
    (record,) = [r for r in records(out) if r["phase"] == "nonfinite"]
    assert (record["role"], record["loss"], record["action"]) == ("loss_generator", "outer", "stop")
    assert_same_parameters(trainer_state(out), read_checkpoint(out / "checkpoints" / "epoch_001.pt")["trainer"])
    assert not (out / "checkpoints" / "epoch_002.pt").exists() and not temporary_files(out)
    monkeypatch.undo()  # the fault is gone: the run continues from the last good state
    assert main(["run", "--resume", str(out), "-q"]) == 0
    assert trainer_state(out)["epoch"] == 3


def test_nan_with_skip_drops_the_batch_and_finishes(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.toml", guard={"on_nonfinite": "skip", "max_consecutive_skips": 1})
    out = tmp_path / "run"
    poison_outer_loss(monkeypatch, {1, 3})
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    skipped = [r for r in records(out) if r["phase"] == "nonfinite"]
    assert [(r["epoch"], r["step"], r["action"]) for r in skipped] == [(1, 1, "skip"), (2, 1, "skip")]
    assert all(r["role"] == "loss_generator" and r["loss"] == "outer" for r in skipped)
    state = trainer_state(out)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for net in NETS for v in state[net].values())
    # two in a row is one more than allowed
    monkeypatch.undo()
    poison_outer_loss(monkeypatch, {1, 2})
    assert main(["run", str(cfg), "--out", str(tmp_path / "run2"), "-q"]) == 1
    assert "2 batches in a row were non-finite (max_consecutive_skips = 1)" in capsys.readouterr().err


# -- interruptions ------------------------------------------------------------------------------------------------
def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path):
    run(tiny(), tmp_path / "full", quiet=True)
    out = tmp_path / "cut"
    RunDirectory(out).create(tiny())  # config.toml written, then killed: no checkpoint
    (out / "log.jsonl").write_text('{"phase": "start"}\n{"phase": "me', encoding="utf-8")  # a line cut short
    (out / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    run(tiny(), out, quiet=True, resume=True)
    assert_same_parameters(trainer_state(out), trainer_state(tmp_path / "full"))
    assert not temporary_files(out)
    log = records(out)  # every line parses
    assert log[0] == {"phase": "start"} and log[1]["phase"] == "start"  # it started again
    assert log[2]["phase"] == "resume" and log[2]["epoch"] == 0


def test_without_a_run_there_is_nothing_to_resume(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nothing"), "-q"]) == 2
    assert "config.toml" in capsys.readouterr().err


def test_checkpoints_are_written_atomically_in_order(tmp_path, monkeypatch):
    import metaloss.utils.io as io_mod

    written: list[str] = []
    real = io_mod.os.replace

    class Os:  # records each rename; leaves the global os module alone
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            assert Path(src).name.startswith(f".{Path(dst).name}.") and Path(src).parent == Path(dst).parent
            written.append(Path(dst).name)
            return real(src, dst)

    monkeypatch.setattr(io_mod, "os", Os())
    run(tiny(), tmp_path / "run", quiet=True)
    checkpoints = [n for n in written if n.endswith(".pt")]
    # the initial state, then per epoch the epoch file before last.pt
    assert checkpoints == ["last.pt", "epoch_001.pt", "last.pt", "epoch_002.pt", "last.pt"]
    assert "config.toml" in written and "summary.json" in written


# -- real processes: SIGKILL and SIGINT ------------------------------------------------------------------------------
DRIVER = textwrap.dedent(
    """
    # Run `metaloss run ...` and send this process SIGNAL at the N-th call of WHAT:
    # meta (a meta-step), learner (a learner step) or replace (renaming a finished temporary file
    # over checkpoints/last.pt, i.e. during a checkpoint write).
    import os, signal, sys
    import metaloss.meta.trainer as trainer_mod
    # Ctrl-C in a terminal raises KeyboardInterrupt; a process started in the background of a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import metaloss.utils.io as io_mod
    from metaloss.cli import main

    what, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    count = 0

    def tick():
        global count
        count += 1
        if count == n:
            os.kill(os.getpid(), sig)

    if what in ("meta", "learner"):
        name = "meta_step" if what == "meta" else "learner_step"
        real = getattr(trainer_mod, name)

        def wrapped(*args, **kwargs):
            tick()
            return real(*args, **kwargs)

        setattr(trainer_mod, name, wrapped)
    else:
        real_replace = os.replace

        class Os:
            def __getattr__(self, key):
                return getattr(os, key)

            @staticmethod
            def replace(src, dst):
                if str(dst).endswith("last.pt"):
                    tick()
                return real_replace(src, dst)

        io_mod.os = Os()
    sys.exit(main(sys.argv[4:]))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def metaloss_run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaloss", "run", *args, "-q"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def driven(driver: Path, what: str, n: int, sig: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(driver), what, str(n), sig, "run", *args, "-q"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


KILL_META = {"epochs": 4, "meta_steps": 3, "learner_steps": 3}  # 24 steps: room to land a kill


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted `metaloss run` of the config the kill tests interrupt."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder / "exp.toml", meta=KILL_META)
    done = metaloss_run(str(cfg), "--out", str(folder / "run"))
    assert done.returncode == 0, done.stderr
    return cfg, trainer_state(folder / "run")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_ends_identical(tmp_path, reference):
    cfg, expected = reference
    seed = int(os.environ.get("METALOSS_KILL_SEED", time.time()))  # random points, reproducible by seed
    rng = random.Random(seed)
    seed_note = f"kill points drawn with METALOSS_KILL_SEED={seed}"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"

    # 1. killed inside epoch 1, at a random meta-step: only the initial state is on disk
    k = rng.randint(1, 3)
    done = driven(driver, "meta", k, "SIGKILL", str(cfg), "--out", str(out))
    assert done.returncode == -signal.SIGKILL, (seed_note, done.stderr)
    assert trainer_state(out)["epoch"] == 0

    # 2. `metaloss run --resume` killed from outside after a random number of new log records
    lines = len(records(out))
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaloss", "run", "--resume", str(out), "-q"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = lines + 1 + rng.randint(2, 10)  # its "resume" record, then some steps
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "log.jsonl").read_bytes().count(b"\n") >= target:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (seed_note, "the run ended before the kill", proc.stderr.read())
    proc.stderr.close()
    reached = trainer_state(out)["epoch"]
    assert reached <= 2

    # 3. killed during the next write of last.pt: a complete temporary file, never renamed
    done = driven(driver, "replace", 1, "SIGKILL", "--resume", str(out))
    assert done.returncode == -signal.SIGKILL, (seed_note, done.stderr)
    assert next(p.name for p in temporary_files(out)).startswith(".last.pt.")
    assert trainer_state(out)["epoch"] == reached  # last.pt untouched
    assert (out / "checkpoints" / f"epoch_{reached + 1:03d}.pt").is_file()  # the epoch file comes first

    # 4. killed at a random learner step of the epoch that follows
    done = driven(driver, "learner", rng.randint(1, 3), "SIGKILL", "--resume", str(out))
    assert done.returncode == -signal.SIGKILL, (seed_note, done.stderr)

    # 5. resumed to the end
    done = metaloss_run("--resume", str(out))
    assert done.returncode == 0, (seed_note, done.stderr)
    assert_same_parameters(trainer_state(out), expected)
    assert not temporary_files(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.pt",
        "epoch_002.pt",
        "epoch_003.pt",
        "epoch_004.pt",
        "last.pt",
    ]
    assert sum(r["phase"] == "resume" for r in records(out)) == 4


@pytest.mark.slow
def test_sigint_saves_a_resumable_state_prints_the_command_and_exits_130(tmp_path, reference):
    cfg, expected = reference
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    done = driven(driver, "meta", 8, "SIGINT", str(cfg), "--out", str(out))  # epoch 3, meta-step 2
    assert done.returncode == 130, done.stderr
    assert f"{out / 'checkpoints' / 'last.pt'} holds the state after epoch 2 of 4" in done.stderr
    assert f"resume with:\n  metaloss run --resume {out}\n" in done.stderr
    assert "Traceback" not in done.stderr
    assert trainer_state(out)["epoch"] == 2 and not temporary_files(out)
    assert records(out)[-1] == {**records(out)[-1], "phase": "interrupted", "epoch": 2, "saved_epoch": 2}
    done = metaloss_run("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert_same_parameters(trainer_state(out), expected)


# -- checked before work ---------------------------------------------------------------------------------------------
def test_validation_images_too_small_for_the_metrics_are_refused_before_training(tmp_path, capsys):
    cfg = write_config(tmp_path / "exp.toml", eval={"metrics": ["EN", "VIF"]})  # the validation scenes are 24x24
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "eval.metrics: VIF needs at least 41x41, but the validation images ([val_data]) are 24x24" in err
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()


def test_a_full_disk_is_one_clear_line_naming_the_file_and_last_pt_stays_whole(tmp_path, monkeypatch, capsys):
    import errno

    import metaloss.utils.io as io_mod

    class Os:  # the first epoch's checkpoint does not fit on the disk; the global os module is left alone
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            if ".epoch_001.pt." in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() and fsync() raise it: no file name
            return os.fsync(fd)

    monkeypatch.setattr(io_mod, "os", Os())
    out = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path / "exp.toml")), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    last = out / "checkpoints" / "last.pt"
    assert "Traceback" not in err and err.splitlines() == [
        f"metaloss: error: the disk is full: cannot write {out / 'checkpoints' / 'epoch_001.pt'} "
        f"(No space left on device); {last} holds the last completed epoch: once that is fixed, "
        f"resume with metaloss run --resume {out}"
    ]
    assert trainer_state(out)["epoch"] == 0 and not temporary_files(out)
