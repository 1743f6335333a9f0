"""The meta-gradient against central finite differences (float64), and the two backends against each other."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaloss.meta import inner_update, meta_gradient, meta_step
from metaloss.meta.outer import MaxAbsSGD

pytest.importorskip("higher")


def outer_loss_at(problem, train, test, lr, steps, lookahead_lr=None):
    """L_outer as a plain function of the generator's current parameters (no meta-graph)."""
    learner_new = inner_update(problem.learner, lambda p: problem.inner_loss(p, train), lr, steps, create_graph=False)
    op = None
    if problem.objective is not None:
        op = {n: p.detach() for n, p in problem.objective.named_parameters()}
        if lookahead_lr:
            lp = {n: p.detach() for n, p in problem.learner.named_parameters()}
            op = inner_update(
                problem.objective, lambda q: problem.objective_loss(q, lp, train), lookahead_lr, create_graph=False
            )
    return float(problem.outer_loss(learner_new, op, test).detach())


def finite_difference(problem, train, test, lr, steps, eps=1e-6, **kw):
    grads = []
    for p in problem.loss_generator.parameters():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
            plus = outer_loss_at(problem, train, test, lr, steps, **kw)
            with torch.no_grad():
                p.view(-1)[i] -= 2 * eps
            minus = outer_loss_at(problem, train, test, lr, steps, **kw)
            with torch.no_grad():
                p.view(-1)[i] += eps
            g.view(-1)[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return torch.cat([g.flatten() for g in grads])


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences(toy, steps):
    problem = toy["problem"]
    grads, result = meta_gradient(problem, toy["train"], toy["test"], inner_lr=0.3, inner_steps=steps)
    analytic = torch.cat([g.flatten() for g in grads])
    numeric = finite_difference(problem, toy["train"], toy["test"], 0.3, steps)
    assert numeric.norm() > 1e-4  # a real signal, not two zeros agreeing
    assert rel_err(analytic, numeric) < 1e-6
    assert result.outer_loss == pytest.approx(outer_loss_at(problem, toy["train"], toy["test"], 0.3, steps))


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_with_objective_lookahead_matches_finite_differences(toy, steps):
    problem = toy["problem_with_objective"]
    grads, _ = meta_gradient(problem, toy["train"], toy["test"], inner_lr=0.3, inner_steps=steps, lookahead_lr=0.2)
    analytic = torch.cat([g.flatten() for g in grads])
    numeric = finite_difference(problem, toy["train"], toy["test"], 0.3, steps, lookahead_lr=0.2)
    assert numeric.norm() > 1e-4
    assert rel_err(analytic, numeric) < 1e-6


def test_truncation_backpropagates_through_last_steps_only(toy):
    problem = toy["problem"]
    train, test = toy["train"], toy["test"]
    full, _ = meta_gradient(problem, train, test, inner_lr=0.3, inner_steps=3)
    same, _ = meta_gradient(problem, train, test, inner_lr=0.3, inner_steps=3, truncate=3)
    last, _ = meta_gradient(problem, train, test, inner_lr=0.3, inner_steps=3, truncate=1)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    assert torch.allclose(flat(full), flat(same))
    # by hand: two steps without graph, then one tracked step from there
    early = inner_update(problem.learner, lambda p: problem.inner_loss(p, train), 0.3, 2, create_graph=False)
    late = inner_update(problem.learner, lambda p: problem.inner_loss(p, train), 0.3, 1, params=early)
    expected = torch.autograd.grad(problem.outer_loss(late, None, test), list(problem.loss_generator.parameters()))
    assert rel_err(flat(last), flat(expected)) < 1e-12
    assert rel_err(flat(last), flat(full)) > 1e-3


class ConvNormNet(nn.Module):
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


class ConvProblem:
    objective = None

    def __init__(self):
        torch.manual_seed(0)
        self.learner, self.loss_generator = ConvNormNet().double().train(), PixelWeights().double()

    def inner_loss(self, lp, batch):
        x, y = batch
        return (self.loss_generator(x, y) * (functional_call(self.learner, lp, (x,)) - y).square()).mean()

    def outer_loss(self, lp, op, batch):
        x, y = batch
        return (functional_call(self.learner, lp, (x,)) - y).abs().mean()


@pytest.mark.parametrize("steps,truncate", [(1, 0), (3, 0), (3, 2)])
def test_backends_agree_on_conv_net_with_batchnorm_and_layernorm(steps, truncate):
    problem = ConvProblem()
    g = torch.Generator().manual_seed(3)
    train = (
        torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64),
        torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64),
    )
    test = (
        torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64),
        torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64),
    )
    state = {k: v.clone() for k, v in problem.learner.state_dict().items()}
    kw = dict(inner_lr=0.5, inner_steps=steps, truncate=truncate)
    a, ra = meta_gradient(problem, train, test, backend="torch.func", **kw)
    b, rb = meta_gradient(problem, train, test, backend="higher", **kw)
    flat = lambda gs: torch.cat([x.flatten() for x in gs])
    assert flat(a).norm() > 1e-6
    assert rel_err(flat(b), flat(a)) < 1e-6
    assert ra.outer_loss == pytest.approx(rb.outer_loss, rel=1e-12)
    for k, v in problem.learner.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k


def test_meta_step_changes_only_the_generator(toy):
    problem = toy["problem_with_objective"]
    before = {
        "learner": [p.clone() for p in problem.learner.parameters()],
        "objective": [p.clone() for p in problem.objective.parameters()],
        "generator": [p.clone() for p in problem.loss_generator.parameters()],
    }
    opt = torch.optim.Adam(problem.loss_generator.parameters(), lr=1e-2)
    meta_step(problem, toy["train"], toy["test"], opt, inner_lr=0.3, lookahead_lr=0.2)
    assert all(torch.equal(a, b) for a, b in zip(before["learner"], problem.learner.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before["objective"], problem.objective.parameters(), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(before["generator"], problem.loss_generator.parameters(), strict=True)
    )
    assert all(p.grad is None for p in problem.learner.parameters())


def test_first_order_would_give_zero_meta_gradient(toy):
    """Why first_order is refused: without the inner step's graph phi never reaches the outer loss."""
    problem = toy["problem"]
    train, test = toy["train"], toy["test"]
    new = inner_update(problem.learner, lambda p: problem.inner_loss(p, train), 0.3, create_graph=False)
    outer = problem.outer_loss(new, None, test)
    grads = torch.autograd.grad(outer, list(problem.loss_generator.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_maxabs_sgd_moves_the_largest_entry_by_lr():
    a = nn.Parameter(torch.tensor([1.0, 1.0]))
    b = nn.Parameter(torch.tensor([1.0]))
    a.grad, b.grad = torch.tensor([0.5, -4.0]), torch.tensor([2.0])
    MaxAbsSGD([a, b], lr=0.1).step()
    assert a.tolist() == pytest.approx([1 - 0.1 * 0.5 / 4, 1 + 0.1])
    assert b.tolist() == pytest.approx([1 - 0.1 * 0.5])
    c = nn.Parameter(torch.tensor([3.0]))
    c.grad = torch.zeros(1)
    MaxAbsSGD([c], lr=0.1).step()
    assert c.item() == 3.0
