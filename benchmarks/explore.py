"""One-off runs of examples/refusion_roadscene.toml with extra ``--set`` options, two at a time (one
thread each), each scored through ``metaloss fuse`` and ``metaloss eval`` (``cddfuse`` profile), with
and without the min-max stretch, on RoadScene's 22 validation pairs (the set choices are made on) and
on tno25: how the variants in docs/refusion.md were run.

    python -m benchmarks.explore "LABEL;KEY=VALUE;KEY=VALUE" ["LABEL2;..."]
    python -m benchmarks.explore --score LABEL [LABEL2 ...]     # score runs already trained

Runs go to runs/explore/LABEL/, results (with each run's options) to runs/explore/results.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.refusion import DATA, ROOT, EvalSet, score_both_ways, subset, train_concurrently

CONFIG = "examples/refusion_roadscene.toml"
OUT = ROOT / "runs" / "explore"
SAVED = OUT / "results.json"


def score_run(out: Path) -> dict[str, float]:
    """``{"val_VIF": …, "val_raw_VIF": …, "VIF": … (tno25), "raw_VIF": …}`` of the run in ``out``."""
    checkpoint = out / "checkpoints" / "last.pt"
    val = subset(EvalSet(DATA / "roadscene", "ir", "vi", held_out="config"), CONFIG, out / "val_pairs")
    values: dict[str, float] = {}
    for prefix, data, a, b in (("val_", val, "a", "b"), ("", DATA / "tno25", "ir", "vi")):
        scored = score_both_ways(checkpoint, data, a, b, out / f"{prefix}scores")
        values.update({prefix + m: v for m, v in scored.items()})
    return values


def record(label: str, entry: dict[str, object]) -> None:
    state = json.loads(SAVED.read_text()) if SAVED.is_file() else {}
    state[label] = {**state.get(label, {}), **entry}
    SAVED.write_text(json.dumps(state, indent=1))
    line = " ".join(
        f"{prefix}{m}={float(entry[prefix + m]):.3f}"  # type: ignore[arg-type]
        for prefix in ("val_", "val_raw_", "", "raw_")
        for m in ("VIF", "Qabf", "SSIM")
        if prefix + m in entry
    )
    print(label, line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit(__doc__)
    if args[0] == "--score":
        for label in args[1:]:
            record(label, score_run(OUT / label))
        return 0
    jobs = {}
    for spec in args:
        label, *sets = spec.split(";")
        jobs[label] = (CONFIG, OUT / label, [s for s in sets if s])
    seconds = train_concurrently(jobs)
    for label, (_, out, sets) in jobs.items():
        record(label, {"sets": sets, "seconds": seconds[label], **score_run(out)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
