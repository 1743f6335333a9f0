"""bfloat16 autocast of the learner steps (``learner_step(..., autocast=...)``, ``dtype = "bfloat16"``):
on the CPU here, on CUDA where there is one (the same code; only the device type differs)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset

from metaloss.config import MetaConfig, OptimConfig
from metaloss.meta import learner_step
from metaloss.meta.trainer import AlternatingTrainer
from metaloss.utils.numerics import unit_roundoff

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def on(toy, device):
    """The toy problem with its objective in float32 on ``device`` (autocast leaves float64 alone)."""
    problem = copy.deepcopy(toy["problem_with_objective"])
    for module in (problem.learner, problem.loss_generator, problem.objective):
        module.float().to(device)
    batch = tuple(t.float().to(device) for t in toy["train"])
    return problem, batch


def output_dtypes(problem) -> list[torch.dtype]:
    """The dtypes of the learner's and the objective's outputs, recorded by forward hooks from now on."""
    seen: list[torch.dtype] = []
    for module in (problem.learner, problem.objective):
        module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


def step(problem, batch, autocast):
    opt_l = torch.optim.SGD(problem.learner.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(problem.objective.parameters(), lr=0.1)
    learner_step(problem, batch, opt_l, opt_o, autocast=autocast)
    return [p.grad.clone() for m in (problem.learner, problem.objective) for p in m.parameters()]


@pytest.mark.parametrize("device", DEVICES)
def test_learner_step_runs_its_forward_passes_in_bfloat16_and_keeps_float32_parameters(toy, device):
    problem, batch = on(toy, device)
    seen = output_dtypes(problem)
    grads = step(problem, batch, torch.bfloat16)
    assert seen == [torch.bfloat16] * 3  # learner (inner loss), learner (objective's input), objective
    modules = (problem.learner, problem.objective)
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters())
    assert all(g.dtype == torch.float32 and bool(g.isfinite().all()) for g in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_gradients_agree_with_float32_to_bfloat16_rounding(toy, device):
    """Each of the toy's matrix products (two linear layers and the generator's, forward and backward)
    rounds both operands to bfloat16, at most u relative each: a first-order bound of 16 u on the
    gradients of these small, well-conditioned networks; and autocast did change them."""
    exact = step(*on(toy, device), None)
    mixed = step(*on(toy, device), torch.bfloat16)
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])
    rel = float((flat(mixed) - flat(exact)).norm() / flat(exact).norm())
    assert 0 < rel <= 16 * unit_roundoff(torch.bfloat16)


def test_the_trainer_autocasts_the_learner_phase_but_not_the_meta_phase(toy):
    """The trainer hands ``autocast`` to the learner steps only: its meta-steps run in float32."""
    problem, batch = on(toy, "cpu")
    seen = output_dtypes(problem)

    class Pairs(Dataset):
        def __len__(self):
            return len(batch[0])

        def __getitem__(self, i):
            return batch[0][i], batch[1][i]

    meta = MetaConfig(epochs=1, meta_steps=1, learner_steps=1, inner_lr=0.1, outer_lr=1e-2)
    trainer = AlternatingTrainer(
        problem, Pairs(), meta, OptimConfig(learner_lr=1e-2), batch_size=2, autocast=torch.bfloat16
    )
    rng = torch.Generator().manual_seed(0)
    trainer.meta_phase(1, rng)
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    trainer.learner_phase(1, rng)
    assert seen and set(seen) == {torch.bfloat16}
