"""Outer optimizers for the loss generator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn


class MaxAbsSGD(torch.optim.Optimizer):
    """The reference's outer update: phi <- phi - lr * g / max|g|, the max over all parameters' gradients.

    Every step moves the largest gradient entry by exactly ``lr``; a zero gradient leaves phi unchanged.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-4):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        max_abs = torch.stack([g.abs().max() for g in grads]).max()
        if max_abs > 0:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad / max_abs, alpha=-group["lr"])
        return loss


def make_outer_optimizer(
    loss_generator: nn.Module, kind: Literal["adam", "maxabs_sgd"], lr: float
) -> torch.optim.Optimizer:
    params = [p for p in loss_generator.parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "maxabs_sgd":
        return MaxAbsSGD(params, lr=lr)
    raise ValueError(f"unknown outer optimizer {kind!r}; choose 'adam' or 'maxabs_sgd'")
