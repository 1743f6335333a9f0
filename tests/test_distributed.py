"""Data-parallel training (metaloss.distributed): 2 processes with gloo on the CPU against 1 process.

The central property: 2 processes with per-rank batch b end with the same parameters as 1 process with
batch 2b and the same seed, for the generic engine, for TDFusion segmentation and for ReFusion.
Processes are started as users start them: torchrun (``python -m torch.distributed.run``) or
``metaloss run --nproc 2``.  Every subprocess runs one thread (the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from metaloss import distributed
from metaloss.checkpoint import read_checkpoint
from metaloss.cli import main
from metaloss.config import load_config
from metaloss.distributed import DistributedContext, convert_batchnorm
from metaloss.meta.parallel import DataParallel, ShardedBatches, SingleProcess, shard_indices
from metaloss.utils.numerics import adam_run_tolerance

HERE = Path(__file__).resolve().parent
#: the data-parallel requirement (docs/distributed.md): every parameter and buffer of the two runs within this
REQUIREMENT = 1e-5


def run_tolerance(dtype: torch.dtype, terms: int, steps: int, lr: float) -> float:
    """:func:`~metaloss.utils.numerics.adam_run_tolerance`, never looser than the requirement (in float32 the
    worst case is looser: the requirement then holds because the worst case is not reached)."""
    return min(REQUIREMENT, adam_run_tolerance(dtype, terms, steps, lr))


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in distributed.ENV}
    out.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", YOLO_OFFLINE="1", TORCH_CPP_LOG_LEVEL="ERROR")
    out.update(extra)
    return out


def sh(
    *args: str | Path, cwd: Path | None = None, check: bool = True, timeout: int = 600, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


def torchrun(*args: str | Path, nproc: int = 2, **kwargs) -> subprocess.CompletedProcess:
    return sh(
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args, **kwargs
    )


def metaloss(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "metaloss", *args, **kwargs)


def assert_same_networks(a: dict, b: dict, tol: float) -> float:
    """Every tensor of the three networks within ``tol`` (absolute); returns the largest difference."""
    worst = 0.0
    for role in ("learner", "generator", "objective"):
        assert a[role].keys() == b[role].keys(), role
        for key in a[role]:
            x, y = a[role][key], b[role][key]
            if not x.is_floating_point():
                assert torch.equal(x, y), (role, key)
                continue
            diff = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
            assert diff <= tol, f"{role}.{key} differs by {diff:.3g} > {tol}"
            worst = max(worst, diff)
    return worst


def trainer_state(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(load_config(cfg).to_toml())
    return path


# -- units ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(4, 2), (3, 2), (1, 2), (7, 3), (2, 3), (6, 1)])
def test_shards_are_contiguous_and_cover_the_global_batch(n, world):
    batch = list(range(10, 10 + n))
    chunks = [shard_indices(batch, r, world) for r in range(world)]
    real = [c[:k] for c, k in chunks]
    assert [i for chunk in real for i in chunk] == batch  # in order: rank r holds the r-th contiguous slice
    assert max(map(len, real)) - min(map(len, real)) <= 1
    for c, k in chunks:
        if k == 0:
            assert c == [batch[0]]  # a stand-in sample, weight 0
    if n % world == 0:
        assert all(len(r) == n // world for r in real)


def test_sharded_batches_split_the_single_process_batches():
    batches = [[5, 1, 7, 3], [0, 2, 6, 4], [8]]
    per_rank = [list(ShardedBatches(batches, DistributedContext(rank=r, world_size=2))) for r in range(2)]
    for t, batch in enumerate(batches):
        real = [i for r in range(2) for i, is_real, size in per_rank[r][t] if is_real]
        assert real == batch and all(size == len(batch) for r in range(2) for _, _, size in per_rank[r][t])
    assert per_rank[1][2] == [(8, 0, 1)]  # the empty share of the last batch: a stand-in


def test_single_process_context_does_not_communicate():
    ctx = DistributedContext.single()
    grads = [torch.ones(2), None]
    assert ctx.sum_grads(grads) == grads
    ctx.sum_grads_(grads)
    assert ctx.weighted_sum({"a": 2.0}, {"a": 0.5}) == {"a": 2.0}
    assert ctx.on_main(lambda: 3) == 3 and ctx.broadcast_object("x") == "x"
    assert distributed.context() is None  # not under torchrun
    assert isinstance(ctx, DataParallel) and isinstance(SingleProcess(), DataParallel)  # what the trainer takes


def test_distributed_batchnorm_is_batchnorm_in_one_process_and_keeps_state_dict_names():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    converted = convert_batchnorm(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], distributed.DistributedBatchNorm)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(converted(x), plain(x))
    torch.testing.assert_close(converted.state_dict(), plain.state_dict())


def test_threads_per_process_share_the_cpus():
    assert distributed.threads_per_process(1) == distributed.cpu_count()
    assert distributed.threads_per_process(10**6) == 1


def test_nproc_is_refused_inside_torchrun(monkeypatch, tmp_path, capsys):
    cfg = write_config(
        tmp_path / "c.toml",
        {"device": "cpu", "loss_generator": {"name": "conv"}, "objective": {"name": "reconstruction"}},
    )
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(cfg), "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


# -- the generic engine: float64 toy problem, batch norm, uneven batches, 2 inner steps -----------------------
@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_engine_two_processes_equal_one_process_with_double_batch(tmp_path, backend):
    if backend == "higher":
        pytest.importorskip("higher")
    script = HERE / "distributed_toy.py"
    sh(sys.executable, script, tmp_path / "one.pt", "4", backend)
    torchrun(script, tmp_path / "two.pt", "2", backend)
    one, two = (torch.load(tmp_path / f"{n}.pt") for n in ("one", "two"))
    # float64; sums of up to 4 samples × 4 batch-norm channels × 2; 2 epochs of 3 meta and 3 learner steps at lr 1e-2
    assert_same_networks(one, two, tol=run_tolerance(torch.float64, 32, steps=12, lr=1e-2))
    assert not torch.equal(one["generator"]["linear.weight"], Toy_initial_generator_weight())


def Toy_initial_generator_weight() -> torch.Tensor:
    sys.path.insert(0, str(HERE))
    try:
        from distributed_toy import Toy
    finally:
        sys.path.remove(str(HERE))
    torch.manual_seed(0)
    return Toy().loss_generator.linear.weight.detach()


# -- whole experiments -----------------------------------------------------------------------------------------
SEG = {
    "name": "dist_seg",
    "seed": 3,
    "device": "cpu",
    # float64: with float32, Adam turns rounding differences of near-zero gradients (biases in front of
    # SegFormer's batch norm have exactly zero gradient) into +-lr steps; see docs/distributed.md
    "dtype": "float64",
    "data": {"name": "synthetic", "num_images": 7, "height": 32, "width": 32, "crop_size": 24},
    "val_data": {"name": "synthetic", "num_images": 1, "height": 32, "width": 32},
    "learner": {"name": "restormer"},
    "loss_generator": {"name": "tdfusion"},
    "objective": {"name": "segmentation", "drop_path": 0.0},  # stochastic depth draws per process
    "meta": {"epochs": 1, "meta_steps": 2, "learner_steps": 0, "outer_lr": 1e-3},
    "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3},
    "eval": {"num_images": 1, "metrics": []},
}

REFUSION = {
    "name": "dist_refusion",
    "seed": 5,
    "device": "cpu",
    "data": {"name": "synthetic", "num_images": 10, "height": 32, "width": 32, "crop_size": 24, "task_from_crop": True},
    "val_data": {"name": "synthetic", "num_images": 1, "height": 32, "width": 32},
    "learner": {"name": "restormer"},
    "loss_generator": {"name": "refusion"},
    "objective": {"name": "reconstruction", "width": 8, "blocks": 1},
    "meta": {"epochs": 1, "meta_steps": 2, "learner_steps": 0, "outer_lr": 1e-3},
    "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3},
    "eval": {"num_images": 1, "metrics": []},
}


def with_batch(cfg: dict, batch_size: int, **top) -> dict:
    out = json.loads(json.dumps(cfg))
    out["data"]["batch_size"] = batch_size
    out.update(top)
    return out


@pytest.mark.slow  # about 45-65 s on 2 busy cores
def test_tdfusion_segmentation_two_processes_equal_one_with_double_batch_and_only_rank0_writes(tmp_path):
    """Per-rank batch 1 on 2 ranks vs batch 2 on 1: 7 scenes, so the last batches hold one sample and one
    rank runs a stand-in; 2 meta-steps and 4 learner steps.  Launched by torchrun without --out: rank 0
    names the run directory and alone writes it."""
    one = tmp_path / "one"
    metaloss("run", write_config(tmp_path / "one.toml", with_batch(SEG, 2)), "--out", one, "--quiet")
    work = tmp_path / "work"
    work.mkdir()
    torchrun("-m", "metaloss", "run", write_config(tmp_path / "two.toml", with_batch(SEG, 1)), "--quiet", cwd=work)
    runs = list((work / "runs").iterdir())
    assert [p.name.startswith("dist_seg-") for p in runs] == [True]  # one directory, named by rank 0
    two = runs[0]
    assert sorted(p.name for p in work.rglob("*") if p.is_file()) == sorted(
        ["config.toml", "log.jsonl", "summary.json", "last.pt", "val_00000.png"]
    )
    # float64, global batch 2 × 24² pixels, 2 meta and 4 learner steps at lr 1e-3
    worst = assert_same_networks(
        trainer_state(one), trainer_state(two), run_tolerance(torch.float64, 2 * 24 * 24, 6, 1e-3)
    )
    print(f"largest difference: {worst:.3g}")
    records = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases.count("start") == 1 and phases.count("meta") == 2 and phases.count("learner") == 4
    assert phases.count("epoch") == 1  # each record once: rank 0 alone logs
    summary = json.loads((two / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 2}
    assert "task/mIoU" in summary["metrics"]  # rank 0 evaluated
    # the logged losses are the global batch's: equal to the one-process run's
    logged = {r["phase"] + str(r["step"]): r for r in records if r["phase"] in ("meta", "learner")}
    for r in (json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()):
        if r["phase"] in ("meta", "learner"):
            other = logged[r["phase"] + str(r["step"])]
            for key in ("inner_loss", "outer_loss", "learner_loss", "objective_loss"):
                if key in r:
                    assert other[key] == pytest.approx(r[key], rel=1e-9, abs=1e-12), key


def test_refusion_two_processes_equal_one_with_double_batch_in_float32(tmp_path):
    """Per-rank batch 2 on 2 ranks (``metaloss run --nproc 2``) vs batch 4 on 1, float32: 10 scenes, so
    global batches of 4, 4, 2 (learner) and 4, 1 (meta-train: a stand-in on one rank)."""
    one, two = tmp_path / "one", tmp_path / "two"
    metaloss("run", write_config(tmp_path / "one.toml", with_batch(REFUSION, 4)), "--out", one, "--quiet")
    metaloss(
        "run", write_config(tmp_path / "two.toml", with_batch(REFUSION, 2)), "--out", two, "--quiet", "--nproc", "2"
    )
    # float32, global batch 4 × 24² pixels, 2 meta and 3 learner steps at lr 1e-3
    worst = assert_same_networks(
        trainer_state(one), trainer_state(two), run_tolerance(torch.float32, 4 * 24 * 24, 5, 1e-3)
    )
    print(f"largest difference: {worst:.3g}")
    assert json.loads((two / "summary.json").read_text())["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_resume_from_one_checkpoint(tmp_path):
    """2 ranks train 1 epoch, then 2 ranks resume the run directory to epoch 2 (rank 0 reads last.pt and
    hands it to rank 1); the result equals 1 process with the double batch trained 2 epochs at once."""
    cfg = with_batch(REFUSION, 1, dtype="float64")
    cfg["meta"]["epochs"] = 2
    one, two = tmp_path / "one", tmp_path / "two"
    metaloss("run", write_config(tmp_path / "one.toml", with_batch(cfg, 2)), "--out", one, "--quiet")
    short = write_config(tmp_path / "two.toml", cfg)
    metaloss("run", short, "--out", two, "--quiet", "--nproc", "2", "--set", "meta.epochs=1")
    assert trainer_state(two)["epoch"] == 1
    metaloss("run", "--resume", two, "--quiet", "--nproc", "2", "--set", "meta.epochs=2")
    assert trainer_state(two)["epoch"] == 2
    # float64, global batch 2 × 24² pixels, 2 epochs of 2 meta and 5 learner steps at lr 1e-3
    assert_same_networks(trainer_state(one), trainer_state(two), run_tolerance(torch.float64, 2 * 24 * 24, 14, 1e-3))
    phases = [json.loads(line)["phase"] for line in (two / "log.jsonl").read_text().splitlines()]
    assert phases.count("resume") == 1 and phases.count("epoch") == 2


def test_errors_of_a_rank_surface_with_a_clear_message(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = write_config(tmp_path / "c.toml", with_batch(REFUSION, 1))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = metaloss("run", cfg, "--out", out, "--quiet", "--nproc", "2", check=False, extra_env={"TMPDIR": str(tmp)})
    assert proc.returncode == 1
    assert "metaloss: error: [rank 0]" in proc.stderr and "not empty" in proc.stderr
    assert "metaloss: error: the distributed run failed: rank 0" in proc.stderr
    assert (out / "keep.txt").read_text() == "x" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("metaloss_torchrun_")]  # torchrun's logs removed


# -- on GPUs (docs/gpu.md) ---------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: 2 ranks need 2 GPUs")
def test_nccl_two_processes_on_two_gpus_equal_one_with_double_batch(tmp_path):
    """``device = "auto"``: rank r takes GPU r and the backend is NCCL; float64 so that only rounding differs."""
    cfg = with_batch(REFUSION, 2, device="auto", dtype="float64")
    one, two = tmp_path / "one", tmp_path / "two"
    metaloss("run", write_config(tmp_path / "one.toml", with_batch(cfg, 4)), "--out", one, "--quiet")
    metaloss("run", write_config(tmp_path / "two.toml", cfg), "--out", two, "--quiet", "--nproc", "2")
    assert_same_networks(trainer_state(one), trainer_state(two), run_tolerance(torch.float64, 4 * 24 * 24, 5, 1e-3))
    assert json.loads((two / "summary.json").read_text())["distributed"]["backend"] == "nccl"


@pytest.mark.cuda
def test_gloo_two_processes_on_one_gpu_equal_one_with_double_batch(tmp_path):
    """``device = "cuda:0"`` pins both ranks to one GPU (NCCL refuses that; gloo all-reduces CUDA tensors):
    the data-parallel path on CUDA tensors, on a machine with a single GPU."""
    cfg = with_batch(REFUSION, 2, device="cuda:0", dtype="float64", distributed={"backend": "gloo"})
    one, two = tmp_path / "one", tmp_path / "two"
    metaloss("run", write_config(tmp_path / "one.toml", with_batch(cfg, 4)), "--out", one, "--quiet")
    metaloss("run", write_config(tmp_path / "two.toml", cfg), "--out", two, "--quiet", "--nproc", "2")
    assert_same_networks(trainer_state(one), trainer_state(two), run_tolerance(torch.float64, 4 * 24 * 24, 5, 1e-3))
    assert json.loads((two / "summary.json").read_text())["distributed"]["backend"] == "gloo"
