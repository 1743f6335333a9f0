"""Speed of the fusion metrics on the VIFB set (21 pairs × 13 methods = 273 fused images).

Reference: CDDFuse's own ``utils/Evaluator.py`` needs about 1.85 CPU-seconds per fused image for
its 12 metrics on these images (273 images: 506 CPU-s). We time the ``cddfuse`` profile (the same
12 metrics, same values to < 1e-6) — and, for information, ``vifb`` and ``tdfusion`` — two ways:

- ``metrics``: ``metaloss.metrics.evaluate`` on images already in memory, one call per source pair
  with its 13 fused images as a batch (the sources' own statistics are computed once per pair);
- ``end-to-end``: ``evaluate_folders`` from the JPEG files (decoding included), as ``metaloss eval``
  runs.

CPU time is the process's user+system time (``time.process_time``), the measure of the reference
figure; wall time is reported beside it. Prints a markdown table.

    python -m benchmarks.metrics_speed                         # cddfuse, 1 thread
    python -m benchmarks.metrics_speed --profiles cddfuse vifb tdfusion --threads 2
    python -m benchmarks.metrics_speed --workers 2 --threads 1 # pairs in 2 threads
    python -m benchmarks.metrics_speed --device cuda
    python -m benchmarks.metrics_speed --mef                   # + mefb vs vifb on MEFB's fused images

``--mef`` adds a table on the multi-exposure reference set (``../shared/data/mef``: MEFB's fused
images of 15 scenes by 7 methods, those of their sources' size): the ``mefb`` profile's 20 metrics
against the ``vifb`` profile on the same images (MEFB's MATLAB code is not runnable here), and the
``mefb`` profile without Qp.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "vifb"
DEFAULT_MEF = REPO.parent / "shared" / "data" / "mef"
#: CDDFuse's Evaluator on these 273 images: CPU-seconds per fused image (12 metrics).
REFERENCE_CPU_S_PER_IMAGE = 1.85


def _load(data: Path, profile: str):
    from metaloss.metrics import list_images, load_image_tensor

    methods = sorted(p for p in (data / "fused").iterdir() if p.is_dir())
    pairs = []
    for ip in list_images(data / "ir"):
        ir = load_image_tensor(ip, profile)
        vi = load_image_tensor(data / "vi" / ip.name, profile)
        import torch

        fused = torch.cat([load_image_tensor(m / ip.name, profile) for m in methods])
        pairs.append((ir, vi, fused))
    return methods, pairs


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _load_mef(mef: Path, profile: str):
    """``(a, b, fused batch)`` per scene of MEFB's reference set: under, over, and the methods' fused
    images of the sources' size (six Preschool files are twice that: another version of the scene)."""
    import torch

    from metaloss.metrics import list_images, load_image_tensor

    methods = sorted(p for p in (mef / "mefb_reference" / "fused").iterdir() if p.is_dir())
    pairs = []
    for under in list_images(mef / "under"):
        a = load_image_tensor(under, profile)
        b = load_image_tensor(next(p for p in list_images(mef / "over") if p.stem == under.stem), profile)
        fused = [load_image_tensor(f, profile) for m in methods for f in list_images(m) if f.stem == under.stem]
        fused = [f for f in fused if f.shape[-2:] == a.shape[-2:]]
        if fused:
            pairs.append((a, b, torch.cat(fused)))
    return pairs


def bench_metrics(
    data: Path, profile: str, device: str, repeats: int, metrics: list[str] | None = None, pairs: list | None = None
) -> tuple[int, float, float]:
    """Best of ``repeats`` passes over the in-memory pairs (default: the VIFB set's): (images, wall s, CPU s)."""
    from metaloss.metrics import evaluate

    if pairs is None:
        _, pairs = _load(data, profile)
    pairs = [(a.to(device), b.to(device), f.to(device)) for a, b, f in pairs]
    n = sum(f.shape[0] for _, _, f in pairs)
    evaluate(pairs[0][2][:1], pairs[0][0], pairs[0][1], profile, metrics)  # warm-up (OpenCV/torch init, CUDA)
    _sync(device)
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for ir, vi, fused in pairs:
            evaluate(fused, ir, vi, profile, metrics)
        _sync(device)
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return n, best[0], best[1]


