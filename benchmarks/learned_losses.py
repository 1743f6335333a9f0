"""Learned fusion losses against the hand-made ones practitioners use, on real images.

Every variant trains the same fusion network (``examples/refusion_roadscene.toml``: RoadScene's
training pairs, 128x128 crops, the reconstruction task) for the same learner budget and seeds; only
the loss differs.  Each run is scored on tno25 (``cddfuse`` profile) through ``metaloss fuse`` and
``metaloss eval``, as a user would:

    python -m benchmarks.learned_losses                       # every variant, seeds 0 1 2, 3 epochs
    python -m benchmarks.learned_losses --variants fixed_half learned_prior --seeds 0 --epochs 2
    python -m benchmarks.learned_losses --render              # the doc section from the saved results

Runs go two at a time (one CPU thread each) to ``runs/learned-losses/<variant>-s<seed>/``; results are
saved after each run to ``runs/learned-losses/results.json`` (a rerun skips finished runs), and written
to docs/refusion.md between the LOSSES markers with a figure of fused images and weight maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.refusion import DATA, METRICS, ROOT, machine, score, train_concurrently, write_section

CONFIG = "examples/refusion_roadscene.toml"
OUT = ROOT / "runs" / "learned-losses"
FIGURE = ROOT / "docs" / "figures" / "learned_losses_tno25.png"
#: what separates the variants: the loss (generator and intensity norm); everything else is the config's
VARIANTS: dict[str, dict[str, object]] = {
    "fixed_half": {  # (a) today's baseline: w = 0.5, max-rule gradient term
        "loss_generator": '{name = "fixed", ir_weight = 0.5}', "loss.intensity_norm": '"l2"', "meta.meta_steps": "0",
    },
    "max_l1": {  # (b) SeAFusion / PIAFusion: |I_f - max(I_a, I_b)| + max-rule gradient term
        "loss_generator": '{name = "fixed", intensity_rule = "max"}', "loss.intensity_norm": '"l1"', "meta.meta_steps": "0",
    },
    "max_l2": {  # (c) the same target, squared
        "loss_generator": '{name = "fixed", intensity_rule = "max"}', "loss.intensity_norm": '"l2"', "meta.meta_steps": "0",
    },
    "learned": {  # today's learned loss: W from 0.5, max-rule gradient term
        "loss_generator": '{name = "refusion", gradient_weights = false}', "loss.intensity_norm": '"l2"',
    },
    "learned_prior": {  # a learned correction around a soft max rule (W_a = sigmoid(20 (I_a - I_b)) at first)
        "loss_generator": '{name = "refusion", gradient_weights = false, prior_sharpness = 20.0}',
        "loss.intensity_norm": '"l2"',
    },
    "soft_max": {  # the same generator never meta-trained: the soft max rule alone (what the learning adds)
        "loss_generator": '{name = "refusion", gradient_weights = false, prior_sharpness = 20.0}',
        "loss.intensity_norm": '"l2"', "meta.meta_steps": "0",
    },
}
HEADLINE = ("VIF", "Qabf", "SSIM")


def overrides(variant: str, seed: int, epochs: int) -> list[str]:
    """The ``--set`` options of one run: the variant's loss, the seed and the shared budget."""
    common = {"seed": str(seed), "meta.epochs": str(epochs), "optim.lr_step": str(max(1, epochs - 1)),
              "eval.every": "0", "checkpoint.every": "0"}
    return [f"{key}={value}" for key, value in {**common, **VARIANTS[variant]}.items()]


