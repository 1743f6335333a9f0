import copy

import pytest
import torch
from torch.utils.data import Dataset

from metaloss.config import MetaConfig, OptimConfig
from metaloss.meta.outer import MaxAbsSGD
from metaloss.meta.trainer import AlternatingTrainer


class Pairs(Dataset):
    def __init__(self, n, features=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=g, dtype=torch.float64)
        self.y = (self.x.sum(1, keepdim=True) * 0.5).sin()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], torch.tensor(i)


class Recording:
    """Wraps the toy problem and records which sample indices each loss saw."""

    def __init__(self, problem):
        self.inner, self.learner, self.loss_generator, self.objective = (
            problem,
            problem.learner,
            problem.loss_generator,
            problem.objective,
        )
        self.seen = {"inner": [], "outer": []}

    def inner_loss(self, p, batch):
        self.seen["inner"].append(batch[2].tolist())
        return self.inner.inner_loss(p, batch[:2])

    def objective_loss(self, q, p, batch):
        return self.inner.objective_loss(q, p, batch[:2])

    def outer_loss(self, p, q, batch):
        self.seen["outer"].append(batch[2].tolist())
        return self.inner.outer_loss(p, q, batch[:2])


def make(toy, n=20, **meta):
    problem = Recording(copy.deepcopy(toy["problem_with_objective"]))  # same initial weights each time
    cfg = MetaConfig(**{"epochs": 2, "meta_steps": 3, "learner_steps": 0, "inner_lr": 0.1, "outer_lr": 1e-2, **meta})
    return problem, AlternatingTrainer(
        problem, Pairs(n), cfg, OptimConfig(learner_lr=1e-2, objective_lr=1e-2, lr_step=1, lr_gamma=0.5), batch_size=2
    )


def test_meta_train_and_meta_test_batches_are_disjoint_each_epoch(toy):
    problem, trainer = make(toy)
    g = torch.Generator().manual_seed(0)
    mtr, mts = trainer.meta_split(g)
    assert len(mtr) == len(mts) == 6  # M batches of 2 each
    assert not set(mtr.indices) & set(mts.indices)
    mtr2, _ = trainer.meta_split(g)
    assert mtr2.indices != mtr.indices  # redrawn each epoch
    trainer.meta_phase(1, torch.Generator().manual_seed(1))
    inner = {i for b in problem.seen["inner"] for i in b}
    outer = {i for b in problem.seen["outer"] for i in b}
    assert inner and outer and not inner & outer


def test_small_datasets_split_in_half(toy):
    _, trainer = make(toy, n=5, meta_steps=10)
    mtr, mts = trainer.meta_split(torch.Generator().manual_seed(0))
    assert len(mtr) == len(mts) == 2 and not set(mtr.indices) & set(mts.indices)


def test_learner_phase_is_one_pass_by_default_and_freezes_the_generator(toy):
    problem, trainer = make(toy)
    before = [p.clone() for p in problem.loss_generator.parameters()]
    learner_before = [p.clone() for p in problem.learner.parameters()]
    objective_before = [p.clone() for p in problem.objective.parameters()]
    summary = trainer.learner_phase(1, torch.Generator().manual_seed(0))
    assert len(problem.seen["inner"]) == 10  # 20 samples, batch 2
    assert all(torch.equal(a, b) for a, b in zip(before, problem.loss_generator.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(learner_before, problem.learner.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(objective_before, problem.objective.parameters(), strict=True))
    assert {"learner/learner_loss", "learner/objective_loss"} <= set(summary)


def test_learning_rates_decay_on_schedule_and_inner_lr_follows_the_learner(toy, monkeypatch):
    _problem, trainer = make(toy, epochs=3, inner_lr="learner")
    seen_lr = []
    import metaloss.meta.trainer as mod

    real = mod.meta_step

    def spy(*args, **kwargs):
        seen_lr.append(kwargs["inner_lr"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "meta_step", spy)
    history = trainer.fit()
    assert [h["lr/learner"] for h in history] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert seen_lr == pytest.approx([1e-2] * 3 + [5e-3] * 3 + [2.5e-3] * 3)
    assert trainer.outer_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)


def test_fixed_inner_lr_and_maxabs_outer_optimizer(toy, monkeypatch):
    _problem, trainer = make(toy, inner_lr=0.05, outer_optimizer="maxabs_sgd")
    assert isinstance(trainer.outer_opt, MaxAbsSGD)
    import metaloss.meta.trainer as mod

    seen = []
    real = mod.meta_step
    monkeypatch.setattr(mod, "meta_step", lambda *a, **k: seen.append(k["inner_lr"]) or real(*a, **k))
    trainer.fit()
    assert set(seen) == {0.05}


def test_state_dict_round_trip_continues_identically(toy):
    _, a = make(toy, epochs=2)
    a.fit()
    _, b = make(toy, epochs=1)
    b.fit()
    _, c = make(toy, epochs=2)
    c.load_state_dict(b.state_dict())
    assert c.epoch == 1
    c.fit()
    for net in ("learner", "loss_generator", "objective"):
        for pa, pc in zip(getattr(a.problem, net).parameters(), getattr(c.problem, net).parameters(), strict=True):
            assert torch.equal(pa, pc), net


def test_needs_two_samples(toy):
    with pytest.raises(ValueError, match="at least 2"):
        make(toy, n=1)


def test_generator_without_parameters_needs_no_meta_phase(toy):
    from torch import nn

    class Constant(nn.Module):
        def forward(self, x, y):
            return torch.ones(len(x), dtype=x.dtype)

    problem = Recording(copy.deepcopy(toy["problem"]))
    problem.loss_generator = problem.inner.generator = Constant()
    with pytest.raises(ValueError, match="meta_steps = 0"):
        AlternatingTrainer(problem, Pairs(10), MetaConfig(epochs=1, meta_steps=2), OptimConfig(), batch_size=2)
    trainer = AlternatingTrainer(problem, Pairs(10), MetaConfig(epochs=1, meta_steps=0), OptimConfig(), batch_size=2)
    history = trainer.fit()
    assert "meta/outer_loss" not in history[0] and "learner/learner_loss" in history[0]


def test_warmup_epochs_skip_the_meta_phase_only(toy, monkeypatch):
    _problem, trainer = make(toy, epochs=3, warmup_epochs=1)
    import metaloss.meta.trainer as mod

    epochs_with_meta = []
    real = mod.meta_step
    monkeypatch.setattr(mod, "meta_step", lambda *a, **k: epochs_with_meta.append(trainer_epoch[0]) or real(*a, **k))
    trainer_epoch = [0]
    real_phase = trainer.meta_phase

    def phase(epoch, generator):
        trainer_epoch[0] = epoch
        return real_phase(epoch, generator)

    trainer.meta_phase = phase
    history = trainer.fit()
    assert epochs_with_meta == [2, 2, 2, 3, 3, 3]
    assert "meta/outer_loss" not in history[0] and "meta/outer_loss" in history[1]
    assert all("learner/learner_loss" in h for h in history)


def test_warmup_must_leave_a_meta_epoch():
    with pytest.raises(ValueError, match="warmup_epochs"):
        MetaConfig(epochs=2, warmup_epochs=2)
    MetaConfig(epochs=2, warmup_epochs=2, meta_steps=0)  # nothing to warm up for: allowed
