"""Time and peak memory of one meta-step for 1, 2 and 4 inner steps.

Each configuration runs in a fresh process (so peak RSS belongs to it alone): build the TDFusion
segmentation problem (Restormer fusion net, TDFusion loss generator, SegFormer-B0), warm up once,
then time ``--repeats`` meta-steps.  Peak memory is the process's peak RSS on CPU and
``torch.cuda.max_memory_allocated`` on GPU.

    python -m benchmarks.meta_step                       # reference sizes: 256x256 crops, task 240x320
    python -m benchmarks.meta_step --crop 64 --task 64 64 --inner-steps 1 2 4
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time


def measure(crop: int, task: tuple[int, int], inner_steps: int, repeats: int, backend: str, device: str) -> dict:
    import torch

    from metaloss.config import load_config
    from metaloss.experiment import build_experiment
    from metaloss.meta import make_outer_optimizer, meta_step

    h, w = max(crop, task[0]), max(crop, task[1])
    cfg = load_config(
        {
            "device": device,
            "data": {"name": "synthetic", "num_images": 4, "height": h, "width": w, "crop_size": crop, "task_size": list(task)},
            "meta": {"inner_steps": inner_steps, "backend": backend},
        }
    )
    exp = build_experiment(cfg)
    problem = exp.problem
    from metaloss.data.collate import collate_pairs

    g = torch.Generator().manual_seed(0)
    train = problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)  # batch 1, doubled by the swap
    test = problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    opt = make_outer_optimizer(problem.generator, "adam", 1e-4)
    step = lambda: meta_step(problem, train, test, opt, inner_lr=1e-4, inner_steps=inner_steps, backend=backend, lookahead_lr=1e-4)
    step()  # warm-up
    cuda = exp.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "inner_steps": inner_steps,
        "backend": backend,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "peak_bytes": peak,
        "peak_kind": "cuda_max_allocated" if cuda else "rss",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--task", type=int, nargs=2, default=(240, 320))
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backend", default="torch.func")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.crop, tuple(args.task), args.inner_steps[0], args.repeats, args.backend, args.device)))
        return 0
    results = []
    for k in args.inner_steps:
        cmd = [sys.executable, "-m", "benchmarks.meta_step", "--one", "--crop", str(args.crop), "--task", *map(str, args.task),
               "--inner-steps", str(k), "--backend", args.backend, "--repeats", str(args.repeats), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"inner_steps={k}: {r['seconds_median']:.2f} s, peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_kind']})", file=sys.stderr)
    base = results[0]
    print(f"| inner steps | time per meta-step (s) | x (vs 1 step) | peak memory (GiB) | x (vs 1 step) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['inner_steps']} | {r['seconds_median']:.2f} | {r['seconds_median'] / base['seconds_median']:.2f} "
            f"| {r['peak_bytes'] / 2**30:.2f} | {r['peak_bytes'] / base['peak_bytes']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"crop": args.crop, "task": args.task, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
