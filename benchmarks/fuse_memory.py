"""Peak resident memory and time of a whole `metaloss fuse` process on LLVIP 1280×1024 pairs.

Each configuration runs `metaloss.cli.main(["fuse", ...])` (what `metaloss fuse` runs) in a child process
on the same pairs; its peak RSS is the child's own ``VmHWM`` (everything included: Python, torch,
OpenCV, images, model, activations).  The fused PNGs of every
configuration are compared with those of the whole-image run (max |difference| in grey levels of
the written 8-bit images, stretch on, as `metaloss fuse` writes them).  Prints a markdown table.

    python -m benchmarks.fuse_memory                      # seeded untrained RestormerFusion, 2 pairs
    python -m benchmarks.fuse_memory --pairs 12 --checkpoint runs/x/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "llvip" / "test"

#: (label, extra `metaloss fuse` arguments)
CONFIGS: list[tuple[str, list[str]]] = [
    ("torch engine, whole image (`--engine torch --tile 0`)", ["--engine", "torch", "--tile", "0"]),
    ("default (auto: fast engine on the CPU)", []),
    ("default, `--allocator release`", ["--allocator", "release"]),
    ("default + `--save-weights`", ["--save-weights"]),
    ("torch engine, exact in 384 chunks (`--engine torch`)", ["--engine", "torch"]),
    ("torch engine, exact, `--tile 256`", ["--engine", "torch", "--tiling", "exact", "--tile", "256"]),
    (
        "torch engine, blend, `--tile 640 --overlap 192`",
        ["--engine", "torch", "--tiling", "blend", "--tile", "640", "--overlap", "192"],
    ),
]


def _checkpoint(path: Path, seed: int) -> Path:
    import torch

    from metaloss.checkpoint import write_model_checkpoint
    from metaloss.models.restormer import RestormerFusion

    torch.manual_seed(seed)
    fusion = RestormerFusion()
    try:
        from metaloss_tdfusion.loss_generator import TDFusionLossGenerator

        return write_model_checkpoint(
            path, fusion, {"name": "restormer"}, TDFusionLossGenerator(), {"name": "tdfusion"}
        )
    except ImportError:  # pragma: no cover
        from metaloss.models.conv_generator import ConvLossGenerator

        return write_model_checkpoint(path, fusion, {"name": "restormer"}, ConvLossGenerator(), {"name": "conv"})


#: ``metaloss fuse`` in a child that reports its own peak RSS on its last stderr line (``VmHWM``:
#: ``os.wait4``'s ``ru_maxrss`` would include this parent's resident memory at the spawn).
CHILD = (
    "import sys; from metaloss.cli import main; from metaloss.utils.memory import peak_rss_bytes; "
    "rc = main(['fuse', *sys.argv[1:]]); print('PEAK_RSS', peak_rss_bytes(), file=sys.stderr); sys.exit(rc)"
)


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS ")]
    peak_mib = int(peaks[-1]) / 2**20 if peaks else float("nan")
    return proc.returncode, peak_mib, time.perf_counter() - start, proc.stderr


def _compare(a: Path, b: Path) -> tuple[int, float]:
    import cv2
    import numpy as np

    worst, over = 0, 0.0
    files = sorted(p.name for p in a.glob("*.png") if "_w_" not in p.name and "_v_" not in p.name)
    for name in files:
        x = cv2.imread(str(a / name), cv2.IMREAD_UNCHANGED).astype(int)
        y = cv2.imread(str(b / name), cv2.IMREAD_UNCHANGED).astype(int)
        d = np.abs(x - y)
        worst, over = max(worst, int(d.max())), max(over, float((d > 1).mean()))
    return worst, over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with ir/ and vi/ (default: LLVIP test)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs to fuse per configuration (default 2)")
    parser.add_argument("--checkpoint", type=Path, help="model to use (default: a seeded, untrained RestormerFusion)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the child processes")
    parser.add_argument("--only", nargs="*", type=int, help="indices of CONFIGS to run (0 = whole image, always run)")
    args = parser.parse_args(argv)
    if not (args.data / "ir").is_dir():
        print(f"no pairs at {args.data} (needs ir/ and vi/)", file=sys.stderr)
        return 1
    names = sorted(p.name for p in (args.data / "ir").iterdir())[: args.pairs]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    configs = CONFIGS if args.only is None else [CONFIGS[0], *(CONFIGS[i] for i in args.only if i)]
    with tempfile.TemporaryDirectory(prefix="fuse_memory_") as tmp:
        root = Path(tmp)
        for sub in ("ir", "vi"):
            (root / sub).mkdir()
            for n in names:
                (root / sub / n).symlink_to((args.data / sub / n).resolve())
        ckpt = args.checkpoint or _checkpoint(root / "model.pt", args.seed)
        rows = []
        for i, (label, extra) in enumerate(configs):
            out = root / f"out{i}"
            cmd = [
                sys.executable,
                "-c",
                CHILD,
                "--checkpoint",
                str(ckpt),
                "--ir",
                str(root / "ir"),
                "--vi",
                str(root / "vi"),
                "--out",
                str(out),
                "--quiet",
                *extra,
            ]
            rc, peak, seconds, err = _run(cmd, env)
            if rc != 0:
                print(f"{label}: exit {rc}\n{err}", file=sys.stderr)
                rows.append((label, "failed", "", "", ""))
                continue
            diff, over = _compare(root / "out0", out) if i else (0, 0.0)
            rows.append((label, f"{peak:,.0f}", f"{seconds / len(names):.1f}", str(diff), f"{100 * over:.3f} %"))
            print(f"done: {label}: {peak:.0f} MiB, {seconds:.0f} s", file=sys.stderr, flush=True)
    model = (
        str(args.checkpoint)
        if args.checkpoint
        else f"seeded (seed {args.seed}) untrained RestormerFusion + TDFusion generator"
    )
    print(
        f"`metaloss fuse` on {len(names)} LLVIP pair(s) {', '.join(names)} (1280×1024), {model}; "
        f"{platform.machine()}, OMP_NUM_THREADS={args.threads}, torch CPU\n"
    )
    print(
        "| configuration | peak RSS (MiB) | s / pair | max \\|Δ\\| vs whole (grey levels) | pixels with \\|Δ\\| > 1 |"
    )
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