def summarise(results: dict[str, dict[str, float]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{variant: {metric: (mean, sample standard deviation, runs)}}`` over the seeds of each variant
    (results keyed ``"<variant>-s<seed>"``)."""
    by_variant: dict[str, list[dict[str, float]]] = {}
    for key, values in results.items():
        by_variant.setdefault(key.rsplit("-s", 1)[0], []).append(values)
    out = {}
    for variant, runs in by_variant.items():
        out[variant] = {
            m: (statistics.fmean(r[m] for r in runs), statistics.stdev(r[m] for r in runs) if len(runs) > 1 else 0.0, len(runs))
            for m in METRICS
        }
    return out


def render(results: dict[str, dict[str, float]], meta: dict[str, object]) -> str:
    stats = summarise(results)
    head = "| loss | runs | " + " | ".join(METRICS) + " |\n|---|---:|" + "---:|" * len(METRICS)
    rows = [
        f"| {variant} | {next(iter(s.values()))[2]} | "
        + " | ".join(f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if s[m][2] > 1 else f"{s[m][0]:.3f}" for m in METRICS) + " |"
        for variant, s in stats.items()
    ]
    return (f"_Measured by `python -m benchmarks.learned_losses {meta.get('args', '')}` on {meta.get('machine', '?')}._ "
            f"Budget of every run: {meta.get('epochs')} epochs of one pass over RoadScene's training pairs "
            "(the learned variants also take 10 meta-steps per epoch after a one-epoch warm-up). "
            "tno25, `cddfuse` profile, mean ± sample standard deviation over the seeds:\n\n"
            + head + "\n" + "\n".join(rows) + "\n")


def figure(runs: dict[str, Path], names: list[str], out: Path) -> None:
    """For a few tno25 pairs: the sources, each variant's fused image, and the infrared intensity weight
    W_a of each learned variant on one colour scale whose range is set by those maps (with a colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaloss.data.images import load_pair
    from metaloss.inference import fuse_images, load_model

    data = DATA / "tno25"
    models = {v: load_model(d / "checkpoints" / "last.pt", generator=True) for v, d in runs.items()}
    learned = [v for v in runs if v.startswith("learned")]
    rows = []
    for name in names:
        pair = load_pair(next((data / "ir").glob(name + ".*")), next((data / "vi").glob(name + ".*")))
        fused = {v: fuse_images(m, pair, weights=True) for v, m in models.items()}
        rows.append((name, pair, fused))
    maps = [r.maps["w_ir"].numpy() for _, _, fused in rows for v, r in fused.items() if v in learned]
    lo, hi = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)) if maps else (0.0, 1.0)
    cols = 2 + len(runs) + len(learned)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols, 2.2 * len(rows)), squeeze=False)
    shown = None
    for r, (name, pair, fused) in enumerate(rows):
        panels = [(pair.ir.y[0].numpy(), f"{name}: infrared"), (pair.vi.y[0].numpy(), "visible (Y)")]
        panels += [(fused[v].image, f"fused: {v}") for v in runs]
        for c, (img, title) in enumerate(panels):
            axes[r][c].imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype.kind == "u" else 1)
            axes[r][c].set_title(title, fontsize=8)
        for c, v in enumerate(learned, start=len(panels)):
            shown = axes[r][c].imshow(fused[v].maps["w_ir"].numpy(), cmap="viridis", vmin=lo, vmax=hi)
            axes[r][c].set_title(f"W infrared: {v}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, -len(learned):].ravel().tolist(), shrink=0.8, label=f"W infrared ({lo:.2f} to {hi:.2f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--render", action="store_true", help="only write the doc section from the saved results")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "results.json"
    state = json.loads(saved.read_text()) if saved.is_file() else {"results": {}, "seconds": {}}
    if not args.render:
        todo = [(v, s) for s in args.seeds for v in args.variants if f"{v}-s{s}" not in state["results"]]
        for i in range(0, len(todo), args.parallel):
            batch = todo[i : i + args.parallel]
            jobs = {f"{v}-s{s}": (CONFIG, OUT / f"{v}-s{s}", overrides(v, s, args.epochs)) for v, s in batch}
            seconds = train_concurrently(jobs)
            for key, (_, out, _) in jobs.items():
                state["results"][key] = score(out / "checkpoints" / "last.pt", DATA / "tno25", "ir", "vi", out / "tno25")
                state["seconds"][key] = seconds[key]
                saved.write_text(json.dumps(state, indent=2))
                print(key, f"{seconds[key] / 60:.1f} min", {m: round(state["results"][key][m], 3) for m in HEADLINE}, flush=True)
        state["meta"] = {"epochs": args.epochs, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                         "args": " ".join(sys.argv[1:] if argv is None else argv)}
        saved.write_text(json.dumps(state, indent=2))
    seed = min(int(k.rsplit("-s", 1)[1]) for k in state["results"])
    runs = {v: OUT / f"{v}-s{seed}" for v in VARIANTS if f"{v}-s{seed}" in state["results"]}
    figure(runs, ["01", "10", "17"], FIGURE)
    body = render(state["results"], state.get("meta", {}))
    body += f"\n![fused images and weight maps, seed {seed}](figures/{FIGURE.name})\n"
    write_section(ROOT / "docs" / "refusion.md", "LOSSES", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
