"""Time and peak memory of one TDFusion-segmentation meta-step, per implementation and inner steps.

Each configuration runs in a fresh process (so that its peak RSS is its own): build the TDFusion
segmentation problem (Restormer fusion net, TDFusion loss generator, SegFormer-B0; ``task.drop_path =
0`` so that every implementation draws no random numbers and computes the same thing), take the
first meta-step from the common initial state (its meta-gradient is saved and compared across
implementations; it also warms up), then time ``--repeats`` more.  Peak memory: the process's peak
RSS on CPU (everything: Python, torch, the networks, data; the RSS before the first step is reported
as well), ``torch.cuda.max_memory_allocated`` over the timed steps on GPU.

Implementations (``--impls``):

- ``torch.func``: ``metaloss.meta.meta_step`` with the default config (``performance.meta_gradient =
  "auto"``: the forward-mode meta-gradient of ``metaloss.meta.forward_mode`` for one inner step);
- ``torch.func:double_backward``: the same with ``meta_gradient = "double_backward"``;
- ``torch.func:recompute``: the default plus ``recompute_generator`` (less memory);
- ``higher``: ``meta.backend = "higher"`` (always double backward);
- ``reference``: ``benchmarks.reference_meta`` (shadow-parameter layers, task net through the disk).

    python -m benchmarks.meta_step                       # reference sizes: 256x256 crops, task 240x320
    python -m benchmarks.meta_step --crop 64 --task 64 64 --impls torch.func reference
    python -m benchmarks.meta_step --crop 64 --task 64 64 --inner-steps 1 2 4 --impls torch.func:double_backward
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metaloss.utils.memory import peak_rss_bytes

IMPLS = ("torch.func", "torch.func:double_backward", "torch.func:recompute", "higher", "reference")
ROOT = Path(__file__).resolve().parents[1]


def _config(impl: str, crop: int, task: tuple[int, int], inner_steps: int, device: str, dtype: str = "float32") -> dict:
    h, w = max(crop, task[0]), max(crop, task[1])
    performance: dict = {}
    meta: dict = {"inner_steps": inner_steps}
    if impl == "torch.func:double_backward":
        performance["meta_gradient"] = "double_backward"
    elif impl == "torch.func:recompute":
        performance["recompute_generator"] = True
    elif impl == "higher":
        meta["backend"] = "higher"
    elif impl not in ("torch.func", "reference"):
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    return {
        "device": device,
        "dtype": dtype,
        "data": {
            "name": "synthetic",
            "num_images": 4,
            "height": h,
            "width": w,
            "crop_size": crop,
            "task_size": list(task),
        },
        "loss_generator": {"name": "tdfusion"},
        "objective": {"name": "segmentation", "drop_path": 0.0},
        "meta": meta,
        "performance": performance,
    }


def _rss() -> int:
    return peak_rss_bytes()


def measure(
    impl: str,
    crop: int,
    task: tuple[int, int],
    inner_steps: int,
    repeats: int,
    device: str,
    grad_file: str | None = None,
    dtype: str = "float32",
) -> dict:
    import torch

    from metaloss.config import load_config
    from metaloss.data.collate import collate_pairs
    from metaloss.experiment import build_experiment
    from metaloss.meta import make_outer_optimizer, meta_gradient, meta_step

    if impl == "reference" and inner_steps != 1:
        raise ValueError("the reference-style meta-step takes one inner step")
    cfg = load_config(_config(impl, crop, task, inner_steps, device, dtype))
    exp = build_experiment(cfg)
    problem = exp.problem
    g = torch.Generator().manual_seed(0)
    train = problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)  # batch 1, doubled by the swap
    test = problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    lr = 1e-4
    opt = make_outer_optimizer(problem.loss_generator, "adam", 1e-4)
    cuda = exp.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if impl == "reference":
        from benchmarks.reference_meta import reference_meta_gradient, reference_meta_step

        workdir = tempfile.mkdtemp(prefix="refmeta-")
        first = lambda: reference_meta_gradient(problem, train, test, inner_lr=lr, lookahead_lr=lr, workdir=workdir)[0]
        step = lambda: reference_meta_step(problem, train, test, opt, inner_lr=lr, lookahead_lr=lr, workdir=workdir)
    else:
        backend = cfg.meta.backend
        first = lambda: meta_gradient(
            problem, train, test, inner_lr=lr, inner_steps=inner_steps, backend=backend, lookahead_lr=lr
        )[0]
        step = lambda: meta_step(
            problem, train, test, opt, inner_lr=lr, inner_steps=inner_steps, backend=backend, lookahead_lr=lr
        )
    sync()
    rss_before = _rss()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    grads = first()  # from the common initial state: compared across implementations (and a warm-up)
    sync()
    first_wall, first_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if grad_file:
        torch.save([x.detach().cpu() for x in grads], grad_file)
    del grads
    if impl == "reference":
        for p in problem.loss_generator.parameters():
            p.grad = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        step()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {
        "impl": impl,
        "inner_steps": inner_steps,
        "crop": crop,
        "task": list(task),
        "wall_s": walls,
        "cpu_s": cpus,
        "first_wall_s": first_wall,
        "first_cpu_s": first_cpu,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _rss(),
        "rss_before_bytes": rss_before,
        "peak_kind": "cuda_max_allocated" if cuda else "rss",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": dtype,
    }


def run_child(
    impl: str,
    crop: int,
    task: tuple[int, int],
    inner_steps: int,
    repeats: int,
    device: str,
    threads: int,
    grad_file: str,
    dtype: str = "float32",
) -> dict:
    """``measure`` in a fresh Python process with ``threads`` intra-op threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), YOLO_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.meta_step",
        "--one",
        "--impls",
        impl,
        "--crop",
        str(crop),
        "--task",
        *map(str, task),
        "--inner-steps",
        str(inner_steps),
        "--repeats",
        str(repeats),
        "--device",
        device,
        "--grad-file",
        grad_file,
        "--dtype",
        dtype,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(grad_files: dict[str, str], base: str) -> dict[str, float]:
    """Relative difference ``|g - g_base| / |g_base|`` of each implementation's first meta-gradient."""
    import torch

    flat = lambda path: torch.cat([x.flatten().double() for x in torch.load(path)])
    ref = flat(grad_files[base])
    return {impl: float((flat(path) - ref).norm() / ref.norm()) for impl, path in grad_files.items()}


