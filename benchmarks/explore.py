"""One-off runs of examples/refusion_roadscene.toml with extra ``--set`` options, two at a time (one
thread each), each scored on tno25 through ``metaloss fuse`` and ``metaloss eval``: how the recipe
steps in docs/refusion.md ("The first recipe: the network, not the loss, was the limit") were run.

    python -m benchmarks.explore "LABEL;KEY=VALUE;KEY=VALUE" ["LABEL2;..."]

Runs go to runs/explore/LABEL/, results (with each run's options) to runs/explore/results.json.
"""

from __future__ import annotations

import json
import sys

from benchmarks.refusion import DATA, ROOT, score, train_concurrently

CONFIG = "examples/refusion_roadscene.toml"
OUT = ROOT / "runs" / "explore"


def main(argv: list[str] | None = None) -> int:
    specs = sys.argv[1:] if argv is None else argv
    if not specs:
        raise SystemExit(__doc__)
    jobs = {}
    for spec in specs:
        label, *sets = spec.split(";")
        jobs[label] = (CONFIG, OUT / label, [s for s in sets if s])
    seconds = train_concurrently(jobs)
    saved = OUT / "results.json"
    state = json.loads(saved.read_text()) if saved.is_file() else {}
    for label, (_, out, sets) in jobs.items():
        values = score(out / "checkpoints" / "last.pt", DATA / "tno25", "ir", "vi", out / "tno25")
        state[label] = {"sets": sets, "seconds": seconds[label], **values}
        saved.write_text(json.dumps(state, indent=1))
        print(
            label,
            f"{seconds[label] / 60:.1f} min",
            {m: round(values[m], 3) for m in ("VIF", "Qabf", "SSIM")},
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
