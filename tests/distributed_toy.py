"""Worker for tests/test_distributed.py: the generic trainer on a float64 toy problem, alone or as one
rank under torchrun.  The objective network has a BatchNorm layer (synchronised across ranks), the
inner update takes two steps, and the data do not split evenly into global batches (stand-in samples).

    python tests/distributed_toy.py OUT.pt BATCH_SIZE BACKEND
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_toy.py OUT.pt ...

Rank 0 (or the single process) saves the final state dicts of the three networks to OUT.pt.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from metaloss import distributed
from metaloss.config import MetaConfig, OptimConfig
from metaloss.meta.trainer import AlternatingTrainer

SAMPLES = 11  # odd: partial global batches, and an empty share for one of two ranks


class Pairs(Dataset):
    def __init__(self, n: int, features: int = 3):
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, features, generator=g, dtype=torch.float64)
        self.y = (self.x.sum(1, keepdim=True) * 0.5).sin()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class Weights(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features + 1, 1)

    def forward(self, x, y):
        return nn.functional.softplus(self.linear(torch.cat([x, y], dim=1)))[:, 0]


class Toy:
    """Inner: learned per-sample weights of the learner's squared error; objective: a head with batch norm
    on the learner's (detached) outputs; outer: the head's error through the updated learner."""

    def __init__(self, features: int = 3):
        self.learner = nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, 2)).double()
        self.loss_generator = Weights(features).double()
        self.objective = nn.Sequential(
            nn.Linear(2, 8), nn.Unflatten(1, (4, 2)), nn.BatchNorm1d(4), nn.Flatten(), nn.Tanh(), nn.Linear(8, 1)
        ).double()  # batch norm over [B, 4, 2]: defined for a batch of one sample too

    def inner_loss(self, lp, batch):
        x, y = batch
        err = (functional_call(self.learner, lp, (x,))[:, :1] - y).square()[:, 0]
        return (self.loss_generator(x, y) * err).mean()

    def objective_loss(self, op, lp, batch):
        x, y = batch
        with torch.no_grad():
            feats = functional_call(self.learner, lp, (x,))
        return (functional_call(self.objective, op, (feats,)) - y).square().mean()

    def outer_loss(self, lp, op, batch):
        x, y = batch
        out = functional_call(self.objective, op, (functional_call(self.learner, lp, (x,)),))
        return (out - y).square().mean()


def main(out: str, batch_size: int, backend: str) -> None:
    ctx = distributed.context("cpu")
    torch.manual_seed(0)
    problem = Toy()
    if ctx is not None:
        distributed.convert_batchnorm(problem.objective)
    meta = MetaConfig(
        epochs=2, meta_steps=3, learner_steps=0, inner_steps=2, inner_lr=0.1, outer_lr=1e-2, backend=backend
    )
    optim = OptimConfig(learner_lr=1e-2, objective_lr=1e-2, lr_step=1, lr_gamma=0.5)
    trainer = AlternatingTrainer(problem, Pairs(SAMPLES), meta, optim, batch_size=batch_size, seed=3, parallel=ctx)
    trainer.fit()
    if ctx is None or ctx.is_main:
        nets = {"learner": problem.learner, "generator": problem.loss_generator, "objective": problem.objective}
        torch.save({key: net.state_dict() for key, net in nets.items()}, out)  # a checkpoint's trainer keys
    distributed.shutdown()
    left = backend_threads()
    if left:  # they would outlive the interpreter, and one releasing a work at exit aborts the rank
        sys.exit(f"rank {os.environ.get('RANK', '-')}: process-group threads left after shutdown: {left}")


def backend_threads() -> list[str]:
    """Names of this process's gloo threads (Linux; none elsewhere)."""
    tasks = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(tasks):
        return []
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
