"""Learned fusion losses against the hand-made ones practitioners use, on real images.

Every variant trains the same fusion network (``examples/refusion_roadscene.toml``: RoadScene's
training pairs, 64x64 crops, the reconstruction task) for the same learner budget and seeds; only
the loss differs.  Each run is scored on tno25 (``cddfuse`` profile) through ``metaloss fuse`` and
``metaloss eval``, as a user would, with and without the min-max stretch:

    python -m benchmarks.learned_losses                       # every variant, seeds 0 1 2
    python -m benchmarks.learned_losses --variants fixed_half learned_prior --seeds 0
    python -m benchmarks.learned_losses --render              # the doc section from the saved results
    python -m benchmarks.learned_losses --rescore             # add the scores without the stretch to saved runs

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.refusion import (
    DATA,
    HELD_OUT,
    METRICS,
    ROOT,
    machine,
    report_means,
    score,
    score_both_ways,
    train_concurrently,
    write_section,
)

CONFIG = "examples/refusion_roadscene.toml"
OUT = ROOT / "runs" / "learned-losses"
FIGURE = ROOT / "docs" / "figures" / "learned_losses_tno25.png"
#: the fourth recipe's best learned loss: W learned on Qabf + SSIM of the loss's own optimum T
LEARNED_QUALITY: dict[str, object] = {
    "loss.ssim_weight": "0.0",
    "objective": '{name = "quality", ssim_form = "gaussian", vif_weight = 0.0}',
    "meta.horizon": '"optimum"',
    "meta.warmup_epochs": "0",
    "meta.meta_steps": "300",
}
#: the fifth recipe's learned loss: max_quality's loss with W learned at the output horizon, where the
#: objective is read at the network's output now (one step of the loss on that output)
LEARNED_OUTPUT: dict[str, object] = {
    "loss.ssim_weight": "0.0",
    "objective": '{name = "quality", ssim_form = "gaussian"}',
    "loss.objective_weight": "0.1",
    "meta.horizon": '"output"',
    "meta.warmup_epochs": "0",
    "meta.meta_steps": "300",
}
#: what separates the variants: the loss (generator and intensity norm); everything else is the config's
VARIANTS: dict[str, dict[str, object]] = {
    "fixed_half": {  # (a) the old baseline: w = 0.5, max-rule gradient term
        "loss_generator": '{name = "fixed", ir_weight = 0.5}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"max"',
        "loss.ssim_weight": "0.0",
        "meta.meta_steps": "0",
    },
    "max_l1": {  # (b) SeAFusion / PIAFusion: |I_f - max(I_a, I_b)| + max-rule gradient term, their 10x weighting
        "loss_generator": '{name = "fixed", intensity_rule = "max"}',
        "loss.intensity_norm": '"l1"',
        "loss.gradient_target": '"max"',
        "loss.alpha": "10.0",
        "loss.ssim_weight": "0.0",
        "meta.meta_steps": "0",
    },
    "max_target": {  # (c) (I_f - max(I_a, I_b))^2 + |grad I_f - grad max(I_a, I_b)|: both terms ask for one image
        "loss_generator": '{name = "fixed", intensity_rule = "max"}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"intensity"',
        "loss.ssim_weight": "0.0",
        "meta.meta_steps": "0",
    },
    "swinfusion": {  # (c) SwinFusion's loss: 20 |I_f - max| + 20 max-rule gradient + 10 (1 - mean SSIM), over 20
        "loss_generator": '{name = "fixed", intensity_rule = "max"}',
        "loss.intensity_norm": '"l1"',
        "loss.gradient_target": '"max"',
        "loss.alpha": "1.0",
        "loss.ssim_weight": "0.5",
        "meta.meta_steps": "0",
    },
    "learned": {  # the loss proposal module from 0.5 (no prior), meta-trained
        "loss_generator": '{name = "refusion", gradient_weights = false, symmetric = true}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"intensity"',
        "loss.ssim_weight": "0.0",
    },
    "learned_prior": {  # the first learned design: a meta-learned correction around a near-max rule
        "loss_generator": '{name = "refusion", gradient_weights = false, symmetric = true, prior_sharpness = 50.0}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"intensity"',
        "loss.ssim_weight": "0.0",
    },
    "prior_only": {  # the same generator never meta-trained: the soft max rule alone (what the learning adds)
        "loss_generator": '{name = "refusion", gradient_weights = false, symmetric = true, prior_sharpness = 50.0}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"intensity"',
        "loss.ssim_weight": "0.0",
        "meta.meta_steps": "0",
    },
    "max_quality": {  # (c) max_target + 0.1 x the quality objective's loss taken directly (no meta-learning)
        "loss_generator": '{name = "fixed", intensity_rule = "max"}',
        "loss.intensity_norm": '"l2"',
        "loss.gradient_target": '"intensity"',
        "loss.ssim_weight": "0.0",
        "objective": '{name = "quality", ssim_form = "gaussian"}',
        "loss.objective_weight": "0.1",
        "meta.meta_steps": "0",
    },
    "learned_quality": LEARNED_QUALITY,
    # learned_quality + 0.1 x its objective (Qabf + SSIM) taken directly, as max_quality
    "learned_quality_direct": {**LEARNED_QUALITY, "loss.objective_weight": "0.1"},
    "learned_output": LEARNED_OUTPUT,
    # the same loss never meta-trained: the near-max prior + 0.1 x the quality objective (what the learning adds)
    "prior_quality": {**LEARNED_OUTPUT, "meta.meta_steps": "0"},
    # learned_output with a learned rule: its sharpness and a learned share of the focus rule in the prior's scores
    "learned_output_prior": {
        **LEARNED_OUTPUT,
        "loss_generator.learn_prior": "true",
        "loss_generator.extra_priors": '["focus"]',
    },
    # learned_output around the hard max rule itself (a correction in probability space): starts at max_quality
    "learned_hard": {
        **LEARNED_OUTPUT,
        "loss_generator": '{name = "refusion", gradient_weights = false, symmetric = true, hard_prior = true}',
    },
    "learned_config": {},  # the config as it is: the default model's learned loss
    "config_no_meta": {"meta.meta_steps": "0"},  # the same loss never meta-trained: its hand-made rule alone
}
HEADLINE = ("VIF", "Qabf", "SSIM")
#: the variants the figure shows (one seed): the hand-made losses (a)-(c), the first, the default model's and
#: the best learned loss
FIGURE_VARIANTS = (
    "fixed_half",
    "max_l1",
    "max_target",
    "max_quality",
    "swinfusion",
    "learned_prior",
    "learned_config",
    "learned_output",
    "learned_output_prior",
)


def overrides(variant: str, seed: int) -> list[str]:
    """The ``--set`` options of one run: the variant's loss and the seed (the budget is the config's)."""
    common = {"seed": str(seed), "eval.every": "0", "checkpoint.every": "0"}
    return [f"{key}={value}" for key, value in {**common, **VARIANTS[variant]}.items()]


def summarise(results: dict[str, dict[str, float]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{variant: {metric: (mean, sample standard deviation, runs)}}`` over the seeds of each variant
    (results keyed ``"<variant>-s<seed>"``), for every metric key that all of its runs have."""
    by_variant: dict[str, list[dict[str, float]]] = {}
    for key, values in results.items():
        by_variant.setdefault(key.rsplit("-s", 1)[0], []).append(values)
    out = {}
    for variant, runs in by_variant.items():
        keys = [k for k in runs[0] if all(k in r for r in runs)]
        out[variant] = {
            m: (
                statistics.fmean(r[m] for r in runs),
                statistics.stdev(r[m] for r in runs) if len(runs) > 1 else 0.0,
                len(runs),
            )
            for m in keys
        }
    return out


