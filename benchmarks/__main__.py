"""Run the speed and memory benchmarks and write their sections of docs/benchmarks.md.

    python -m benchmarks                              # everything at the reference sizes (CPU: tens of minutes)
    python -m benchmarks --parts meta inference       # some parts only (the others' sections are kept)
    python -m benchmarks --quick                      # a smoke run at small sizes, printed, docs untouched
    python -m benchmarks --device cuda --threads 4    # on a GPU (meta-step and inference parts)
    python -m benchmarks --device cuda --quick        # on a GPU: the reference sizes, one repeat, eager engines

Parts:

- ``meta``: one TDFusion-segmentation meta-step (256×256 crops, batch 1 doubled by the modality
  swap, task input 240×320) with ``torch.func`` (forward-mode meta-gradient, and the double backward),
  ``higher`` and the reference code's approach (``benchmarks.reference_meta``): time, peak memory,
  the meta-gradients' relative differences (``benchmarks.meta_step``);
- ``inference``: fusion time per pair at 480×640 and 1024×1280 for the eager forward, ``metaloss
  fuse``'s engines and onnxruntime, against the FLOP floor measured in the same run
  (``benchmarks.inference_speed``);
- ``metrics``: the fusion-metric timings on the VIFB set, and ``mefb`` against ``vifb`` on MEFB's
  multi-exposure images (``benchmarks.metrics_speed``), written below that section's hand-written
  analysis.

Each part's section lies between ``<!-- BEGIN <part> -->`` and ``<!-- END <part> -->`` markers in the
document, with the machine, the versions, the date and the load average at the start and end of
the part.  The CPU runs take one intra-op thread per process by default and report CPU time,
which the other jobs of a shared machine disturb least; ``--threads`` changes that (wall times).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import re
import statistics
import sys
from pathlib import Path

from benchmarks import inference_speed, meta_step

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PARTS = ("meta", "inference", "metrics")

#: targets of the benchmarks issue
META_TIME_TARGET = META_MEMORY_TARGET = 0.8
INFERENCE_FLOOR_TARGET = 3.0


def _versions() -> str:
    import numpy
    import torch

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {numpy.__version__}"]
    for name in ("onnxruntime", "cv2", "higher", "segmentation_models_pytorch"):
        try:
            module = __import__(name)
            version = getattr(module, "__version__", None) or importlib.metadata.version(name)
            parts.append(f"{'opencv' if name == 'cv2' else name} {version}")
        except ImportError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def machine() -> str:
    """CPU model, cores, memory and GPU of this machine, in words."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        flags = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else ""
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB memory"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{model} ({os.cpu_count()} cores{', ' + flags if flags else ''}){memory}, {gpu}"


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def conditions(args: argparse.Namespace, load_start: str) -> dict:
    """When, where and how a part was measured (stored with its results)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": _versions(),
        "device": args.device,
        "threads": args.threads,
        "repeats": 1 if args.quick else args.repeats,
        "quick": bool(args.quick),
        "load_start": load_start,
        "load_end": _load(),
    }


def header(c: dict, title: str) -> str:
    threads = f"{c['threads']} intra-op thread{'s' if c['threads'] > 1 else ''} per process"
    return (
        f"*{title}: measured {c['date']} on {c['machine']}; {c['versions']}; device {c['device']}, {threads}; "
        f"load average (1/5/15 min) {c['load_start']} at the start, {c['load_end']} at the end"
        f"{'; quick mode' if c.get('quick') else ''}.*"
    )


def write_section(doc: Path, part: str, body: str) -> None:
    """Replace the text between this part's markers in ``doc`` (appended when absent)."""
    begin, end = f"<!-- BEGIN {part} -->", f"<!-- END {part} -->"
    text = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


# -- parts ------------------------------------------------------------------------------------------------
def small_sizes(args: argparse.Namespace) -> bool:
    """``--quick`` shrinks the images on the CPU only: a GPU takes the reference sizes in seconds, and
    they are the sizes its timings are wanted for."""
    return bool(args.quick) and not args.device.startswith("cuda")


