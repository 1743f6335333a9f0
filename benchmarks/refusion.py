"""ReFusion: train the shipped pretrained models, score them, and the learned-vs-fixed ablation.

Every number comes from the user-facing commands: ``metaloss run CONFIG`` trains, ``metaloss fuse``
fuses the evaluation pairs with the run's checkpoint (per-image min-max stretch on, as the reference
test scripts), and ``metaloss eval --profile cddfuse`` scores them.

    python -m benchmarks.refusion pretrained      # examples/refusion_roadscene.toml -> metaloss/pretrained/default.pt
    python -m benchmarks.refusion task mfif       # examples/refusion_mfif.toml      -> metaloss/pretrained/mfif.pt
    python -m benchmarks.refusion task mef        # examples/refusion_mef.toml       -> metaloss/pretrained/mef.pt
    python -m benchmarks.refusion task medical    # examples/refusion_medical.toml   -> metaloss/pretrained/medical.pt
    python -m benchmarks.refusion ablation        # learned loss vs fixed W = V = 0.5, same budget, on tno25
    python -m benchmarks.refusion score CKPT --data ../shared/data/tno25     # any checkpoint

Results go to docs/pretrained.md and docs/refusion.md (between RESULTS markers), with the run
directories under runs/refusion-*/ (not committed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"]

#: Published values on tno25 (cddfuse profile) that the pretrained model is compared with.
TNO_REFERENCE = {
    "official ReFusion IVIF checkpoint, its test script, CDDFuse Evaluator": {
        "EN": 7.10,
        "SD": 43.8,
        "SF": 12.9,
        "AG": 4.86,
        "MI": 2.04,
        "SCD": 1.73,
        "VIF": 0.754,
        "Qabf": 0.552,
        "SSIM": 1.016,
    },
    "plain average of the two sources": {"VIF": 0.573, "Qabf": 0.356, "SSIM": 1.014},
    "CDDFuse (published)": {"VIF": 0.77, "Qabf": 0.54, "SSIM": 1.03},
}
#: The targets of the pretrained model on tno25 (at least the official ReFusion model).
TNO_TARGET = {"VIF": 0.754, "Qabf": 0.552, "SSIM": 1.016}


@dataclass(frozen=True)
class EvalSet:
    """Pairs a task model is scored on: ``data/a`` + ``data/b``, the stems matching ``pattern`` (shell
    pattern) or those of a dataset's held-out ``split``, with published or measured reference rows."""

    data: Path
    a: str
    b: str
    pattern: str = "*"
    held_out: str = ""  # "config": the run's own validation pairs (the dataset's split "val")
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One of ReFusion's fusion tasks: the config that trains its shipped model and where it is scored."""

    config: str
    model: str
    sets: dict[str, EvalSet]
    mef_ssim: bool = False


#: Official ReFusion values measured on these very pairs (first source in slot a, the official test
#: script's min-max stretch; issue 21), where there are any.
LYTRO_REFERENCE = {
    "official ReFusion multi-focus checkpoint": {"VIF": 1.176, "Qabf": 0.701, "SSIM": 1.465},
    "plain average (stretched, as the official script)": {"VIF": 1.091, "Qabf": 0.586, "SSIM": 1.502},
}
MEDICAL_REFERENCE = {
    "official ReFusion medical checkpoint": {"VIF": 0.485, "Qabf": 0.653, "SSIM": 0.530},
}
HARVARD = DATA / "medical" / "harvard"
TASKS = {
    "mfif": Task(
        "examples/refusion_mfif.toml",
        "mfif",
        {
            "Lytro (20 pairs, kept out of training)": EvalSet(
                DATA / "mfif",
                "A",
                "B",
                pattern="lytro_*",
                reference=LYTRO_REFERENCE,
                target={"VIF": 1.176, "Qabf": 0.701, "SSIM": 1.465},
            ),
            "the run's 6 validation pairs": EvalSet(DATA / "mfif", "A", "B", held_out="config"),
        },
    ),
    "mef": Task(
        "examples/refusion_mef.toml",
        "mef",
        {"the run's 14 held-out MEFB scenes": EvalSet(DATA / "mef", "under", "over", held_out="config")},
        mef_ssim=True,
    ),
    "medical": Task(
        "examples/refusion_medical.toml",
        "medical",
        {
            "CT-MRI, 16 held-out Harvard pairs": EvalSet(HARVARD / "CT-MRI", "CT", "MRI", held_out="config"),
            "PET-MRI, 24 held-out Harvard pairs": EvalSet(HARVARD / "PET-MRI", "PET", "MRI", held_out="config"),
            "SPECT-MRI, 33 held-out Harvard pairs": EvalSet(HARVARD / "SPECT-MRI", "SPECT", "MRI", held_out="config"),
            "MRI-CT, CDDFuse's 21 test pairs": EvalSet(
                DATA / "medical" / "mri_ct",
                "CT",
                "MRI",
                reference=MEDICAL_REFERENCE,
                target={"VIF": 0.485, "Qabf": 0.653, "SSIM": 0.530},
            ),
            "MRI-PET, CDDFuse's 42 test pairs": EvalSet(DATA / "medical" / "mri_pet", "PET", "MRI"),
        },
    ),
}


