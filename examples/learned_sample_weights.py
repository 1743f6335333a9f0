"""The metaloss core on a problem that is not image fusion: learn per-sample loss weights.

A classifier (the learner) is trained on data with partly corrupted labels.  Its training loss is
a weighted cross-entropy whose per-sample weights come from a small network that sees each sample's
loss value (as Meta-Weight-Net, Shu et al. 2019): w_i = G_phi(l_i).  G is meta-learned with the
same ``meta_step`` and ``AlternatingTrainer`` that TDFusion and ReFusion use: the outer loss is the
learner's cross-entropy, after its inner update, on a small trusted (clean) set.  The generator
learns to give the corrupted samples, which the clean data contradicts, lower weights.

    python examples/learned_sample_weights.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset

from metaloss.config import MetaConfig, OptimConfig
from metaloss.meta import AlternatingTrainer, Loss
from metaloss.meta.trainer import seed_everything
from metaloss.protocols import ParamDict


class Blobs(Dataset):
    """Gaussian blobs, one per class; a fraction ``noise`` of the labels replaced by a wrong class."""

    def __init__(self, n: int, classes: int = 3, noise: float = 0.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        centres = torch.tensor([[2.0 * torch.cos(torch.tensor(2 * torch.pi * k / classes)), 2.0 * torch.sin(torch.tensor(2 * torch.pi * k / classes))] for k in range(classes)])
        self.true = torch.randint(0, classes, (n,), generator=g)
        self.x = centres[self.true] + 0.6 * torch.randn(n, 2, generator=g)
        self.y = self.true.clone()
        self.corrupted = torch.rand(n, generator=g) < noise
        shift = torch.randint(1, classes, (n,), generator=g)
        self.y[self.corrupted] = (self.true[self.corrupted] + shift[self.corrupted]) % classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


class LossWeightNet(nn.Module):
    """w = sigmoid(MLP(loss)): a per-sample weight from the sample's current loss value."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses[:, None]))[:, 0]


class SampleWeightProblem:
    """MetaProblem: inner = mean(w_i * CE_i), outer = CE on the trusted batch; no objective network."""

    objective = None

    def __init__(self, learner: nn.Module, loss_generator: LossWeightNet):
        self.learner, self.loss_generator = learner, loss_generator

    def inner_loss(self, params: ParamDict, batch: dict[str, Tensor]) -> Loss:
        losses = F.cross_entropy(functional_call(self.learner, params, (batch["x"],)), batch["y"], reduction="none")
        weights = self.loss_generator(losses.detach())
        return Loss((weights * losses).mean(), {"mean_weight": weights.detach().mean()})

    def objective_loss(self, objective_params: ParamDict, learner_params: ParamDict, batch: dict) -> Tensor:
        raise NotImplementedError("this problem has no objective network")

    def outer_loss(self, params: ParamDict, objective_params: ParamDict | None, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(functional_call(self.learner, params, (batch["x"],)), batch["y"])


@torch.no_grad()
def sample_weights(problem: SampleWeightProblem, data: Blobs) -> Tensor:
    losses = F.cross_entropy(problem.learner(data.x), data.y, reduction="none")
    return problem.loss_generator(losses)


def train(epochs: int = 12, noise: float = 0.4, seed: int = 0, n_train: int = 300, n_trusted: int = 30):
    """Returns (problem, training data, trainer history)."""
    seed_everything(seed)
    data, trusted = Blobs(n_train, noise=noise, seed=seed), Blobs(n_trusted, noise=0.0, seed=seed + 1)
    learner = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
    problem = SampleWeightProblem(learner, LossWeightNet())
    trainer = AlternatingTrainer(
        problem,
        data,
        MetaConfig(epochs=epochs, meta_steps=20, learner_steps=20, inner_lr=0.1, outer_lr=1e-2),
        OptimConfig(learner_lr=1e-2, lr_step=100),
        batch_size=32,
        seed=seed,
        meta_test_set=trusted,
    )
    return problem, data, trainer.fit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--noise", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    problem, data, history = train(args.epochs, args.noise, args.seed)
    w = sample_weights(problem, data)
    accuracy = (problem.learner(data.x).argmax(1) == data.true).float().mean()
    print(f"mean weight, clean samples:     {w[~data.corrupted].mean():.3f}")
    print(f"mean weight, corrupted samples: {w[data.corrupted].mean():.3f}")
    print(f"accuracy against the true labels: {accuracy:.3f}")


if __name__ == "__main__":
    main()
