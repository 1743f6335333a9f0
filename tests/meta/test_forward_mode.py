"""The forward-mode (JVP) meta-gradient equals the double-backward one (metaloss.meta.forward_mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaloss.meta import meta_gradient, meta_step
from metaloss.meta.forward_mode import jvp_applies, supports_jvp
from metaloss.meta.step import resolve_method


def flat(gs):
    return torch.cat([g.flatten() for g in gs])


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


class ConvNormNet(nn.Module):
    """conv, BatchNorm (train mode: batch statistics), LayerNorm, tanh: a learner with buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm([4, 6, 6])
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.ln(self.bn(self.conv(x)))))


class PixelWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, y):
        return torch.sigmoid(self.conv(torch.cat([x, y], 1)))


class SplitProblem:
    """Learned per-pixel weights of a squared error; objective: a 1x1 conv head (look-ahead)."""

    def __init__(self, objective: bool):
        torch.manual_seed(0)
        self.learner, self.loss_generator = ConvNormNet().double().train(), PixelWeights().double()
        self.objective = nn.Conv2d(1, 1, 1).double() if objective else None

    def learner_output(self, lp, batch):
        return functional_call(self.learner, lp, (batch[0],))

    def inner_loss_from_output(self, out, batch):
        x, y = batch
        return (self.loss_generator(x, y) * (out - y).square()).mean() + 0.1 * (out - x).abs().mean()

    def inner_loss(self, lp, batch):
        return self.inner_loss_from_output(self.learner_output(lp, batch), batch)

    def objective_loss(self, op, lp, batch):
        x, y = batch
        with torch.no_grad():
            out = functional_call(self.learner, lp, (x,))
        return (functional_call(self.objective, op, (out,)) - y).square().mean()

    def outer_loss(self, lp, op, batch):
        x, y = batch
        out = functional_call(self.learner, lp, (x,))
        if op is not None:
            out = functional_call(self.objective, op, (out,))
        return (out - y).abs().mean()


def batches(seed=3):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (
        torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64),
        torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64),
    )
    return make(), make()


@pytest.mark.parametrize("objective", [False, True])
@pytest.mark.parametrize("steps,truncate", [(1, 0), (1, 1), (3, 1)])
def test_jvp_equals_double_backward(objective, steps, truncate):
    problem = SplitProblem(objective)
    train, test = batches()
    state = {k: v.clone() for k, v in problem.learner.state_dict().items()}
    kw = dict(inner_lr=0.5, inner_steps=steps, truncate=truncate, lookahead_lr=0.3 if objective else None)
    a, ra = meta_gradient(problem, train, test, method="double_backward", **kw)
    b, rb = meta_gradient(problem, train, test, method="jvp", **kw)
    assert flat(a).norm() > 1e-6
    assert rel_err(flat(b), flat(a)) < 1e-10
    assert rb.inner_loss == pytest.approx(ra.inner_loss, rel=1e-12)
    assert rb.outer_loss == pytest.approx(ra.outer_loss, rel=1e-12)
    if objective:
        assert rb.objective_loss == pytest.approx(ra.objective_loss, rel=1e-12)
    for k, v in problem.learner.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k


def test_jvp_with_loss_scales_equals_double_backward():
    problem = SplitProblem(True)
    train, test = batches(5)
    kw = dict(inner_lr=0.5, lookahead_lr=0.3, train_scale=0.25, test_scale=0.75)
    a, _ = meta_gradient(problem, train, test, method="double_backward", **kw)
    b, _ = meta_gradient(problem, train, test, method="jvp", **kw)
    assert rel_err(flat(b), flat(a)) < 1e-10


def test_auto_uses_jvp_only_where_it_is_exact():
    problem = SplitProblem(False)
    common = dict(backend="torch.func", inner_grad_hook=None)
    assert resolve_method(problem, "auto", inner_steps=1, truncate=0, **common) == "jvp"
    assert resolve_method(problem, "auto", inner_steps=3, truncate=1, **common) == "jvp"
    assert resolve_method(problem, "auto", inner_steps=3, truncate=0, **common) == "double_backward"
    assert (
        resolve_method(problem, "auto", inner_steps=1, truncate=0, backend="higher", inner_grad_hook=None)
        == "double_backward"
    )
    assert (
        resolve_method(problem, "auto", inner_steps=1, truncate=0, backend="torch.func", inner_grad_hook=lambda g: g)
        == "double_backward"
    )
    assert resolve_method(problem, None, inner_steps=1, truncate=0, **common) == "double_backward"  # library default
    problem.meta_gradient_method = "auto"
    assert resolve_method(problem, None, inner_steps=1, truncate=0, **common) == "jvp"
    with pytest.raises(ValueError, match="one tracked inner step"):
        resolve_method(problem, "jvp", inner_steps=2, truncate=0, **common)
    with pytest.raises(ValueError, match="unknown meta-gradient method"):
        resolve_method(problem, "fast", inner_steps=1, truncate=0, **common)


def test_problem_without_the_split_falls_back():
    class Plain:
        learner = generator = objective = None

        def inner_loss(self, lp, batch): ...

    assert not supports_jvp(Plain())
    assert not jvp_applies(Plain(), inner_steps=1, truncate=0, backend="torch.func", inner_grad_hook=None)
    assert supports_jvp(SplitProblem(False))


def test_meta_step_with_jvp_changes_only_the_generator():
    problem = SplitProblem(True)
    train, test = batches()
    learner = [p.clone() for p in problem.learner.parameters()]
    objective = [p.clone() for p in problem.objective.parameters()]
    generator = [p.clone() for p in problem.loss_generator.parameters()]
    opt = torch.optim.SGD(problem.loss_generator.parameters(), lr=0.1)
    meta_step(problem, train, test, opt, inner_lr=0.5, lookahead_lr=0.3, method="jvp")
    assert all(torch.equal(a, b) for a, b in zip(learner, problem.learner.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(objective, problem.objective.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(generator, problem.loss_generator.parameters(), strict=True))
    assert all(p.grad is None for p in problem.learner.parameters())
    assert all(p.grad is None for p in problem.objective.parameters())