def metaloss_cli(*args: str, quiet: bool = True) -> None:
    """Run ``python -m metaloss ARGS`` in a child process (as a user would), failing loudly."""
    cmd = [sys.executable, "-m", "metaloss", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr if quiet else ''}")


def train(config: str, out: Path, overrides: list[str] = (), nproc: int = 1) -> float:
    """``metaloss run CONFIG --out OUT [--nproc N]``; returns the wall-clock seconds of the whole command."""
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    extra = ["--nproc", str(nproc)] if nproc > 1 else []
    metaloss_cli("run", config, "--out", str(out), "--quiet", *extra, *[a for o in overrides for a in ("--set", o)])
    return time.perf_counter() - start


def train_concurrently(jobs: dict[str, tuple[str, Path, list[str]]]) -> dict[str, float]:
    """Run several ``metaloss run`` commands at once, one CPU thread each (an ablation's variants on
    the cores of one machine, under the same conditions); wall-clock seconds of each."""
    procs, starts = {}, {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for label, (config, out, overrides) in jobs.items():
        if out.exists():
            shutil.rmtree(out)
        cmd = [
            sys.executable,
            "-m",
            "metaloss",
            "run",
            config,
            "--out",
            str(out),
            "--quiet",
            *[a for o in overrides for a in ("--set", o)],
        ]
        starts[label] = time.perf_counter()
        procs[label] = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seconds = {}
    for label, proc in procs.items():
        _, err = proc.communicate()
        seconds[label] = time.perf_counter() - starts[label]
        if proc.returncode:
            raise SystemExit(f"{label}: metaloss run failed ({proc.returncode})\n{err}")
    return seconds


def logged_seconds(run_dir: Path, max_gap: float = 300.0) -> float:
    """Training time of a run from its log: the sum of the gaps between consecutive records, gaps
    longer than ``max_gap`` (an interruption before a ``--resume``) left out."""
    times = [json.loads(line)["time"] for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return sum(b - a for a, b in itertools.pairwise(times) if b - a <= max_gap)


def train_or_reuse(config: str, out: Path, overrides: list[str], reuse: bool) -> tuple[float, str]:
    """Train (``metaloss run``), or with ``reuse`` take the finished run in ``out`` as it is; the
    training seconds and how they were measured."""
    if reuse:
        if not (out / "checkpoints" / "last.pt").exists():
            raise SystemExit(f"--reuse: no finished run in {out}")
        return logged_seconds(out), "from the run's log, first to last record, interruptions left out"
    return train(config, out, overrides), "wall clock, whole command"


def score(
    checkpoint: Path | None,
    data: Path,
    ir: str,
    vi: str,
    out: Path,
    stretch: bool | None = None,
    mef_ssim: bool = False,
) -> dict[str, float]:
    """Fuse ``data/ir`` + ``data/vi`` with ``checkpoint`` (``metaloss fuse``; the stretch as the model
    says unless ``stretch`` is given; ``None``: the plain average of the two sources' grey images) and
    score them (``metaloss eval --profile cddfuse``); the mean of each metric."""
    fused = out / "fused"
    if fused.exists():
        shutil.rmtree(fused)
    if checkpoint is None:
        write_average(data / ir, data / vi, fused)
    else:
        flag = [] if stretch is None else ["--stretch" if stretch else "--no-stretch"]
        metaloss_cli(
            "fuse",
            "--checkpoint",
            str(checkpoint),
            "--ir",
            str(data / ir),
            "--vi",
            str(data / vi),
            "--out",
            str(fused),
            "--quiet",
            *flag,
        )
    report = out / "metrics.json"
    metaloss_cli(
        "eval",
        "--ir",
        str(data / ir),
        "--vi",
        str(data / vi),
        "--fused",
        str(fused),
        "--profile",
        "cddfuse",
        "--metrics",
        *METRICS,
        "--json",
        str(report),
        "--summary",
        "--no-progress",
    )
    values = report_means(report)
    if mef_ssim:  # the multi-exposure papers' headline metric, from the mefb profile
        metaloss_cli(
            "eval",
            "--a",
            str(data / ir),
            "--b",
            str(data / vi),
            "--fused",
            str(fused),
            "--profile",
            "mefb",
            "--metrics",
            "MEF-SSIM",
            "--json",
            str(report),
            "--summary",
            "--no-progress",
        )
        (method,) = json.loads(report.read_text())["methods"].values()
        values["MEF-SSIM"] = float(method["mean"]["MEF-SSIM"])
    return values


def report_means(report: Path) -> dict[str, float]:
    """The mean of each metric in the ``metaloss eval --json`` report of one fused folder."""
    (method,) = json.loads(report.read_text())["methods"].values()
    return {m: float(v) for m, v in method["mean"].items()}


def score_both_ways(checkpoint: Path, data: Path, a: str, b: str, out: Path) -> dict[str, float]:
    """:func:`score` with the min-max stretch (keys ``VIF``, ...; fused into ``out``) and without it
    (``raw_VIF``, ...; into ``out`` + ``_raw``), so that a model is read both ways whatever its own setting."""
    values = score(checkpoint, data, a, b, out, stretch=True)
    raw = score(checkpoint, data, a, b, out.with_name(out.name + "_raw"), stretch=False)
    return {**values, **{f"raw_{m}": v for m, v in raw.items()}}


def subset(eval_set: EvalSet, config: str, out: Path) -> Path:
    """A folder ``out`` with links ``a/`` and ``b/`` to the pairs of ``eval_set`` (its pattern, or the
    held-out split of ``config``'s dataset), so that fuse and eval see those pairs only."""
    import fnmatch

    from metaloss.data.pairs import pair_images

    pairs = pair_images(eval_set.data / eval_set.a, eval_set.data / eval_set.b).pairs
    if eval_set.held_out:
        from metaloss.config import load_config
        from metaloss.experiment import build_dataset

        cwd = os.getcwd()
        try:  # data.root is relative to the repository root
            os.chdir(ROOT)
            dataset = build_dataset(load_config(ROOT / config).data, "val")
        finally:
            os.chdir(cwd)
        files = {Path(ROOT / p.a).resolve() for p in dataset.pairs}
        pairs = [p for p in pairs if p[1].resolve() in files]
    else:
        pairs = [p for p in pairs if fnmatch.fnmatchcase(p[0], eval_set.pattern)]
    if not pairs:
        raise SystemExit(f"no pairs for {eval_set}")
    if out.exists():
        shutil.rmtree(out)
    for folder in ("a", "b"):
        (out / folder).mkdir(parents=True)
    for _, a, b in pairs:
        (out / "a" / a.name).symlink_to(a.resolve())
        (out / "b" / b.name).symlink_to(b.resolve())
    return out


def run_task(name: str, reuse: bool, overrides: list[str], ship_model: bool, doc: bool) -> dict[str, object]:
    """Train (or reuse) a task's run, score it on each of its evaluation sets beside the plain average,
    ship it as ``metaloss/pretrained/<model>.pt`` and write its section of docs/pretrained.md."""
    task = TASKS[name]
    out = ROOT / "runs" / f"refusion-{name}"
    seconds, how = train_or_reuse(task.config, out, overrides, reuse)
    ckpt = out / "checkpoints" / "last.pt"
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, eval_set in task.sets.items():
        tag = "".join(c if c.isalnum() else "_" for c in label)[:40]
        data = subset(eval_set, task.config, out / "eval" / tag / "sources")
        rows = {
            f"metaloss {name} model (this run)": score(
                ckpt, data, "a", "b", out / "eval" / tag, mef_ssim=task.mef_ssim
            ),
            "plain average (measured here)": score(
                None, data, "a", "b", out / "eval" / tag / "avg", mef_ssim=task.mef_ssim
            ),
        }
        rows.update(eval_set.reference)
        results[label] = rows
        print(label, json.dumps(rows, indent=1), file=sys.stderr)
    if ship_model:
        print("shipped", ship(ckpt, f"{task.model}.pt"), file=sys.stderr)
    if doc:
        metrics = METRICS + (["MEF-SSIM"] if task.mef_ssim else [])
        parts = []
        for label, rows in results.items():
            text = f"{label}, `cddfuse` profile{' (MEF-SSIM: `mefb` profile)' if task.mef_ssim else ''}:\n\n"
            text += table(rows, metrics)
            target = task.sets[label].target
            if target:
                values = rows[f"metaloss {name} model (this run)"]
                text += "\n\nTargets (at least the official checkpoint; SSIM no lower): " + ", ".join(
                    f"{m} >= {t} ({'met' if values[m] >= t else 'NOT met'}: {values[m]:.3f})" for m, t in target.items()
                )
            parts.append(text)
        body = (
            f"_Measured by `python -m benchmarks.refusion task {name}` on {machine()}._\n\n"
            f"Training: `metaloss run {task.config}` took **{seconds / 60:.1f} min** ({how}).\n\n" + "\n\n".join(parts)
        )
        write_section(ROOT / "docs" / "pretrained.md", name.upper(), body)
    return {"seconds": seconds, "results": results}


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_average(ir: Path, vi: Path, out: Path) -> None:
    """The baseline every fusion table needs: round((I_a + I_b) / 2) of the grey images, per pair."""
    import cv2
    import numpy as np

    from metaloss.data.folders import match_pairs

    out.mkdir(parents=True, exist_ok=True)
    for name, a, b in match_pairs(ir, vi):
        grey = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32) for p in (a, b)]
        cv2.imwrite(str(out / (name + ".png")), np.round((grey[0] + grey[1]) / 2).astype(np.uint8))


