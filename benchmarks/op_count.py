"""Count the work of one meta-step: aten operators dispatched and Python function calls.

Deterministic where timings are not: two versions of the code that dispatch the same operators and
make about the same number of Python calls do the same work, whatever a stopwatch says on a busy
machine.  Run it in two checkouts (e.g. a ``git worktree`` of an older commit with its plugins on
``PYTHONPATH``) and compare:

    python -m benchmarks.op_count [--impl torch.func] [--crop 64]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Any


def count(impl: str, crop: int) -> dict[str, Any]:
    """Operators (by name) and Python calls of one meta-step after a warm-up step, and 3 CPU times."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from benchmarks.meta_step import _config
    from metaloss.config import load_config
    from metaloss.data.collate import collate_pairs
    from metaloss.experiment import build_experiment
    from metaloss.meta import make_outer_optimizer, meta_step

    torch.set_num_threads(1)
    cfg = load_config(_config(impl, crop, (crop, crop), 1, "cpu"))
    problem = (exp := build_experiment(cfg)).problem
    g = torch.Generator().manual_seed(0)
    train = problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    opt = make_outer_optimizer(problem.loss_generator, "adam", 1e-4)

    def step() -> None:
        meta_step(problem, train, test, opt, inner_lr=1e-4, inner_steps=1, backend=cfg.meta.backend, lookahead_lr=1e-4)

    class Operators(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.seen[str(func)] += 1
            return func(*args, **(kwargs or {}))

    step()  # warm-up
    with Operators() as ops:
        step()
    calls = [0]

    def on_event(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls[0] += 1

    sys.setprofile(on_event)
    step()
    sys.setprofile(None)
    seconds = []
    for _ in range(3):
        start = time.process_time()
        step()
        seconds.append(time.process_time() - start)
    return {
        "operators": sum(ops.seen.values()),
        "by_operator": dict(ops.seen),
        "python_calls": calls[0],
        "cpu_s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="torch.func")
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args(argv)
    result = count(args.impl, args.crop)
    print(
        f"aten operators: {result['operators']}, Python calls: {result['python_calls']}, "
        f"CPU s per step: {', '.join(f'{s:.3f}' for s in result['cpu_s'])}"
    )
    for name, n in sorted(result["by_operator"].items()):
        print(f"  {name} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