def _table(stats: dict[str, dict[str, tuple[float, float, int]]], prefix: str) -> str:
    head = "| loss | runs | " + " | ".join(METRICS) + " |\n|---|---:|" + "---:|" * len(METRICS)

    def cell(s: dict[str, tuple[float, float, int]], m: str) -> str:
        if prefix + m not in s:
            return "—"
        mean, std, n = s[prefix + m]
        return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"

    rows = [
        f"| {variant} | {next(iter(s.values()))[2]} | " + " | ".join(cell(s, m) for m in METRICS) + " |"
        for variant, s in stats.items()
    ]
    return head + "\n" + "\n".join(rows) + "\n"


def _held_out_table(stats: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """VIF / Qabf / SSIM without the stretch on the HELD_OUT sets, for the variants scored there."""
    scored = {v: s for v, s in stats.items() if all(f"{name}:{m}" in s for name in HELD_OUT for m in HEADLINE)}
    if not scored:
        return ""
    head = "| loss | runs | " + " | ".join(f"{name} {m}" for name in HELD_OUT for m in HEADLINE) + " |\n"
    head += "|---|---:|" + "---:|" * (len(HELD_OUT) * len(HEADLINE))
    rows = []
    for variant, s in scored.items():
        cells = [s[f"{name}:{m}"] for name in HELD_OUT for m in HEADLINE]
        runs = cells[0][2]
        rows.append(
            f"| {variant} | {runs} | "
            + " | ".join(f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}" for mean, std, n in cells)
            + " |"
        )
    return (
        "\nOn the infrared-visible pairs of `../shared/data` that no run trains or chooses on (`--heldout`: "
        + ", ".join(HELD_OUT)
        + "; no stretch, `cddfuse` profile):\n\n"
        + head
        + "\n"
        + "\n".join(rows)
        + "\n"
    )


def score_once(run: Path, folder: str, ir: str, vi: str, out: Path) -> dict[str, float]:
    """The run's model without the stretch on ``DATA / folder``, scored into ``out``; read from ``out`` if it
    was scored there before (no fusing again)."""
    report = out / "metrics.json"
    if report.is_file():
        return report_means(report)
    return score(run / "checkpoints" / "last.pt", DATA / folder, ir, vi, out, stretch=False)


def held_out_scores(run: Path) -> dict[str, float]:
    """``{"vifb:VIF": …}``: the run's model without the stretch on each HELD_OUT set."""
    values: dict[str, float] = {}
    for name, (folder, ir, vi) in HELD_OUT.items():
        means = score_once(run, folder, ir, vi, run / f"heldout_{folder.replace('/', '_')}")
        values.update({f"{name}:{m}": v for m, v in means.items()})
    return values


def measured_by(meta: dict[str, object]) -> str:
    """The commands that produced the saved results, oldest first (``meta["history"]``; else the last one)."""
    history = meta.get("history")
    if isinstance(history, list) and history:
        return "; then ".join(str(h) for h in history)
    return f"`python -m benchmarks.learned_losses {meta.get('args', '')}` on {meta.get('machine', '?')}"


def render(results: dict[str, dict[str, float]], meta: dict[str, object]) -> str:
    stats = summarise(results)
    return (
        f"_Measured by {measured_by(meta)}._ "
        f"Budget of every run: `{CONFIG}` (2 epochs of 796 learner steps on 64x64 crops of RoadScene's "
        "199 training pairs; the learned variants also take 100 meta-steps after the one-epoch warm-up, or, at the "
        "optimum and output horizons, 300 per epoch and no warm-up), only the loss changed. tno25, `cddfuse` "
        "profile through `metaloss fuse` and `metaloss eval`, "
        "mean ± sample standard deviation over the seeds.\n\nWith the min-max stretch of the reference test "
        "scripts (`metaloss fuse --stretch`):\n\n"
        + _table(stats, "")
        + "\nWithout it (`--no-stretch`; the default model's setting):\n\n"
        + _table(stats, "raw_")
        + _held_out_table(stats)
    )


def figure(runs: dict[str, Path], names: list[str], out: Path) -> None:
    """For a few tno25 pairs: the sources, each variant's fused image, and the infrared intensity weight
    W_a of each learned variant on one colour scale whose range is set by those maps (with a colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaloss.data.images import load_pair
    from metaloss.deploy import fuse_images, load_model

    data = DATA / "tno25"
    models = {v: load_model(d / "checkpoints" / "last.pt", generator=True) for v, d in runs.items()}
    learned = [v for v in runs if v.startswith("learned")]
    rows = []
    for name in names:
        pair = load_pair(next((data / "ir").glob(name + ".*")), next((data / "vi").glob(name + ".*")))
        fused = {v: fuse_images(m, pair, weights=True) for v, m in models.items()}
        rows.append((name, pair, fused))
    maps = [r.maps["w_a"].numpy() for _, _, fused in rows for v, r in fused.items() if v in learned]
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
            shown = axes[r][c].imshow(fused[v].maps["w_a"].numpy(), cmap="viridis", vmin=lo, vmax=hi)
            axes[r][c].set_title(f"W ir: {v}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(
            shown, ax=axes[:, -len(learned) :].ravel().tolist(), shrink=0.8, label=f"W infrared ({lo:.2f} to {hi:.2f})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--render", action="store_true", help="only write the doc section from the saved results")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score the saved runs (of --variants) that lack the scores without the stretch",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="score the saved runs of --variants and --seeds on the held-out infrared-visible sets (no stretch)",
    )
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "results.json"
    state = json.loads(saved.read_text()) if saved.is_file() else {"results": {}, "seconds": {}}
    if args.rescore:
        for key, values in state["results"].items():
            if "raw_VIF" not in values and key.rsplit("-s", 1)[0] in args.variants:
                raw = score_once(OUT / key, "tno25", "ir", "vi", OUT / key / "tno25_raw")
                values.update({f"raw_{m}": v for m, v in raw.items()})
                saved.write_text(json.dumps(state, indent=2))
                print(key, {m: round(values["raw_" + m], 3) for m in HEADLINE}, flush=True)
    elif args.heldout:
        keys = [f"{v}-s{s}" for v in args.variants for s in args.seeds if f"{v}-s{s}" in state["results"]]
        with ThreadPoolExecutor(args.parallel) as pool:
            futures = {pool.submit(held_out_scores, OUT / key): key for key in keys}
            for future in as_completed(futures):
                key = futures[future]
                state["results"][key].update(future.result())
                saved.write_text(json.dumps(state, indent=2))
                print(
                    key, {k: round(v, 3) for k, v in state["results"][key].items() if ":" in k and k.endswith(HEADLINE)}
                )
    elif not args.render:
        todo = [(v, s) for s in args.seeds for v in args.variants if f"{v}-s{s}" not in state["results"]]

        def train_and_score(variant: str, seed: int) -> tuple[float, dict[str, float]]:
            key, out = f"{variant}-s{seed}", OUT / f"{variant}-s{seed}"
            seconds = train_concurrently({key: (CONFIG, out, overrides(variant, seed))})[key]
            return seconds, score_both_ways(out / "checkpoints" / "last.pt", DATA / "tno25", "ir", "vi", out / "tno25")

        # a pool, not batches: a hand-made run does not wait for a slower meta-learned one
        with ThreadPoolExecutor(args.parallel) as pool:
            futures = {pool.submit(train_and_score, v, s): f"{v}-s{s}" for v, s in todo}
            for future in as_completed(futures):
                key = futures[future]
                state["seconds"][key], state["results"][key] = future.result()
                saved.write_text(json.dumps(state, indent=2))
                print(
                    key,
                    f"{state['seconds'][key] / 60:.1f} min",
                    {m: round(state["results"][key][m], 3) for m in HEADLINE},
                    flush=True,
                )
        args_text = " ".join(sys.argv[1:] if argv is None else argv)
        history = list(state.get("meta", {}).get("history", []))
        history.append(f"`python -m benchmarks.learned_losses {args_text}` ({time.strftime('%Y-%m-%d')}, {machine()})")
        state["meta"] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "args": args_text, "history": history}
        saved.write_text(json.dumps(state, indent=2))
    seed = min(int(k.rsplit("-s", 1)[1]) for k in state["results"])
    runs = {v: OUT / f"{v}-s{seed}" for v in FIGURE_VARIANTS if f"{v}-s{seed}" in state["results"]}
    figure(runs, ["01", "10", "17"], FIGURE)
    body = render(state["results"], state.get("meta", {}))
    body += f"\n![fused images and weight maps, seed {seed}](figures/{FIGURE.name})\n"
    write_section(ROOT / "docs" / "refusion.md", "LOSSES", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