#: Infrared-visible pairs in ../shared/data that no shipped model trains on: the check beside tno25.
HELD_OUT = {"vifb": ("vifb", "ir", "vi"), "msrs8": ("msrs8", "ir", "vi"), "llvip test": ("llvip/test", "ir", "vi")}


def held_out(checkpoint: Path, out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{set: {row: metrics}}`` on the HELD_OUT sets: the model with and without the stretch, and the
    plain average."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, (folder, ir, vi) in HELD_OUT.items():
        tag = folder.replace("/", "_")
        result[name] = {
            "model, stretch on": score(checkpoint, DATA / folder, ir, vi, out / f"{tag}_stretch", stretch=True),
            "model, stretch off": score(checkpoint, DATA / folder, ir, vi, out / f"{tag}_raw", stretch=False),
            "plain average": score(None, DATA / folder, ir, vi, out / f"{tag}_average"),
        }
    return result


def ship(checkpoint: Path, name: str) -> Path:
    """Copy the fusion network and loss generator of a run checkpoint (no optimizer states) into
    ``metaloss/pretrained/NAME`` in the format ``metaloss fuse`` loads."""
    from metaloss.checkpoint import build_plugin, read_checkpoint, write_model_checkpoint
    from metaloss.config import upgrade_keys

    state = read_checkpoint(checkpoint)
    cfg, trainer = upgrade_keys(state["config"])[0], state["trainer"]
    fusion = build_plugin("fusion", cfg["learner"])
    fusion.load_state_dict(trainer["learner"])
    generator = build_plugin("loss_generators", cfg["loss_generator"])
    generator.load_state_dict(trainer["generator"])
    target = ROOT / "metaloss" / "pretrained" / name
    write_model_checkpoint(
        target,
        fusion,
        cfg["learner"],
        generator,
        cfg["loss_generator"],
        stretch=bool(cfg.get("eval", {}).get("stretch", True)),
    )
    read_checkpoint(target)  # readable as data
    return target


def table(rows: dict[str, dict[str, float]], metrics: list[str] = METRICS) -> str:
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for label, values in rows.items():
        cells = [f"{values[m]:.3f}" if m in values else "" for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(doc: Path, key: str, body: str) -> None:
    """Replace the text between ``<!-- KEY:BEGIN -->`` and ``<!-- KEY:END -->`` in ``doc``."""
    begin, end = f"<!-- {key}:BEGIN -->", f"<!-- {key}:END -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body.rstrip()}\n{end}{tail}", encoding="utf-8")


def machine() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, load average {load:.1f} at the end"
    )


