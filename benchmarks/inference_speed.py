"""Fusion inference time per pair against the FLOP floor of the network on the same machine.

For each image size and engine a fresh process builds the seeded reference-size ``RestormerFusion``
(59,856 parameters), runs one warm-up pair and then ``--repeats`` timed pairs (random images, batch
1), and reports the best CPU time and wall time per pair and its peak RSS.  Engines:

- ``torch``: the eager ``forward`` on the whole image (``torch.inference_mode``; allocator "keep");
- ``torch:exact``: ``metaloss fuse --engine torch``'s default plan for the size (whole image up to
  640×640 pixels, else exact tiling in 384-pixel chunks; allocator "release", the CLI's default with
  that engine);
- ``fast``: ``metaloss.deploy.engine`` (``metaloss fuse``'s default engine on the CPU; allocator "keep"),
  which runs ``--threads`` row bands side by side, each on one thread;
- ``fast:in-turn`` (on request): the same with the bands in turn and each op on the ``--threads``
  intra-op threads (the engine before band workers; identical to ``fast`` with one thread);
- ``onnxruntime``: the model exported by ``metaloss.deploy.export`` run by onnxruntime's CPU provider
  (all graph optimisations, ``--threads`` intra-op threads).

The floor: the network's multiply-adds counted by ``torch.utils.flop_counter`` (convolutions and
matrix products; they scale exactly with the pixel count) over the float32 matrix-product rate
measured in a process of its own with the same thread count (best of several 2048×2048 products, timed
before and after the engines; the larger rate is used).  With one thread the times and the rate
are CPU times, which a loaded machine disturbs least; with several, wall times.  At 480×640 each
engine also times ``--repeats`` *paired* samples (after the timed pairs, so that the peak RSS is the
engine's alone): a rate measured in the engine's process right before each pair, the ratio taken
per sample; their median is robust to the drift of a shared machine between the separate rate
processes and the engine's.  Each engine's output is compared with the eager forward's (max
absolute difference).

    python -m benchmarks.inference_speed                          # 480x640 and 1024x1280, 1 thread
    python -m benchmarks.inference_speed --sizes 480x640 --threads 2 --engines torch fast
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metaloss.utils.memory import peak_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "torch:exact", "fast", "onnxruntime")
OPTIONAL_ENGINES = ("fast:in-turn",)
#: metaloss fuse's allocator policy with each engine (the CLI's --allocator auto)
ALLOCATOR = {"torch": "keep", "torch:exact": "release", "fast": "keep", "fast:in-turn": "keep", "onnxruntime": "system"}


def _net(device: str = "cpu"):
    import torch

    from metaloss.models.restormer import RestormerFusion

    torch.manual_seed(0)
    return RestormerFusion().eval().requires_grad_(False).to(device)


def _clock(threads: int, cuda: bool) -> tuple:
    """(start, stop) measuring CPU time with one CPU thread, wall time otherwise (CUDA synchronised)."""
    import torch

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.process_time() if threads == 1 and not cuda else time.perf_counter()

    return now


def measure_engine(
    engine: str,
    height: int,
    width: int,
    repeats: int,
    threads: int,
    device: str,
    out_file: str | None,
    paired_repeats: int = 0,
) -> dict:
    import torch

    from metaloss.utils.memory import set_allocator_policy

    set_allocator_policy(ALLOCATOR[engine])  # type: ignore[arg-type]
    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    net = _net(device)
    g = torch.Generator().manual_seed(1)
    ir, vi = torch.rand(1, 1, height, width, generator=g), torch.rand(1, 1, height, width, generator=g)
    if engine == "onnxruntime":
        import onnxruntime as ort

        from metaloss.deploy.export import export_onnx

        folder = tempfile.mkdtemp(prefix="bench-onnx-")
        path = export_onnx(net.cpu(), Path(folder) / "fusion.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        feeds = {"ir": ir.numpy(), "vi": vi.numpy()}
        run = lambda: torch.from_numpy(session.run(["fused"], feeds)[0])
    else:
        from metaloss.deploy.fuse import fuse_pair

        ir, vi = ir.to(device), vi.to(device)
        if engine == "torch":
            run = lambda: net(ir, vi)
        elif engine == "torch:exact":
            run = lambda: fuse_pair(net, ir, vi, engine="torch")  # the automatic plan
        elif engine == "fast":
            run = lambda: fuse_pair(net, ir, vi, engine="fast")
        elif engine == "fast:in-turn":
            from metaloss.deploy.engine import fast_forward

            run = lambda: fast_forward(net, ir, vi, workers=1)
        else:
            raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES + OPTIONAL_ENGINES)}")
    now = _clock(threads, cuda)
    with torch.inference_mode():
        out = run()  # warm-up
        cpu_s, wall_s = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            now()
            out = run()
            now()
            cpu_s.append(time.process_time() - c)
            wall_s.append(time.perf_counter() - w)
    peak = peak_rss_bytes()
    paired = []
    if paired_repeats:
        with torch.inference_mode():  # after the timed pairs, so that their peak RSS is the engine's alone
            for _ in range(paired_repeats):
                rate = matmul_rate(threads, device, repeats=3)
                start = now()
                run()
                paired.append({"rate": rate, "seconds": now() - start})
    if out_file:
        torch.save(out.float().cpu(), out_file)
    return {
        "paired": paired,
        "engine": engine,
        "size": [height, width],
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "peak_rss_bytes": peak,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "threads": threads,
        "allocator": ALLOCATOR[engine],
    }


def matmul_rate(threads: int, device: str, n: int = 2048, repeats: int = 10) -> float:
    """Best float32 n×n matrix-product rate (FLOP/s; CPU time with one thread, wall time otherwise)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    cuda = device.startswith("cuda")
    now = _clock(threads, cuda)
    best = float("inf")
    for _ in range(repeats):
        s = now()
        a @ b
        best = min(best, now() - s)
    return 2 * n**3 / best


