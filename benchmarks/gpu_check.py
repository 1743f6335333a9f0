"""The GPU path in one command, for the few minutes a GPU machine is lent (docs/gpu.md).

    python -m benchmarks.gpu_check                        # everything, on cuda; writes gpu_check.json + docs
    python -m benchmarks.gpu_check --steps meta fuse      # some steps only
    python -m benchmarks.gpu_check --device cpu --steps meta bf16 fuse metrics --no-doc   # the CPU parts

Steps, in this order (each one's result is kept when a later one fails or runs out of time):

- ``tests``: ``pytest -m cuda`` (device, cuDNN settings, bfloat16 runs, autocast, fuse, data parallel);
- ``meta``: the meta-gradient of one TDFusion-segmentation meta-step and the gradients of one learner
  step on the device against the CPU's, from the same weights and batches, in float32 and float64;
- ``bf16``: the learner step's gradients under bfloat16 autocast against float32, on the device;
- ``fuse``: ``metaloss fuse`` of a 480×640 pair with the shipped model on the device and on the CPU;
- ``metrics``: every metric of every profile on the device and on the CPU, same images;
- ``timing``: ``python -m benchmarks --device DEV --quick --parts meta inference`` (meta-step time and
  peak memory; fuse time per 480×640 and 1024×1280 pair).

Criteria (what "agrees" means, and why) are in :data:`CRITERIA`.  Results go to ``--out``
(``gpu_check.json``) and, unless ``--no-doc``, to the ``gpu`` section of docs/benchmarks.md.  The run
stops starting new steps when ``--budget`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.__main__ import RENDER, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
STEPS = ("tests", "meta", "bf16", "fuse", "metrics", "timing")
#: a device's float32 result may err by up to this many times the CPU's own float32 error (against
#: float64 on the CPU); float64 results likewise, scaled by the ratio of the formats' unit roundoffs
AMPLIFICATION = 10.0
CRITERIA = {
    "meta": f"relative difference from the CPU's float64 result ≤ {AMPLIFICATION:g} × the CPU's float32 one "
    "(float64: × u64/u32): another device's kernels add in another order, they must not lose accuracy",
    "bf16": "cosine of the bfloat16 and float32 gradients ≥ 0.99: the step goes the same way",
    "fuse": "the written 8-bit images differ by at most 1 grey level (rounding across a level's edge)",
    "metrics": "relative difference ≤ 1e-6: tables print 4 significant digits, a difference must not show",
}
SMALL = {"crop": 64, "task": (64, 64)}


def _flat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat([t.detach().double().cpu().reshape(-1) for t in tensors])


def relative(a: list[Any], b: list[Any]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors of the two lists (same shapes)."""
    fa, fb = _flat(a), _flat(b)
    return float((fa - fb).norm() / fb.norm())


def cosine(a: list[Any], b: list[Any]) -> float:
    fa, fb = _flat(a), _flat(b)
    return float(fa @ fb / (fa.norm() * fb.norm()))


# -- the computations compared ----------------------------------------------------------------------------
def _experiment(device: str, dtype: str) -> Any:
    """The TDFusion-segmentation problem of ``benchmarks.meta_step`` at small sizes: the weights are
    drawn on the CPU from the seed, so every device starts from the same ones."""
    from benchmarks.meta_step import _config
    from metaloss.config import load_config
    from metaloss.experiment import build_experiment

    return build_experiment(load_config(_config("torch.func", SMALL["crop"], SMALL["task"], 1, device, dtype)))


def _batches(exp: Any) -> tuple[Any, Any]:
    import torch

    from metaloss.data.collate import collate_pairs

    g = torch.Generator().manual_seed(0)
    problem = exp.problem
    return (
        problem.prepare_batch(collate_pairs([exp.train_set[0]]), g),
        problem.prepare_batch(collate_pairs([exp.train_set[1]]), g),
    )


def gradients(device: str, dtype: str, autocast: Any = None) -> dict[str, list[Any]]:
    """The meta-gradient of one meta-step (from the initial state) and the learner's and objective's
    gradients of one learner step after it; on ``device`` in ``dtype``, ``autocast`` for the learner step."""
    import torch

    from metaloss.meta import learner_step, meta_gradient, trainable_params

    exp = _experiment(device, dtype)
    problem = exp.problem
    train, test = _batches(exp)
    meta = meta_gradient(problem, train, test, inner_lr=1e-4, lookahead_lr=1e-4)[0]
    learner = list(trainable_params(problem.learner).values())
    objective = list(trainable_params(problem.objective).values())
    learner_step(
        problem, train, torch.optim.SGD(learner, lr=0.0), torch.optim.SGD(objective, lr=0.0), autocast=autocast
    )
    return {"meta": list(meta), "learner": [p.grad for p in learner + objective]}