def engines(device: str) -> list[str]:
    """The inference engines worth timing on ``device``: on a GPU the eager forward and ``metaloss fuse``'s
    plan (the fast engine and onnxruntime's CPU provider are CPU engines)."""
    return ["torch", "torch:exact"] if device.startswith("cuda") else list(inference_speed.ENGINES)


def meta_part(args: argparse.Namespace) -> dict:
    load = _load()
    crop, task = (64, (64, 64)) if small_sizes(args) else (256, (240, 320))
    impls = ["torch.func", "torch.func:recompute", "torch.func:double_backward", "higher", "reference"]
    data = meta_step.run_all(
        impls,
        crop,
        task,
        [1],
        1 if args.quick else args.repeats,
        args.device,
        args.threads,
        log=lambda s: print(s, file=sys.stderr),
    )
    # the meta-gradients in float64 (small sizes): differences of rounding only?
    data["float64_check"] = meta_step.run_all(
        ["torch.func", "torch.func:double_backward", "higher", "reference"],
        32 if args.quick else 64,
        (32, 32) if args.quick else (64, 64),
        [1],
        1,
        args.device,
        args.threads,
        log=lambda s: print(s, file=sys.stderr),
        dtype="float64",
    )
    data["conditions"] = conditions(args, load)
    return data


def render_meta(data: dict) -> str:
    c = data["conditions"]
    rows = {r["impl"]: r for r in data["results"]}
    key = "wall_s" if c["device"].startswith("cuda") or c["threads"] > 1 else "cpu_s"
    t = lambda impl: min(rows[impl][key])
    m = lambda impl: rows[impl]["peak_bytes"]
    verdicts = []
    for impl in ("torch.func", "torch.func:recompute"):
        if impl not in rows or "reference" not in rows:
            continue
        tr, mr = t(impl) / t("reference"), m(impl) / m("reference")
        line = (
            f"- `{impl}`: time {tr:.2f}× the reference-style step (target ≤ {META_TIME_TARGET}: "
            f"{'met' if tr <= META_TIME_TARGET else 'not met'}), peak memory {mr:.2f}× "
            f"(target ≤ {META_MEMORY_TARGET}: {'met' if mr <= META_MEMORY_TARGET else 'not met'})"
        )
        if "higher" in rows:
            line += (
                f"; {'no slower' if t(impl) <= t('higher') else 'slower'} than `higher` "
                f"({t(impl):.2f} vs {t('higher'):.2f} s)"
            )
        verdicts.append(line + ".")
    crop, task = data["crop"], data["task"]
    lines = [
        header(c, "Meta-step"),
        "",
        f"Crops {crop}×{crop}, task input {task[0]}×{task[1]}, batch 1 doubled by the modality swap (2 images), "
        f"one inner step; the first step (from the common initial state: its meta-gradients are the ones compared) "
        f"is not timed; best of {c['repeats']} timed steps.",
        "",
        meta_step.table(data),
        "",
        *verdicts,
    ]
    check = data.get("float64_check")
    if check:
        diffs = ", ".join(f"`{k}` {v:.1e}" for k, v in check["grad_rel_diff"]["1"].items() if k != "torch.func")
        lines += [
            "",
            f"The same meta-gradients in float64 at {check['crop']}×{check['crop']} crops, task "
            f"{check['task'][0]}×{check['task'][1]}, relative difference from `torch.func`: {diffs}.",
        ]
    return "\n".join(lines)


def inference_part(args: argparse.Namespace) -> dict:
    load = _load()
    sizes = [(120, 160)] if small_sizes(args) else [(480, 640), (1024, 1280)]
    data = inference_speed.run_all(
        sizes,
        engines(args.device),
        1 if args.quick else args.repeats,
        args.threads,
        args.device,
        log=lambda s: print(s, file=sys.stderr),
    )
    data["conditions"] = conditions(args, load)
    return data


