"""Small float64 meta-learning problems: learned per-sample loss weights for a regression learner."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call


class WeightGenerator(nn.Module):
    """phi: per-sample weight softplus(a . [x, y] + c) of the learner's squared error."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features + 1, 1)

    def forward(self, x, y):
        return nn.functional.softplus(self.linear(torch.cat([x, y], dim=1)))[:, 0]


class ToyProblem:
    """Inner: weighted MSE of the learner; objective: a head on the learner's features; outer: its MSE."""

    def __init__(self, learner, generator, objective=None):
        self.learner, self.loss_generator, self.objective = learner, generator, objective

    def _predict(self, lp, op, x):
        out = functional_call(self.learner, lp, (x,))
        return out if op is None else functional_call(self.objective, op, (out,))

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
        return (self._predict(lp, op, x)[:, :1] - y).square().mean()


def make_batch(n, features, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = (x.sum(1, keepdim=True) * 0.5).sin()
    return x, y


@pytest.fixture
def toy():
    torch.manual_seed(0)
    features = 3
    learner = nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    generator = WeightGenerator(features).double()
    objective = nn.Linear(2, 1).double()
    return {
        "problem": ToyProblem(learner, generator),
        "problem_with_objective": ToyProblem(learner, generator, objective),
        "train": make_batch(8, features, 1),
        "test": make_batch(8, features, 2),
    }