def run_all(
    impls: list[str],
    crop: int,
    task: tuple[int, int],
    inner_steps: list[int],
    repeats: int,
    device: str,
    threads: int,
    log=print,
    dtype: str = "float32",
) -> dict:
    results, diffs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-meta-") as tmp:
        for k in inner_steps:
            files = {}
            for impl in impls:
                if impl == "reference" and k != 1:
                    continue
                files[impl] = os.path.join(tmp, f"{impl.replace(':', '_')}-{k}.pt")
                r = run_child(impl, crop, task, k, repeats, device, threads, files[impl], dtype)
                results.append(r)
                log(
                    f"  {impl}, {k} inner step(s): {min(r['cpu_s']):.2f} CPU-s, {min(r['wall_s']):.2f} s wall, "
                    f"peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_kind']})"
                )
            if files:
                diffs[k] = compare(files, next(iter(files)))
    return {
        "crop": crop,
        "task": list(task),
        "threads": threads,
        "device": device,
        "dtype": dtype,
        "results": results,
        "grad_rel_diff": {str(k): v for k, v in diffs.items()},
    }


def table(data: dict) -> str:
    """A markdown table of ``run_all``'s results (ratios against the reference-style implementation)."""
    rows = data["results"]
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    cuda = rows and rows[0]["peak_kind"] == "cuda_max_allocated"
    mem = "peak GPU memory (GiB)" if cuda else "peak RSS (GiB)"
    out = [
        f"| implementation | inner steps | CPU s / step | wall s / step | {mem} | RSS before the step (GiB) "
        "| time vs reference | memory vs reference | meta-gradient vs first row (rel. diff.) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu, wall = min(r["cpu_s"]), min(r["wall_s"])
        peak = r["peak_bytes"] / 2**30
        t_ratio = m_ratio = ""
        if ref is not None and r["inner_steps"] == 1:
            key = "wall_s" if cuda else "cpu_s"
            t_ratio = f"{min(r[key]) / min(ref[key]):.2f}"
            m_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.2f}"
        diff = data["grad_rel_diff"].get(str(r["inner_steps"]), {}).get(r["impl"])
        out.append(
            f"| `{r['impl']}` | {r['inner_steps']} | {cpu:.2f} | {wall:.2f} | {peak:.2f} | "
            f"{r['rss_before_bytes'] / 2**30:.2f} | {t_ratio} | {m_ratio} | "
            f"{'' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--task", type=int, nargs=2, default=(240, 320))
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--impls", nargs="+", default=["torch.func", "torch.func:double_backward", "higher", "reference"], choices=IMPLS
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each child process (default 1)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="float64: to check that the meta-gradients differ by rounding only",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--grad-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        r = measure(
            args.impls[0],
            args.crop,
            tuple(args.task),
            args.inner_steps[0],
            args.repeats,
            args.device,
            args.grad_file,
            args.dtype,
        )
        print(json.dumps(r))
        return 0
    data = run_all(
        args.impls,
        args.crop,
        tuple(args.task),
        args.inner_steps,
        args.repeats,
        args.device,
        args.threads,
        log=lambda s: print(s, file=sys.stderr),
        dtype=args.dtype,
    )
    print(table(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