def figure(checkpoint: Path, data: Path, ir: str, vi: str, names: list[str], out: Path) -> None:
    """A figure of a few pairs: infrared, visible, fused (and the learned intensity weight of infrared)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaloss.data.images import load_pair
    from metaloss.deploy import fuse_images, load_model

    model = load_model(checkpoint, generator=True)
    fig, axes = plt.subplots(len(names), 4, figsize=(12, 3.1 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        pair = load_pair(next((data / ir).glob(name + ".*")), next((data / vi).glob(name + ".*")))
        result = fuse_images(model, pair, weights=True)
        panels = [
            (pair.ir.y[0].numpy(), "infrared", "gray"),
            (pair.vi.y[0].numpy(), "visible (Y)", "gray"),
            (result.image, "fused", "gray"),
            (result.maps["w_a"].numpy(), "learned W (infrared)", "inferno"),
        ]
        for ax, (img, title, cmap) in zip(axes[row], panels, strict=True):
            ax.imshow(
                img, cmap=cmap, vmin=0 if img.dtype != "uint8" else None, vmax=1 if img.dtype != "uint8" else None
            )
            ax.set_title(f"{name}: {title}" if title == "infrared" else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pretrained", "task"):
        p = sub.add_parser(name)
        if name == "task":
            p.add_argument("task", choices=sorted(TASKS), help="which ReFusion task model to train and score")
        p.add_argument("--set", dest="overrides", action="append", default=[])
        p.add_argument("--no-ship", action="store_true", help="do not copy the model into metaloss/pretrained/")
        p.add_argument("--no-doc", action="store_true")
        p.add_argument("--reuse", action="store_true", help="do not train: use the finished (or resumed) run in runs/")
        if name == "pretrained":
            p.add_argument("--heldout", type=Path, help="heldout.json that `heldout` wrote for this run's checkpoint")
    p = sub.add_parser("ablation")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--no-doc", action="store_true")
    p = sub.add_parser("heldout", help="a checkpoint on the held-out infrared-visible sets, stretch on and off")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "refusion-heldout")
    p = sub.add_parser("score")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=DATA / "tno25")
    p.add_argument("--ir", default="ir")
    p.add_argument("--vi", default="vi")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "refusion-score")
    args = parser.parse_args(argv)
    runs = ROOT / "runs"

    if args.command == "heldout":
        result = held_out(args.checkpoint, args.out)
        for name, rows in result.items():
            print(f"{name}:\n{table(rows)}\n")
        saved = {"checkpoint_sha256": sha256(args.checkpoint), "results": result}
        (args.out / "heldout.json").write_text(json.dumps(saved, indent=2))
        return 0

    if args.command == "score":
        print(json.dumps(score(args.checkpoint, args.data, args.ir, args.vi, args.out), indent=2))
        return 0

    if args.command == "pretrained":
        out = runs / "refusion-pretrained"
        seconds, how = train_or_reuse("examples/refusion_roadscene.toml", out, args.overrides, args.reuse)
        ckpt = out / "checkpoints" / "last.pt"
        values = score(ckpt, DATA / "tno25", "ir", "vi", out / "tno25")
        met = {m: values[m] >= t for m, t in TNO_TARGET.items()}
        print(json.dumps({"seconds": seconds, "tno25": values, "targets_met": met}, indent=2))
        if not args.no_ship:
            print("shipped", ship(ckpt, "default.pt"))
        figure(ckpt, DATA / "tno25", "ir", "vi", ["01", "10", "17"], ROOT / "docs" / "figures" / "pretrained_tno25.png")
        if not args.no_doc:
            rows = {"metaloss default model (this run)": values}
            fixed = runs / "refusion-pretrained-fixed"  # the same run with fixed w = 0.5 (no meta phase), if made
            if (fixed / "checkpoints" / "last.pt").exists():
                rows["the same budget, fixed w = 0.5 (no meta phase)"] = score(
                    fixed / "checkpoints" / "last.pt", DATA / "tno25", "ir", "vi", fixed / "tno25"
                )
            rows.update(TNO_REFERENCE)
            body = (
                f"_Measured by `python -m benchmarks.refusion pretrained` on {machine()}._\n\n"
                f"Training: `metaloss run examples/refusion_roadscene.toml` took **{seconds / 60:.1f} min** "
                f"({how}).\n\n"
                "tno25, `cddfuse` profile (`metaloss fuse` with each model's own stretch setting, then `metaloss "
                "eval`):\n\n"
                f"{table(rows)}\n\n"
                "Targets (at least the official ReFusion model): "
                + ", ".join(
                    f"{m} >= {t} ({'met' if met[m] else 'NOT met'}: {values[m]:.3f})" for m, t in TNO_TARGET.items()
                )
            )
            write_section(ROOT / "docs" / "pretrained.md", "TNO", body)
            if args.heldout is not None:  # scores that `heldout` saved for this very checkpoint
                saved = json.loads(args.heldout.read_text())
                if saved.get("checkpoint_sha256") != sha256(ckpt):
                    raise SystemExit(f"{args.heldout}: its scores are of another checkpoint than {ckpt}")
                checked = saved["results"]
            else:
                checked = held_out(ckpt, out / "heldout")
            body = (
                f"_Measured by `python -m benchmarks.refusion pretrained` on {machine()}._ The same model on the "
                "infrared-visible pairs of `../shared/data` that no shipped model trains on, `cddfuse` profile:\n\n"
                + "\n\n".join(
                    f"{name} ({len(list((DATA / HELD_OUT[name][0] / 'ir').iterdir()))} pairs):\n\n{table(rows)}"
                    for name, rows in checked.items()
                )
            )
            write_section(ROOT / "docs" / "pretrained.md", "HELDOUT", body)
        return 0

    if args.command == "task":
        run_task(args.task, args.reuse, args.overrides, not args.no_ship, not args.no_doc)
        return 0

    # ablation: the learned loss against fixed W = V = 0.5, same config and budget otherwise
    rows: dict[str, dict[str, float]] = {}
    variants = {
        "learned (ReFusion loss proposal, meta-trained)": [],
        "fixed W = V = 0.5 (no meta phase)": [
            'loss_generator={name="fixed", ir_weight=0.5, ir_gradient_weight=0.5}',
            "meta.meta_steps=0",
        ],
    }
    outs = {
        label: runs / ("refusion-ablation-" + ("learned" if not extra else "fixed"))
        for label, extra in variants.items()
    }
    times = train_concurrently(
        {
            label: ("examples/refusion_ablation.toml", outs[label], [*args.overrides, *extra])
            for label, extra in variants.items()
        }
    )
    for label, out in outs.items():
        rows[label] = score(out / "checkpoints" / "last.pt", DATA / "tno25", "ir", "vi", out / "tno25")
        print(label, json.dumps(rows[label]), f"{times[label]:.0f} s", file=sys.stderr)
    if not args.no_doc:
        body = (
            f"_Measured by `python -m benchmarks.refusion ablation` on {machine()}._\n\n"
            "Both runs: `examples/refusion_ablation.toml` (same data, networks, learner steps, crops, seed), run "
            "at the same time with one CPU thread each; the fixed one replaces the loss proposal module by constant "
            "weights and skips the meta phase.\n\n"
            f"tno25, `cddfuse` profile:\n\n{table(rows)}\n\n"
            + "\n".join(f"- {label}: {times[label] / 60:.1f} min of training" for label in rows)
        )
        write_section(ROOT / "docs" / "refusion.md", "ABLATION", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