def meta_check(device: str) -> dict[str, Any]:
    """Meta-gradient and learner-step gradients on ``device`` against the CPU, float32 and float64."""
    import torch

    from metaloss.utils.numerics import unit_roundoff

    ref = gradients("cpu", "float64")
    cpu32 = gradients("cpu", "float32")
    dev32, dev64 = gradients(device, "float32"), gradients(device, "float64")
    scale = unit_roundoff(torch.float64) / unit_roundoff(torch.float32)
    out: dict[str, Any] = {}
    for kind in ("meta", "learner"):
        cpu_error = relative(cpu32[kind], ref[kind])
        row = {
            "cpu_float32_vs_float64": cpu_error,
            "device_float32_vs_cpu_float64": relative(dev32[kind], ref[kind]),
            "device_float64_vs_cpu_float64": relative(dev64[kind], ref[kind]),
        }
        row["ok"] = (
            row["device_float32_vs_cpu_float64"] <= AMPLIFICATION * cpu_error
            and row["device_float64_vs_cpu_float64"] <= AMPLIFICATION * cpu_error * scale
        )
        out[kind] = row
    out["ok"] = all(out[k]["ok"] for k in ("meta", "learner"))
    return out


def bf16_check(device: str) -> dict[str, Any]:
    """The learner step's gradients with bfloat16 autocast against float32 on ``device``."""
    import torch

    exact = gradients(device, "float32")["learner"]
    mixed = gradients(device, "float32", autocast=torch.bfloat16)["learner"]
    out = {"relative": relative(mixed, exact), "cosine": cosine(mixed, exact)}
    return {**out, "ok": out["cosine"] >= 0.99}


def _pair(folder: Path, height: int, width: int) -> tuple[Path, Path]:
    """A synthetic infrared-visible pair written as PNG files (the lent machine has no data set)."""
    from metaloss.data.synthetic import SyntheticScenes
    from metaloss.deploy.fuse import write_png

    scene = SyntheticScenes(num_images=1, height=height, width=width)[0]
    paths = []
    for key in ("ir", "vi"):
        image = (scene[key][0].clamp(0, 1) * 255).round().byte().numpy()
        paths.append(write_png(folder / f"{key}.png", image))
    return paths[0], paths[1]


def fuse_check(device: str, height: int = 480, width: int = 640) -> dict[str, Any]:
    """``metaloss fuse`` (shipped model) of one pair on ``device`` and on the CPU; the largest grey-level
    difference of the written images and each run's time."""
    import numpy as np

    from metaloss.cli import main
    from metaloss.data.images import read_any

    with tempfile.TemporaryDirectory(prefix="gpu-check-fuse-") as tmp:
        ir, vi = _pair(Path(tmp), height, width)
        images, seconds = {}, {}
        for where in ("cpu", device):
            out = Path(tmp) / where.replace(":", "_")
            start = time.perf_counter()
            code = main(["fuse", "--a", str(ir), "--b", str(vi), "--out", str(out), "--device", where, "-q"])
            seconds[where] = time.perf_counter() - start
            if code:
                raise RuntimeError(f"metaloss fuse --device {where} exited with status {code}")
            images[where] = read_any(out / "vi.png").astype(np.int16)
    diff = int(np.abs(images["cpu"] - images[device]).max())
    return {"size": [height, width], "max_grey_diff": diff, "fuse_seconds": seconds, "ok": diff <= 1}


def metrics_check(device: str, height: int = 240, width: int = 320) -> dict[str, Any]:
    """Every metric of every profile on ``device`` and on the CPU, for one synthetic pair and a fused
    image (their mean): the largest relative difference per profile."""
    from metaloss.data.synthetic import SyntheticScenes
    from metaloss.metrics import PROFILES, evaluate

    scene = SyntheticScenes(num_images=1, height=height, width=width)[0]
    ir, vi = ((scene[k][None].double().clamp(0, 1) * 255).round() for k in ("ir", "vi"))
    fused = ((ir + vi) / 2).round()  # 8-bit values, as the images read from files
    out: dict[str, Any] = {}
    for name in PROFILES:
        cpu = evaluate(fused, ir, vi, profile=name)
        dev = evaluate(fused.to(device), ir.to(device), vi.to(device), profile=name)
        worst = {
            k: abs(float(dev[k].cpu()) - float(v)) / max(abs(float(v)), 1e-12)
            for k, v in cpu.items()
            if math.isfinite(float(v))
        }
        metric = max(worst, key=lambda k: worst[k])
        out[name] = {"metrics": len(cpu), "worst_metric": metric, "relative": worst[metric]}
    out["ok"] = all(out[p]["relative"] <= 1e-6 for p in PROFILES)
    return out


def cuda_test_files() -> list[Path]:
    """The test modules with a ``cuda`` test: collecting only these needs none of the test-only packages
    (hypothesis, scikit-learn, ...) that the GPU machine lacks, and takes seconds."""
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py") if "pytest.mark.cuda" in p.read_text())


