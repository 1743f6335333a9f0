"""Does the learned loss follow the task?  TDFusion on synthetic scenes, learned vs fixed weights.

On the synthetic scenes the objects are visible mainly in the infrared image.  For each task
(segmentation, detection) and seed, two runs with the same budget of learner steps:

- learned: the TDFusion loss generator, meta-trained;
- fixed:   w_a = w_b = 0.5 everywhere (``loss_generator = "fixed"``, no meta phase).

Reported on held-out scenes (split "test"): the learned infrared weight w_a averaged over object
pixels and over background pixels, and the task metric (mIoU / mAP50) of both variants.  Writes the
numbers and a figure of weight maps into docs/tdfusion.md (between the EVIDENCE markers).

    python -m benchmarks.tdfusion_evidence                 # full: 3 seeds x 2 tasks x 2 variants
    python -m benchmarks.tdfusion_evidence --quick         # a smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from metaloss.checkpoint import read_checkpoint
from metaloss.config import load_config
from metaloss.data.collate import collate_pairs
from metaloss.experiment import build_dataset, build_experiment, evaluate, run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tdfusion.md"
TASK_METRIC = {"segmentation": "task/mIoU", "detection": "task/mAP50"}


def config(
    task: str,
    seed: int,
    learned: bool,
    size: int,
    epochs: int,
    meta_steps: int,
    images: int,
    warmup: int = 1,
    outer_lr: float = 1e-3,
) -> dict:
    return {
        "name": f"evidence-{task}-{'learned' if learned else 'fixed'}-{seed}",
        "seed": seed,
        "device": "cpu",
        "data": {
            "name": "synthetic",
            "num_images": images,
            "height": size,
            "width": size,
            "crop_size": size,
            "task_size": [size, size],
            "seed": seed,
            "complementary": True,
        },
        "val_data": {
            "name": "synthetic",
            "num_images": 16,
            "height": size,
            "width": size,
            "seed": seed,
            "complementary": True,
        },
        "learner": {"name": "restormer"},
        "loss_generator": {"name": "tdfusion"} if learned else {"name": "fixed", "ir_weight": 0.5},
        "objective": {"name": task},
        "meta": {
            "epochs": epochs,
            "meta_steps": meta_steps if learned else 0,
            "outer_lr": outer_lr,
            "warmup_epochs": warmup if learned else 0,
        },
        "optim": {"learner_lr": 1e-3, "objective_lr": 1e-3, "lr_step": 1000},
        "eval": {"num_images": 16, "metrics": []},
        "checkpoint": {"every": 0},
    }


@torch.no_grad()
def held_out(run_dir: Path, cfg_dict: dict, scenes: int) -> tuple[dict, dict]:
    """Task metric and weight statistics of a finished run on held-out scenes (split "test")."""
    cfg = load_config(cfg_dict)
    exp = build_experiment(cfg)
    state = read_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]
    exp.problem.learner.load_state_dict(state["learner"])
    exp.problem.loss_generator.load_state_dict(state["generator"])
    exp.problem.objective.load_state_dict(state["objective"])
    exp.val_set = build_dataset(cfg.val_data, "test")
    exp.config.eval.num_images = scenes
    metrics = evaluate(exp)
    obj, bg, marks, swapped_obj, swapped_bg = [], [], [], [], []
    generator = exp.problem.loss_generator.eval()
    for i in range(min(scenes, len(exp.val_set))):
        batch = collate_pairs([exp.val_set[i]])
        w = generator(batch["ir"], batch["vi"])["intensity"][0, 0]  # w_ir, sources in their own slots
        w_swapped = generator(batch["vi"], batch["ir"])["intensity"][0, 1]  # w_ir, slots swapped
        objects = (batch["mask"][0] == 1) | (batch["mask"][0] == 2)  # the warm objects (person, vehicle)
        if objects.any():
            obj.append(float(w[objects].mean()))
            bg.append(float(w[~objects].mean()))
            swapped_obj.append(float(w_swapped[objects].mean()))
            swapped_bg.append(float(w_swapped[~objects].mean()))
        markings = batch["mask"][0] == 3
        if markings.any():
            marks.append(float(w[markings].mean()))
    mean = lambda xs: statistics.mean(xs) if xs else float("nan")
    return metrics, {
        "w_ir_objects": mean(obj),
        "w_ir_background": mean(bg),
        "w_ir_markings": mean(marks),
        "w_ir_objects_swapped": mean(swapped_obj),
        "w_ir_background_swapped": mean(swapped_bg),
    }


def figure(run_dir: Path, cfg_dict: dict, out: Path, n: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = load_config(cfg_dict)
    exp = build_experiment(cfg)
    state = read_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]
    exp.problem.loss_generator.load_state_dict(state["generator"])
    exp.problem.learner.load_state_dict(state["learner"])
    test = build_dataset(cfg.val_data, "test")
    fig, axes = plt.subplots(n, 5, figsize=(12, 2.6 * n), squeeze=False)
    for row in range(n):
        s = collate_pairs([test[row]])
        with torch.no_grad():
            w = exp.problem.loss_generator.eval()(s["ir"], s["vi"])["intensity"][0, 0]
            fused = exp.problem.fuse(s["ir"], s["vi"])[0, 0]
        panels = [
            (s["ir"][0, 0], "infrared", "gray"),
            (s["vi"][0, 0], "visible", "gray"),
            (s["mask"][0].float() / 3, "labels: objects, markings", "viridis"),
            (w, "learned w_ir", "inferno"),
            (fused, "fused", "gray"),
        ]
        for ax, (img, title, cmap) in zip(axes[row], panels, strict=True):
            ax.imshow(img.float().numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "detection"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--meta-steps", type=int, default=24)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="epochs of learner steps before the first meta-step")
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--scenes", type=int, default=32, help="held-out scenes to score")
    parser.add_argument("--out", default="runs/evidence")
    parser.add_argument("--quick", action="store_true", help="tiny budget, to check the script")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/tdfusion.md")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="no training: summarise the results.json files of earlier runs (e.g. one process per task, "
        "run concurrently with --no-doc) with this run's budget arguments",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.meta_steps, args.images, args.scenes, args.warmup = [0], 2, 2, 4, 4, 1
    if args.combine:
        results = [r for f in args.combine for r in json.loads(f.read_text())]
        args.tasks = [t for t in TASK_METRIC if any(r["task"] == t for r in results)]
        args.seeds = sorted({r["seed"] for r in results})
    else:
        results = train_and_score(args)
    table = summarise(results, args)
    print(table)
    if not args.no_doc:
        write_doc(table)
    return 0


def train_and_score(args: argparse.Namespace) -> list[dict]:
    """Both variants for every task and seed; a row per run (also saved after each run)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for task in args.tasks:
        for seed in args.seeds:
            for learned in (True, False):
                cfg = config(
                    task,
                    seed,
                    learned,
                    args.size,
                    args.epochs,
                    args.meta_steps,
                    args.images,
                    args.warmup,
                    args.outer_lr,
                )
                run_dir = out / cfg["name"]
                start = time.perf_counter()
                run(load_config(cfg), run_dir, quiet=True)
                metrics, weights = held_out(run_dir, cfg, args.scenes)
                row = {
                    "task": task,
                    "seed": seed,
                    "variant": "learned" if learned else "fixed",
                    "metric": metrics[TASK_METRIC[task]],
                    "seconds": time.perf_counter() - start,
                    **weights,
                }
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
                (out / "results.json").write_text(json.dumps(results, indent=2))  # after every run
                if learned and seed == args.seeds[0]:
                    figure(run_dir, cfg, ROOT / "docs" / "figures" / f"tdfusion_weights_{task}.png")
    return results


