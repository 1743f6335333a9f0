"""NaN/Inf guard: no optimizer step with a non-finite loss or gradient; the trainer skips or stops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from metaloss.config import GuardConfig, MetaConfig, OptimConfig
from metaloss.meta.guard import NonFiniteError, NonFiniteStop, check_grads, check_loss, check_params
from metaloss.meta.step import learner_step, meta_step
from metaloss.meta.trainer import AlternatingTrainer, TrainerHooks

NAN, INF = float("nan"), float("inf")


def nan_gradient(t: torch.Tensor) -> torch.Tensor:
    """Zero in value, NaN in gradient: d/dt [0 * sqrt(t - t)] = 0 * inf."""
    return 0 * torch.sqrt(t - t.detach()).sum()


class Problem:
    """A learner with batch norm, a per-sample loss-weight generator and an objective head.

    ``fault``: which quantity turns non-finite ("inner", "objective", "outer", "learner_grad",
    "outer_grad", "objective_grad"); ``calls``: on which calls of that loss (1-based; None = all).
    """

    def __init__(self, fault: str | None = None, calls: set[int] | None = None, value: float = NAN):
        torch.manual_seed(0)
        self.learner = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
        self.loss_generator = nn.Linear(4, 1).double()
        self.objective = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)).double()
        self.fault, self.calls, self.value = fault, calls, value
        self.count = {"inner": 0, "objective": 0, "outer": 0}

    def _hit(self, loss: str, kinds: tuple[str, ...]) -> bool:
        if self.fault not in kinds:
            return False
        return self.calls is None or self.count[loss] in self.calls

    def inner_loss(self, p, batch):
        self.count["inner"] += 1
        x, y = batch[0], batch[1]
        err = (functional_call(self.learner, p, (x,))[:, :1] - y).square()[:, 0]
        w = nn.functional.softplus(self.loss_generator(torch.cat([x, y], 1)))[:, 0]
        loss = (w * err).mean()
        if self._hit("inner", ("inner",)):
            loss = loss + self.value
        if self._hit("inner", ("learner_grad",)):
            loss = loss + nan_gradient(next(iter(p.values())))
        return loss

    def objective_loss(self, q, p, batch):
        self.count["objective"] += 1
        x, y = batch[0], batch[1]
        with torch.no_grad():
            feats = functional_call(self.learner, p, (x,))
        loss = (functional_call(self.objective, q, (feats,)) - y).square().mean()
        if self._hit("objective", ("objective",)):
            loss = loss + self.value
        if self._hit("objective", ("objective_grad",)):
            loss = loss + nan_gradient(next(iter(q.values())))
        return loss

    def outer_loss(self, p, q, batch):
        self.count["outer"] += 1
        x, y = batch[0], batch[1]
        loss = (functional_call(self.objective, q, (functional_call(self.learner, p, (x,)),)) - y).square().mean()
        if self._hit("outer", ("outer",)):
            loss = loss + self.value
        if self._hit("outer", ("outer_grad",)):
            loss = loss + nan_gradient(self.loss_generator.weight)
        return loss


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, (x.sum(1, keepdim=True) * 0.5).sin()


class Pairs(Dataset):
    def __init__(self, n=12):
        self.x, self.y = batch(n, seed=5)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def state(problem):
    return {
        role: copy.deepcopy(getattr(problem, role).state_dict()) for role in ("learner", "loss_generator", "objective")
    }


def same(a, b, role):
    return all(torch.equal(a[role][k], b[role][k]) for k in a[role])


# -- the checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_checks_name_the_network_and_the_loss(bad):
    check_loss(torch.tensor(1.5), "loss_generator", "outer")
    check_loss(None, "objective", "objective")
    with pytest.raises(NonFiniteError) as info:
        check_loss(torch.tensor(bad), "loss_generator", "outer")
    err = info.value
    assert (err.role, err.loss, err.kind) == ("loss_generator", "outer", "loss")
    assert "non-finite outer loss of the loss generator" in str(err)
    check_grads([torch.ones(2), None], "learner", "learner", ["a", "b"])
    with pytest.raises(NonFiniteError, match=r"gradient of the learner loss of the learner \(parameter b\)"):
        check_grads([torch.ones(2), torch.tensor([1.0, bad])], "learner", "learner", ["a", "b"])
    net = nn.Linear(2, 1)
    check_params(net, "objective")
    with torch.no_grad():
        net.bias.fill_(bad)
    with pytest.raises(NonFiniteError, match=r"parameters of the objective \(parameter bias\)"):
        check_params(net, "objective")


# -- the meta-step ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault,network,loss,kind",
    [
        ("inner", "learner", "inner", "loss"),
        ("objective", "objective", "objective", "loss"),
        ("outer", "loss_generator", "outer", "loss"),
        ("outer_grad", "loss_generator", "outer", "gradient"),
    ],
)
@pytest.mark.parametrize("value", [NAN, INF])
def test_meta_step_takes_no_step_with_a_non_finite_loss_or_gradient(fault, network, loss, kind, value):
    problem = Problem(fault, value=value)
    opt = torch.optim.Adam(problem.loss_generator.parameters(), lr=0.1)
    before = state(problem)
    with pytest.raises(NonFiniteError) as info:
        meta_step(problem, batch(seed=1), batch(seed=2), opt, inner_lr=0.1, lookahead_lr=0.1)
    err = info.value
    assert (err.role, err.loss, err.kind) == (network, loss, kind)
    assert err.stepped == ()
    after = state(problem)
    assert all(same(before, after, role) for role in before)
    assert not opt.state  # Adam never stepped
    # the same step without the fault changes the generator
    problem.fault = None
    meta_step(problem, batch(seed=1), batch(seed=2), opt, inner_lr=0.1, lookahead_lr=0.1)
    assert not same(before, state(problem), "loss_generator") and opt.state


# -- the learner step ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault,kind", [("inner", "loss"), ("learner_grad", "gradient")])
def test_learner_step_with_a_non_finite_learner_loss_changes_nothing(fault, kind):
    problem = Problem(fault)
    lopt = torch.optim.Adam(problem.learner.parameters(), lr=0.1)
    oopt = torch.optim.Adam(problem.objective.parameters(), lr=0.1)
    before = state(problem)
    with pytest.raises(NonFiniteError) as info:
        learner_step(problem, batch(), lopt, oopt)
    assert (info.value.role, info.value.loss, info.value.kind) == ("learner", "learner", kind)
    after = state(problem)
    assert all(same(before, after, role) for role in before)  # batch-norm statistics restored too
    assert not lopt.state and not oopt.state
    assert all(p.grad is None for p in problem.learner.parameters())
    problem.fault = None
    learner_step(problem, batch(), lopt, oopt)
    after = state(problem)
    assert not same(before, after, "learner") and not same(before, after, "objective")


@pytest.mark.parametrize("fault,kind", [("objective", "loss"), ("objective_grad", "gradient")])
def test_learner_step_with_a_non_finite_objective_loss_keeps_the_learner_step(fault, kind):
    problem = Problem(fault)
    lopt = torch.optim.Adam(problem.learner.parameters(), lr=0.1)
    oopt = torch.optim.Adam(problem.objective.parameters(), lr=0.1)
    before = state(problem)
    with pytest.raises(NonFiniteError) as info:
        learner_step(problem, batch(), lopt, oopt)
    err = info.value
    assert (err.role, err.loss, err.kind, err.stepped) == ("objective", "objective", kind, ("learner",))
    assert err.record()["stepped"] == ["learner"]
    after = state(problem)
    assert not same(before, after, "learner") and same(before, after, "objective")
    assert lopt.state and not oopt.state


# -- the trainer ---------------------------------------------------------------------------------------------
def trainer(problem, guard=None, **meta):
    cfg = MetaConfig(**{"epochs": 2, "meta_steps": 3, "learner_steps": 2, "inner_lr": 0.1, "outer_lr": 1e-2, **meta})
    logs, saved = [], []
    hooks = TrainerHooks(log=logs.append, checkpoint=lambda epoch, last: saved.append(epoch))
    t = AlternatingTrainer(
        problem, Pairs(), cfg, OptimConfig(learner_lr=1e-2, objective_lr=1e-2), batch_size=3, hooks=hooks, guard=guard
    )
    return t, logs, saved


def nonfinite(logs):
    return [r for r in logs if r["phase"] == "nonfinite"]


def test_stop_logs_network_and_loss_and_saves_nothing_of_that_epoch():
    problem = Problem("outer", calls={5})  # epoch 2, meta-step 2
    t, logs, saved = trainer(problem)
    with pytest.raises(NonFiniteStop, match=r"non-finite outer loss of the loss generator .*epoch 2, meta step 2"):
        t.fit()
    assert saved == [1]  # epoch 1 was saved; the epoch in progress is not
    (record,) = nonfinite(logs)
    assert record["role"] == "loss_generator" and record["loss"] == "outer" and record["kind"] == "loss"
    assert (record["epoch"], record["step"], record["step_phase"], record["action"]) == (2, 2, "meta", "stop")


@pytest.mark.parametrize(
    "fault,calls,phase,network,loss",
    [
        ("outer", {2, 4}, "meta", "loss_generator", "outer"),
        ("inner", {4, 9}, "learner", "learner", "learner"),  # inner calls per epoch: 3 meta, then 2 learner
        ("objective_grad", {4}, "learner", "objective", "objective"),
    ],
)
def test_skip_drops_the_batch_logs_it_and_finishes(fault, calls, phase, network, loss):
    reference = Problem()
    trainer(reference)[0].fit()
    problem = Problem(fault, calls=calls)
    t, logs, saved = trainer(problem, GuardConfig(on_nonfinite="skip", max_consecutive_skips=2))
    history = t.fit()
    assert saved == [1, 2] and len(history) == 2
    records = nonfinite(logs)
    assert len(records) == len(calls) and all(r["action"] == "skip" for r in records)
    assert all((r["step_phase"], r["role"], r["loss"]) == (phase, network, loss) for r in records)
    for role in ("learner", "loss_generator", "objective"):
        check_params(getattr(problem, role), role)
    assert not same(state(reference), state(problem), "loss_generator" if phase == "meta" else "learner")
    assert t.consecutive_skips == 0


def test_consecutive_skips_are_capped_and_the_count_resets():
    problem = Problem("outer", calls={1, 2, 4, 5})  # never more than 2 in a row
    t, logs, _ = trainer(problem, GuardConfig(on_nonfinite="skip", max_consecutive_skips=2))
    t.fit()
    assert [r["consecutive_skips"] for r in nonfinite(logs)] == [1, 2, 1, 2]
    problem = Problem("outer")  # every meta-step
    t, logs, saved = trainer(problem, GuardConfig(on_nonfinite="skip", max_consecutive_skips=2))
    with pytest.raises(NonFiniteStop, match=r"3 batches in a row .*max_consecutive_skips = 2"):
        t.fit()
    assert [r["action"] for r in nonfinite(logs)] == ["skip", "skip", "stop"] and saved == []


def test_non_finite_parameters_are_never_checkpointed():
    problem = Problem()
    t, _logs, saved = trainer(problem)

    def corrupt(epoch):
        if epoch == 2:
            with torch.no_grad():
                problem.objective[0].weight.fill_(math.inf)
        return {}

    t.hooks.evaluate = corrupt
    with pytest.raises(NonFiniteStop, match=r"parameters of the objective .*end of epoch 2"):
        t.fit()
    assert saved == [1]


def test_skip_count_is_part_of_the_trainer_state():
    t, _, _ = trainer(Problem())
    t.consecutive_skips = 2
    s = t.state_dict()
    u, _, _ = trainer(Problem())
    u.load_state_dict(s)
    assert u.consecutive_skips == 2
    del s["guard"]  # checkpoints written before the guard existed
    u.load_state_dict(s)
    assert u.consecutive_skips == 0