def tests_check(timeout: float) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess (the tests run on ``cuda``); its summary line and status."""
    files = [str(p.relative_to(ROOT)) for p in cuda_test_files()]
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    return {"command": " ".join(cmd[2:]), "summary": summary, "ok": proc.returncode == 0, "tail": lines[-40:]}


def timing_check(device: str, timeout: float, out: Path) -> dict[str, Any]:
    """``python -m benchmarks --device DEVICE --quick --parts meta inference``, results as JSON."""
    path = out / "benchmarks_quick.json"
    cmd = [sys.executable, "-m", "benchmarks", "--device", device, "--quick", "--parts", "meta", "inference"]
    proc = subprocess.run([*cmd, "--json", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"command": " ".join(cmd[1:]), "results": json.loads(path.read_text()), "ok": True}


# -- running and reporting --------------------------------------------------------------------------------
def run_steps(steps: list[str], device: str, budget: float, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Each step in turn, timed; a failure is recorded and the next step runs; none starts after ``budget``."""
    start = time.perf_counter()
    left = lambda: budget - (time.perf_counter() - start)
    run: dict[str, Callable[[], dict[str, Any]]] = {
        "tests": lambda: tests_check(max(1.0, left())),
        "meta": lambda: meta_check(device),
        "bf16": lambda: bf16_check(device),
        "fuse": lambda: fuse_check(device),
        "metrics": lambda: metrics_check(device),
        "timing": lambda: timing_check(device, max(1.0, left()), out),
    }
    results: dict[str, Any] = {}
    for step in steps:
        if left() <= 0:
            results[step] = {"ok": False, "error": f"not started: the budget of {budget:.0f} s was spent"}
            continue
        log(f"gpu_check: {step} ({left():.0f} s left)")
        t0 = time.perf_counter()
        try:
            results[step] = run[step]()
        except Exception as err:  # recorded; the next step still runs
            results[step] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        results[step]["seconds"] = time.perf_counter() - t0
        log(f"gpu_check: {step} {'ok' if results[step]['ok'] else 'FAILED'} in {results[step]['seconds']:.0f} s")
    return results


def render(report: dict[str, Any]) -> str:
    """The ``gpu`` section of docs/benchmarks.md."""
    lines = [
        f"*GPU check: `python -m benchmarks.gpu_check` run {report['date']} on {report['machine']}; "
        f"{report['versions']}; {report['seconds']:.0f} s in all.*",
        "",
        "| step | result | seconds | agrees when |",
        "|---|---|---:|---|",
    ]
    for step, r in report["steps"].items():
        lines.append(f"| `{step}` | {_summary(step, r)} | {r['seconds']:.0f} | {CRITERIA.get(step, '')} |")
    timing = report["steps"].get("timing", {}).get("results")
    if timing:
        lines += [""] + [RENDER[part](timing[part]) + "\n" for part in ("meta", "inference") if part in timing]
    return "\n".join(lines)


def _summary(step: str, r: dict[str, Any]) -> str:
    verdict = "ok" if r["ok"] else "**failed**"
    if "error" in r:
        return f"{verdict}: {r['error'][:200]}"
    if step == "tests":
        return f"{verdict}: {r['summary']}"
    if step == "meta":
        return f"{verdict}: " + "; ".join(
            f"{k} float32 {r[k]['device_float32_vs_cpu_float64']:.1e} (CPU {r[k]['cpu_float32_vs_float64']:.1e}), "
            f"float64 {r[k]['device_float64_vs_cpu_float64']:.1e}"
            for k in ("meta", "learner")
        )
    if step == "bf16":
        return f"{verdict}: cosine {r['cosine']:.5f}, relative difference {r['relative']:.1e}"
    if step == "fuse":
        return f"{verdict}: max difference {r['max_grey_diff']} grey level(s), " + ", ".join(
            f"{k} {v:.1f} s" for k, v in r["fuse_seconds"].items()
        )
    if step == "metrics":
        return f"{verdict}: " + "; ".join(
            f"{p} {v['relative']:.0e} ({v['worst_metric']})" for p, v in r.items() if isinstance(v, dict)
        )
    return verdict


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import _versions

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default cuda)")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which no step starts (default 420)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json")
    parser.add_argument("--doc", type=Path, default=DOC, help="document whose gpu section is written")
    parser.add_argument("--no-doc", action="store_true", help="leave the document alone")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    steps = run_steps(args.steps, args.device, args.budget, args.out, lambda s: print(s, file=sys.stderr))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "versions": _versions(),
        "device": args.device,
        "seconds": time.perf_counter() - start,
        "criteria": CRITERIA,
        "steps": steps,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    body = render(report)
    print(body)
    if not args.no_doc:
        write_section(args.doc, "gpu", body)
    return 0 if all(r["ok"] for r in steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
