"""How good can a learned target be as an image? The loss proposal module of examples/refusion_roadscene.toml
(near-max prior plus the swap-equivariant correction) trained on the quality of its own target
T = W_a I_a + W_b I_b, with no fusion network: what ``meta.horizon = "optimum"`` optimises, without the
network that has to fit T afterwards.  Scores T and the max target on RoadScene's validation pairs
(``cddfuse`` profile, the images as they are).

    python -m benchmarks.quality_targets [--steps 300] [--ssim-form gaussian] [--ssim-weight 1]

docs/refusion.md ("The fourth recipe") has the numbers: 300 steps at lr 1e-3, four training pairs
(one random 64x64 crop each, doubled by the modality swap) per step, 7-9 minutes on one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib

import torch

from benchmarks.refusion import ROOT
from metaloss.config import load_config
from metaloss.data.collate import collate_pairs
from metaloss.experiment import build_experiment
from metaloss.metrics import evaluate

CONFIG = ROOT / "examples" / "refusion_roadscene.toml"


def scores(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """VIF, Qabf, SSIM (``cddfuse``) of images in [0, 1], rounded to grey levels as a saved image is."""
    f, a, b = (torch.round(x.clamp(0, 1) * 255).double() for x in (fused, a, b))
    values = evaluate(f, a, b, "cddfuse", ["VIF", "Qabf", "SSIM"])
    return float(values["VIF"]), float(values["Qabf"]), float(values["SSIM"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pairs", type=int, default=4, help="training pairs per step")
    parser.add_argument("--ssim-form", choices=["scored", "gaussian"], default="gaussian")
    parser.add_argument("--ssim-weight", type=float, default=1.0)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    raw = tomllib.loads(CONFIG.read_text())
    raw["data"]["root"] = str(ROOT / raw["data"]["root"])
    raw["objective"] = {"name": "quality", "ssim_form": args.ssim_form, "ssim_weight": args.ssim_weight}
    exp = build_experiment(load_config(raw))
    problem, generator = exp.problem, exp.problem.loss_generator
    optimizer = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=args.lr)
    rng = torch.Generator().manual_seed(0)

    def target(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = generator(a, b)["intensity"]
        return w[:, 0:1] * a + w[:, 1:2] * b

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        picks = torch.randint(0, len(exp.train_set), (args.pairs,), generator=rng).tolist()  # type: ignore[arg-type]
        crops = [problem.prepare_batch(collate_pairs([exp.train_set[i]]), rng) for i in picks]
        a, b = torch.cat([c["ir"] for c in crops]), torch.cat([c["vi"] for c in crops])
        loss = problem.objective.loss(target(a, b), {"task_ir": a, "task_vi": b})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step}: L_q {float(loss.detach()):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    rows: dict[str, list[tuple[float, float, float]]] = {"max target": [], "learned target": []}
    with torch.no_grad():
        for item in exp.val_set:  # type: ignore[attr-defined]
            a, b = item["ir"][None], item["vi"][None]
            rows["max target"].append(scores(torch.maximum(a, b), a, b))
            rows["learned target"].append(scores(target(a, b), a, b))
    for name, values in rows.items():
        means = [statistics.fmean(v[i] for v in values) for i in range(3)]
        print(f"{name}: VIF {means[0]:.3f}  Qabf {means[1]:.3f}  SSIM {means[2]:.3f}  ({len(values)} val pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