def render_inference(data: dict) -> str:
    c = data["conditions"]
    rate = max(data["matmul_rates"])
    one = data["threads"] == 1 and not data["device"].startswith("cuda")
    verdicts = []
    for r in data["results"]:
        if r["size"] == [480, 640] and r["engine"] in ("fast", "torch", "onnxruntime"):
            t = min(r["cpu_s"] if one else r["wall_s"])
            ratio = t / (data["flops_per_pixel"] * 480 * 640 / rate)
            paired = inference_speed.paired_ratios(r, data["flops_per_pixel"])
            median = statistics.median(paired) if paired else ratio
            met = max(ratio, median) <= INFERENCE_FLOOR_TARGET  # both measures within the target
            verdicts.append(
                f"- `{r['engine']}` at 480×640: {ratio:.1f}× the floor (best pair / best rate)"
                + (f", {median:.1f}× paired (median of {len(paired)})" if paired else "")
                + f" (target ≤ {INFERENCE_FLOOR_TARGET:.0f}: {'met' if met else 'not met'})."
            )
    return "\n".join(
        [
            header(c, "Inference"),
            "",
            f"The network: {data['flops_per_pixel'] / 2:,.0f} multiply-adds per pixel "
            f"({data['flops_per_pixel'] * 480 * 640 / 2e9:.1f} GMAC at 480×640). Matrix-product rate "
            f"{', then '.join(f'{x / 1e9:.0f}' for x in data['matmul_rates'])} GFLOP/s (before, after the engines; "
            f"{'CPU time, 1 thread' if one else 'wall time'}); floor = FLOPs / the larger rate. Best of {c['repeats']} "
            "pairs "
            "after a warm-up pair.",
            "",
            inference_speed.table(data),
            "",
            *verdicts,
        ]
    )


def metrics_part(args: argparse.Namespace) -> dict:
    from benchmarks import metrics_speed

    load = _load()
    argv = (
        ["--profiles", "cddfuse", "--repeats", "1", "--skip-end-to-end"]
        if args.quick
        else ["--profiles", "cddfuse", "tdfusion", "vifb", "--mef"]
    )
    argv += ["--threads", str(args.threads), "--device", args.device]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = metrics_speed.main(argv)
    if code:
        raise RuntimeError(f"benchmarks.metrics_speed {' '.join(argv)} failed with status {code}")
    return {"argv": argv, "output": out.getvalue(), "conditions": conditions(args, load)}


def render_metrics(data: dict) -> str:
    return "\n".join(
        [header(data["conditions"], "Latest run of `python -m benchmarks --parts metrics`"), "", data["output"].strip()]
    )


RUN = {"meta": meta_part, "inference": inference_part, "metrics": metrics_part}
RENDER = {"meta": render_meta, "inference": render_inference, "metrics": render_metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one repeat; prints, leaves the docs alone unless --doc is given",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (meta-step, inference, metrics)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (default 1: CPU times)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per configuration (best kept)")
    parser.add_argument(
        "--doc", type=Path, help=f"document to update (default {DOC.relative_to(ROOT)}; none with --quick)"
    )
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    parser.add_argument(
        "--from-json", type=Path, help="render the sections from a JSON file written by --json (no measurement)"
    )
    args = parser.parse_args(argv)
    doc = args.doc or (None if args.quick else DOC)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = {}
        for part in args.parts:
            print(f"benchmarks: {part}", file=sys.stderr)
            results[part] = RUN[part](args)
            if args.json:  # after every part, so that a later failure keeps the finished ones
                args.json.write_text(json.dumps(results, indent=2))
    for part in args.parts:
        if part not in results:
            continue
        body = RENDER[part](results[part])
        print(body + "\n")
        if doc is not None:
            write_section(doc, part, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
