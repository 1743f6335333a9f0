"""A problem's inner loss returns its terms with it (metaloss.meta.loss): the logged terms are those of
the logged loss, also with several inner steps (the first step's, at the learner's current parameters)."""

from __future__ import annotations

import copy

import pytest
import torch

from metaloss.config import MetaConfig, OptimConfig
from metaloss.meta import Loss, learner_step, meta_gradient
from metaloss.meta.trainer import AlternatingTrainer, TrainerHooks
from tests.meta.test_forward_mode import SplitProblem, batches
from tests.meta.test_trainer import Pairs


class WithTerms:
    """Wraps a problem: the inner loss as a ``Loss`` whose terms are its own value and a step counter."""

    def __init__(self, problem):
        self.problem, self.calls = problem, 0
        self.learner, self.loss_generator, self.objective = problem.learner, problem.loss_generator, problem.objective

    def _terms(self, total):
        self.calls += 1
        return Loss(total, {"value": total.detach(), "call": float(self.calls)})

    def inner_loss(self, p, batch):
        return self._terms(self.problem.inner_loss(p, batch[:2]))

    def objective_loss(self, q, p, batch):
        return self.problem.objective_loss(q, p, batch[:2])

    def outer_loss(self, p, q, batch):
        return self.problem.outer_loss(p, q, batch[:2])


class SplitWithTerms(WithTerms):
    """The same for a problem with the split the forward-mode meta-gradient uses."""

    def learner_output(self, p, batch):
        return self.problem.learner_output(p, batch)

    def inner_loss_from_output(self, out, batch):
        return self._terms(self.problem.inner_loss_from_output(out, batch))


@pytest.mark.parametrize("method,truncate", [("double_backward", 0), ("double_backward", 2), ("jvp", 1)])
def test_meta_step_reports_the_terms_of_the_loss_it_reports(method, truncate):
    problem = SplitWithTerms(SplitProblem(objective=True))
    train, test = batches()
    kw = dict(inner_lr=0.5, inner_steps=3, truncate=truncate, lookahead_lr=0.3, method=method)
    grads, result = meta_gradient(problem, train, test, **kw)
    assert problem.calls == 3  # three inner losses, each with different terms
    assert result.inner_terms == {"value": result.inner_loss, "call": 1.0}  # the first one's, as the loss
    plain_grads, plain = meta_gradient(problem.problem, train, test, **kw)
    assert result.inner_loss == plain.inner_loss and plain.inner_terms == {}
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))  # a Loss result changes no gradient


def test_learner_step_reports_the_terms_of_its_loss(toy):
    problem = WithTerms(copy.deepcopy(toy["problem_with_objective"]))
    opt = torch.optim.SGD(problem.learner.parameters(), lr=0.1)
    result = learner_step(problem, (*toy["train"], None), opt)
    assert result.learner_terms == {"value": result.learner_loss, "call": 1.0}


def test_the_trainer_logs_each_step_s_terms_beside_its_loss(toy):
    problem = WithTerms(copy.deepcopy(toy["problem_with_objective"]))
    meta = MetaConfig(epochs=2, meta_steps=3, learner_steps=2, inner_steps=3, inner_lr=0.1, outer_lr=1e-2)
    records = []
    trainer = AlternatingTrainer(
        problem,
        Pairs(20),
        meta,
        OptimConfig(learner_lr=1e-2, objective_lr=1e-2),
        batch_size=2,
        hooks=TrainerHooks(log=records.append),
    )
    trainer.fit()
    meta_records = [r for r in records if r["phase"] == "meta"]
    learner_records = [r for r in records if r["phase"] == "learner"]
    assert len(meta_records) == 6 and len(learner_records) == 4
    assert all(r["inner_value"] == r["inner_loss"] for r in meta_records)
    assert all(r["learner_value"] == r["learner_loss"] for r in learner_records)
    # each meta-step computes 3 inner losses; the logged terms are the first of them
    assert [r["inner_call"] for r in meta_records[:3]] == [1.0, 4.0, 7.0]
