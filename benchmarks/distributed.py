"""Throughput of data-parallel training: 1 process x T threads against N processes x T/N threads.

Both run the same TDFusion segmentation problem (Restormer fusion net, TDFusion loss generator,
SegFormer-B0) on synthetic scenes with the same *global* batch: 1 process with ``--batch`` samples per
step, N processes (torchrun, gloo) with ``--batch / N`` each.  With as many threads in all as the machine
has cores, the comparison is fair: the same CPUs, split differently.  Each configuration runs in fresh
processes, ``--repeats`` times, alternating; a step's time is the gap between consecutive log records
of the second epoch (the first warms up).  Throughput = global samples per second (before the
modality swap doubles them).  The load average before and after each run is recorded: other jobs on
the machine slow both configurations, unevenly.

    python -m benchmarks.distributed                         # 2 processes x 1 thread vs 1 x 2 (and 1 x 1)
    python -m benchmarks.distributed --nproc 2 --size 64 --batch 2 --steps 4 --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def config(size: int, batch: int, steps: int, threads_note: str) -> dict:
    return {
        "name": f"bench_dist_{threads_note}",
        "seed": 0,
        "device": "cpu",
        "data": {
            "name": "synthetic",
            "num_images": max(16, 2 * steps * batch),
            "height": size,
            "width": size,
            "crop_size": (3 * size) // 4,
            "batch_size": batch,
        },
        "val_data": {"name": "synthetic", "num_images": 1, "height": size, "width": size},
        "learner": {"name": "restormer"},
        "loss_generator": {"name": "tdfusion"},
        "objective": {"name": "segmentation"},
        "meta": {"epochs": 2, "meta_steps": steps, "learner_steps": steps, "outer_lr": 1e-3},
        "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3},
        "eval": {"every": 0, "num_images": 1, "metrics": []},
        "checkpoint": {"every": 0},
    }


def step_times(log: Path) -> dict[str, list[float]]:
    """Seconds per meta-step and per learner step in epoch 2, from the records' time stamps."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    out: dict[str, list[float]] = {"meta": [], "learner": []}
    for phase in out:
        times = [r["time"] for r in records if r.get("phase") == phase and r.get("epoch") == 2]
        out[phase] = [b - a for a, b in itertools.pairwise(times)]
    return out


def run_once(nproc: int, threads: int, size: int, batch: int, steps: int, work: Path) -> dict:
    from metaloss.config import load_config

    per_rank, rest = divmod(batch, nproc)
    if rest or not per_rank:
        raise SystemExit(f"--batch {batch} must be a multiple of the number of processes {nproc}")
    cfg_path = work / f"n{nproc}.toml"
    cfg_path.write_text(load_config(config(size, per_rank, steps, f"{nproc}x{threads}")).to_toml())
    out = work / f"run-n{nproc}-{len(list(work.glob('run-*')))}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS=str(threads), YOLO_OFFLINE="1", TORCH_CPP_LOG_LEVEL="ERROR")
    command = [sys.executable, "-m", "metaloss", "run", str(cfg_path), "--out", str(out), "--quiet"]
    if nproc > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "metaloss",
            "run",
            str(cfg_path),
            "--out",
            str(out),
            "--quiet",
        ]
    load_before = os.getloadavg()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    load_after = os.getloadavg()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-4000:]}")
    times = step_times(out / "log.jsonl")
    meta, learner = statistics.median(times["meta"]), statistics.median(times["learner"])
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "global_batch": batch,
        "meta_step_s": meta,
        "learner_step_s": learner,
        "meta_samples_per_s": batch / meta,
        "learner_samples_per_s": batch / learner,
        "load_before": load_before,
        "load_after": load_after,
    }


def main(argv: list[str] | None = None) -> int:
    from metaloss.distributed import cpu_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--threads", type=int, default=cpu_count(), help="threads in all (default: the cores)")
    parser.add_argument("--size", type=int, default=64, help="synthetic image side; crops are 3/4 of it")
    parser.add_argument("--batch", type=int, default=2, help="global batch (pairs per step, before the swap)")
    parser.add_argument("--steps", type=int, default=4, help="meta-steps and learner steps per epoch (2 epochs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = []
    # the fair pair: 1 x T threads against N x T/N; and 1 x 1, what one core does alone (on a loaded
    # machine several OpenMP threads of one process spin-wait for each other, which 1 x 1 avoids)
    setups = [(1, args.threads), (args.nproc, max(1, args.threads // args.nproc))]
    if args.threads > 1:
        setups.insert(1, (1, 1))
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        work = Path(tmp)
        for _ in range(args.repeats):
            for nproc, threads in setups:
                r = run_once(nproc, threads, args.size, args.batch, args.steps, work)
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = []
    for nproc, threads in setups:
        rs = [r for r in results if (r["processes"], r["threads_per_process"]) == (nproc, threads)]
        summary.append(
            {
                "processes": nproc,
                "threads_per_process": rs[0]["threads_per_process"],
                "meta_samples_per_s": statistics.median(r["meta_samples_per_s"] for r in rs),
                "learner_samples_per_s": statistics.median(r["learner_samples_per_s"] for r in rs),
                "meta_step_s": statistics.median(r["meta_step_s"] for r in rs),
                "learner_step_s": statistics.median(r["learner_step_s"] for r in rs),
                "load": [round(x, 2) for r in rs for x in (r["load_before"][0], r["load_after"][0])],
            }
        )
    import torch

    meta = {"machine": platform.machine(), "cores": cpu_count(), "torch": torch.__version__, "args": vars(args)}
    print(
        "\n| processes x threads | meta-step (s) | meta samples/s | learner step (s) | learner samples/s "
        "| load (1-min, "
        "before/after each run) |"
    )
    print("|---|---|---|---|---|---|")
    for s in summary:
        print(
            f"| {s['processes']} x {s['threads_per_process']} | {s['meta_step_s']:.2f} | {s['meta_samples_per_s']:.2f} "
            f"| {s['learner_step_s']:.2f} | {s['learner_samples_per_s']:.2f} | {', '.join(map(str, s['load']))} |"
        )
    print(json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