def summarise(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Budget per run: {args.epochs} epochs x ({args.meta_steps} meta-steps for the learned loss + one pass over "
        f"{args.images} scenes of {args.size}x{args.size}), warm-up {args.warmup} epoch(s), "
        f"outer lr {args.outer_lr:g}; held-out: {args.scenes} scenes of the test split; "
        f"seeds {args.seeds}.",
        "",
        "| task | metric | learned (mean) | fixed 0.5 (mean) | learned w_ir on objects | on background | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        rows = [r for r in results if r["task"] == task]
        learned = [r for r in rows if r["variant"] == "learned"]
        fixed = [r for r in rows if r["variant"] == "fixed"]
        m = lambda rs, k: statistics.mean(r[k] for r in rs)
        lines.append(
            f"| {task} | {TASK_METRIC[task].split('/')[1]} | {m(learned, 'metric'):.3f} | {m(fixed, 'metric'):.3f} | "
            f"{m(learned, 'w_ir_objects'):.3f} | {m(learned, 'w_ir_background'):.3f} | "
            f"{m(learned, 'w_ir_objects') - m(learned, 'w_ir_background'):+.3f} |"
        )
    lines += [
        "",
        "Per run (w_ir: the learned infrared weight; swapped: the same with the infrared image in the visible "
        "image's input slot; the fixed loss has 0.5 everywhere):",
        "",
        "| task | seed | variant | metric | w_ir objects | background | markings | objects, swapped "
        "| background, swapped | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        w = lambda k, r=r: "" if r["variant"] == "fixed" else f"{r[k]:.3f}"
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['variant']} | {r['metric']:.3f} | {w('w_ir_objects')} | "
            f"{w('w_ir_background')} | {w('w_ir_markings')} | {w('w_ir_objects_swapped')} | "
            f"{w('w_ir_background_swapped')} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_doc(table: str) -> None:
    begin, end = "<!-- EVIDENCE:BEGIN -->", "<!-- EVIDENCE:END -->"
    text = DOC.read_text() if DOC.exists() else f"# TDFusion\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    stamp = time.strftime("%Y-%m-%d")
    DOC.write_text(
        f"{head}{begin}\n_Measured {stamp} by `python -m benchmarks.tdfusion_evidence`._\n\n{table}\n{end}{tail}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