def bench_folders(data: Path, profile: str, device: str, workers: int) -> tuple[int, float, float]:
    from metaloss.metrics import evaluate_folders

    dirs = sorted(p for p in (data / "fused").iterdir() if p.is_dir())
    evaluate_folders(data / "ir", data / "vi", dirs[:1], profile, ["EN"], device=device, progress=False)
    c0, t0 = time.process_time(), time.perf_counter()
    res = evaluate_folders(data / "ir", data / "vi", dirs, profile, device=device, progress=False, workers=workers)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(len(m.evaluated) for m in res.methods)
    return n, wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VIFB folder (ir/, vi/, fused/<method>/)")
    ap.add_argument("--profiles", nargs="+", default=["cddfuse"], choices=["cddfuse", "vifb", "tdfusion"])
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="source pairs in parallel (end-to-end mode)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="passes of the in-memory benchmark (best kept)")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument(
        "--mef",
        nargs="?",
        type=Path,
        const=DEFAULT_MEF,
        metavar="DIR",
        help=f"also time mefb against vifb on MEFB's fused images (default folder: {DEFAULT_MEF})",
    )
    args = ap.parse_args(argv)

    if not args.data.is_dir():
        print(f"VIFB data not found: {args.data}", file=sys.stderr)
        return 2
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}, {args.threads} thread(s), device {args.device}"
    )
    try:
        load = os.getloadavg()[0]
        print(f"load average at start: {load:.2f}")
    except OSError:
        pass
    print()
    print("| profile | mode | images | wall s | CPU s | CPU ms / image | vs CDDFuse Evaluator (1.85 CPU-s / image) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for profile in args.profiles:
        rows = [("metrics (in memory)",) + bench_metrics(args.data, profile, args.device, args.repeats)]
        if not args.skip_end_to_end:
            mode = "end-to-end (decode + metrics)" + (f", {args.workers} workers" if args.workers > 1 else "")
            rows.append((mode,) + bench_folders(args.data, profile, args.device, args.workers))
        for mode, n, wall, cpu in rows:
            per = cpu / n
            ratio = f"{REFERENCE_CPU_S_PER_IMAGE / per:.0f}x faster" if profile == "cddfuse" else "(other metrics)"
            print(f"| {profile} | {mode} | {n} | {wall:.1f} | {cpu:.1f} | {per * 1000:.0f} | {ratio} |")
    if args.mef is not None:
        print_mef_table(args.mef, args.device)
    return 0


def print_mef_table(mef: Path, device: str) -> None:
    """The ``mefb`` profile against ``vifb`` on the same images (metrics in memory, one pass each: Qp
    alone takes minutes)."""
    from metaloss.metrics import PROFILES

    pairs = _load_mef(mef, "mefb")  # both profiles read images as MATLAB's imread
    without_qp = [m for m in PROFILES["mefb"].metrics if m != "Qp"]
    rows = [
        ("vifb", "all 13", None),
        ("mefb", "all 20", None),
        ("mefb", "19, without Qp", without_qp),
        ("mefb", "Qp alone", ["Qp"]),
    ]
    timed = [
        (profile, label, *bench_metrics(mef, profile, device, 1, metrics, pairs)) for profile, label, metrics in rows
    ]
    base = timed[0][4] / timed[0][2]
    print()
    print(f"MEFB's fused images ({mef}): {len(pairs)} scenes, metrics in memory")
    print()
    print("| profile | metrics | images | wall s | CPU s | CPU ms / image | vs vifb |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for profile, label, n, wall, cpu in timed:
        print(f"| {profile} | {label} | {n} | {wall:.1f} | {cpu:.1f} | {cpu / n * 1000:.0f} | {cpu / n / base:.2f}x |")


if __name__ == "__main__":
    raise SystemExit(main())