def flops_per_pixel() -> float:
    """Multiply-add FLOPs (2 per MAC) of the network's convolutions and matrix products per pixel."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = _net()
    x = torch.rand(1, 1, 64, 80)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x, x)
    return counter.get_total_flops() / (64 * 80)


def _child(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.inference_speed", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(
    sizes: list[tuple[int, int]],
    engines: list[str],
    repeats: int,
    threads: int,
    device: str,
    log=print,
    paired_sizes: tuple[tuple[int, int], ...] = ((480, 640),),
) -> dict:
    import torch

    rate = lambda: _child(["--rate", "--threads", str(threads), "--device", device], threads)["rate"]
    rates = [rate()]
    log(f"  matmul rate: {rates[0] / 1e9:.0f} GFLOP/s")
    per_pixel = flops_per_pixel()
    if device.startswith("cuda") and "onnxruntime" in engines:
        try:
            import onnxruntime as ort

            has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        except ImportError:
            has_cuda = False
        if not has_cuda:  # the CPU package would silently run on the CPU
            log("  onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): skipped")
            engines = [e for e in engines if e != "onnxruntime"]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for h, w in sizes:
            outs = {}
            for engine in ["torch", *[e for e in engines if e != "torch"]]:
                outs[engine] = os.path.join(tmp, f"{engine.replace(':', '_')}-{h}x{w}.pt")
                paired = repeats if (h, w) in paired_sizes else 0
                r = _child(
                    [
                        "--one",
                        engine,
                        "--sizes",
                        f"{h}x{w}",
                        "--repeats",
                        str(repeats),
                        "--threads",
                        str(threads),
                        "--device",
                        device,
                        "--out-file",
                        outs[engine],
                        "--paired",
                        str(paired),
                    ],
                    threads,
                )
                r["max_abs_diff"] = float((torch.load(outs[engine]) - torch.load(outs["torch"])).abs().max())
                results.append(r)
                log(
                    f"  {engine} {h}x{w}: {min(r['cpu_s']):.2f} CPU-s, {min(r['wall_s']):.2f} s wall, "
                    f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB, max |diff| {r['max_abs_diff']:.1e}"
                )
    rates.append(rate())
    log(f"  matmul rate after: {rates[1] / 1e9:.0f} GFLOP/s")
    return {
        "threads": threads,
        "device": device,
        "flops_per_pixel": per_pixel,
        "matmul_rates": rates,
        "results": [r for r in results if r["engine"] in engines],
    }


def paired_ratios(result: dict, flops_per_pixel: float) -> list[float]:
    """Time over floor for each paired sample: a pair timed right after a matrix-product rate, so
    that both see the machine in the same state (a shared VM drifts by ±15 % over minutes)."""
    h, w = result["size"]
    return [p["seconds"] / (flops_per_pixel * h * w / p["rate"]) for p in result.get("paired", [])]


def table(data: dict) -> str:
    rate = max(data["matmul_rates"])
    one = data["threads"] == 1 and not data["device"].startswith("cuda")
    unit = "CPU s" if one else "wall s"
    out = [
        f"| size | engine | {unit} / pair | floor (s) | × floor | × floor, paired (median, range) | peak RSS (GiB) | "
        "max \\|Δ\\| vs eager |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        h, w = r["size"]
        t = min(r["cpu_s"] if one else r["wall_s"])
        floor = data["flops_per_pixel"] * h * w / rate
        ratios = paired_ratios(r, data["flops_per_pixel"])
        paired = f"{statistics.median(ratios):.1f} ({min(ratios):.1f}–{max(ratios):.1f})" if ratios else "–"
        out.append(
            f"| {h}×{w} | `{r['engine']}` | {t:.2f} | {floor:.2f} | {t / floor:.1f} | {paired} | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['max_abs_diff']:.0e} |"
        )
    return "\n".join(out)


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(480, 640), (1024, 1280)], metavar="HxW")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES + OPTIONAL_ENGINES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: one engine
    parser.add_argument("--rate", action="store_true", help=argparse.SUPPRESS)  # child: matmul rate
    parser.add_argument("--out-file", help=argparse.SUPPRESS)
    parser.add_argument("--paired", type=int, default=0, help=argparse.SUPPRESS)  # child: paired rate/pair samples
    args = parser.parse_args(argv)
    if args.rate:
        print(json.dumps({"rate": matmul_rate(args.threads, args.device)}))
        return 0
    if args.one:
        h, w = args.sizes[0]
        print(
            json.dumps(
                measure_engine(args.one, h, w, args.repeats, args.threads, args.device, args.out_file, args.paired)
            )
        )
        return 0
    data = run_all(
        args.sizes, args.engines, args.repeats, args.threads, args.device, log=lambda s: print(s, file=sys.stderr)
    )
    data["machine"] = platform.processor() or platform.machine()
    print(table(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
