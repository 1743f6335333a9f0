"""The alternating trainer: per epoch, M meta-steps (loss generator only), then N learner steps.

    for epoch in 1..L:
        draw disjoint random meta-train / meta-test subsets of the training set
        M x meta_step(problem, x_mtr, x_mts)               only the loss generator changes
        N x learner_step(problem, x)                       learner on the learned loss, objective on
                                                           its own loss with the learner's output detached
        decay the learning rates; evaluate; checkpoint

Every epoch re-seeds the random streams from (seed, epoch), so a run resumed from an epoch checkpoint
continues exactly as the uninterrupted run would have.

With a ``DataParallel`` of N ranks (``metaloss.meta.parallel``; ``metaloss.distributed`` provides one)
every rank draws the batches of ``batch_size * N`` samples that one process would draw and trains on
its share of each; losses are scaled by that share and gradients summed across ranks, so the steps
are those of one process.

The trainer takes its settings as three small protocols (``Schedule``, ``Optimization``,
``NonFinitePolicy``); ``metaloss.config``'s ``MetaConfig``, ``OptimConfig`` and ``GuardConfig`` are
such objects, and so is any object with these attributes.
"""

from __future__ import annotations

import itertools
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from metaloss.meta.guard import ROLES, NonFiniteError, NonFiniteStop, check_params
from metaloss.meta.inner import Backend, trainable_params
from metaloss.meta.outer import make_outer_optimizer
from metaloss.meta.parallel import (
    DataParallel,
    Shard,
    ShardedBatches,
    SingleProcess,
    StandInProblem,
    Tagged,
    TaggedCollate,
)
from metaloss.meta.step import MetaProblem, learner_step, meta_step

Record = dict[str, Any]
Callback = Callable[[Record], None]


class Schedule(Protocol):
    """The alternating schedule: L ``epochs`` of ``meta_steps`` meta-steps (after ``warmup_epochs``
    without) and ``learner_steps`` learner steps (0 = one pass over the data); each meta-step takes
    ``inner_steps`` inner steps of size ``inner_lr`` (a number, or ``"learner"``: the learner's current
    lr), tracked through the last ``truncate`` (0 = all), with ``backend``; the loss generator's
    ``outer_optimizer`` (``"adam"`` or ``"maxabs_sgd"``) has lr ``outer_lr``; with
    ``objective_lookahead`` the objective network takes a look-ahead step before the outer loss.  An
    optional ``horizon`` (``metaloss.meta.step.Horizon``, default ``"unrolled"``) picks what the outer
    loss judges, and ``output_lr`` is the "output" horizon's step (default 0.01)."""

    epochs: int
    meta_steps: int
    learner_steps: int
    inner_steps: int
    inner_lr: float | Literal["learner"]
    truncate: int
    backend: Backend
    outer_optimizer: Literal["adam", "maxabs_sgd"]
    outer_lr: float
    objective_lookahead: bool
    warmup_epochs: int


class Optimization(Protocol):
    """Adam learning rates of the learner and the objective network, the step decay of all three
    learning rates (x ``lr_gamma`` every ``lr_step`` epochs) and the gradient-norm clip (None: none)."""

    learner_lr: float
    objective_lr: float
    lr_step: int
    lr_gamma: float
    grad_clip: float | None


class NonFinitePolicy(Protocol):
    """What a NaN/Inf step does: ``on_nonfinite`` ``"stop"`` or ``"skip"`` (at most
    ``max_consecutive_skips`` batches in a row)."""

    on_nonfinite: Literal["stop", "skip"]
    max_consecutive_skips: int


@dataclass
class TrainerHooks:
    """What the trainer calls out to; all optional.

    ``prepare_batch(batch, rng)``: device transfer and per-batch augmentation (crops, swaps).
    ``log(record)``: every step and epoch record.  ``progress(phase, epoch, step, total, record)``.
    ``evaluate(epoch) -> dict``: validation metrics.  ``checkpoint(epoch, is_last)``: persist state.
    """

    prepare_batch: Callable[[Any, torch.Generator], Any] | None = None
    log: Callback | None = None
    progress: Callable[[str, int, int, int, Record], None] | None = None
    evaluate: Callable[[int], dict[str, float]] | None = None
    checkpoint: Callable[[int, bool], None] | None = None


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % 2**63


class AlternatingTrainer:
    """Runs a ``Schedule`` on a ``MetaProblem``; owns the three optimizers and schedulers.

    ``guard``: without one, the first non-finite loss or gradient stops the run.
    """

    def __init__(
        self,
        problem: MetaProblem,
        train_set: Dataset,
        meta: Schedule,
        optim: Optimization,
        *,
        batch_size: int = 1,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        hooks: TrainerHooks | None = None,
        eval_every: int = 1,
        checkpoint_every: int = 1,
        meta_test_set: Dataset | None = None,
        guard: NonFinitePolicy | None = None,
        parallel: DataParallel | None = None,
        autocast: torch.dtype | None = None,
    ):
        self.problem, self.train_set, self.meta, self.optim = problem, train_set, meta, optim
        self.autocast = autocast  # the learner steps' forward passes (learner_step); meta-steps stay as they are
        self.meta_test_set = meta_test_set
        self.batch_size, self.collate_fn, self.num_workers = batch_size, collate_fn, num_workers
        self.seed, self.hooks = seed, hooks or TrainerHooks()
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        # data-parallel: batch_size is per process; every rank draws the same global batches and
        # trains on its shard of each (metaloss.distributed)
        self.parallel: DataParallel = parallel or SingleProcess()
        self.global_batch_size = batch_size * self.parallel.world_size
        self.on_nonfinite = guard.on_nonfinite if guard is not None else "stop"
        self.max_consecutive_skips = guard.max_consecutive_skips if guard is not None else 0
        self.consecutive_skips = 0  # batches skipped in a row on a NaN/Inf (on_nonfinite = "skip")
        size = len(cast(Sized, train_set))  # a map-style dataset: torch's Dataset type does not declare __len__
        if size < 2:
            raise ValueError(f"the training set needs at least 2 samples (disjoint meta-train/test), has {size}")
        self.learner_opt = torch.optim.Adam(trainable_params(problem.learner).values(), lr=optim.learner_lr)
        # a fixed objective (a measure with no parameters, e.g. a fusion quality) has nothing to train
        objective_params = trainable_params(problem.objective) if problem.objective is not None else {}
        self.objective_opt = (
            torch.optim.Adam(objective_params.values(), lr=optim.objective_lr) if objective_params else None
        )
        has_generator_params = any(p.requires_grad for p in problem.loss_generator.parameters())
        if not has_generator_params and meta.meta_steps:
            raise ValueError(
                f"the loss generator {type(problem.loss_generator).__name__} has no trainable parameters, so there is "
                "nothing to meta-learn: set meta_steps = 0"
            )
        self.outer_opt = (
            make_outer_optimizer(problem.loss_generator, meta.outer_optimizer, meta.outer_lr)
            if has_generator_params
            else None
        )
        self.optimizers = [o for o in (self.learner_opt, self.objective_opt, self.outer_opt) if o is not None]
        self.schedulers = [
            torch.optim.lr_scheduler.StepLR(o, step_size=optim.lr_step, gamma=optim.lr_gamma) for o in self.optimizers
        ]
        self.epoch = 0  # epochs completed
        self.history: list[Record] = []

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, rng: torch.Generator, shuffle: bool = True) -> DataLoader:
        """Global batches drawn from ``rng`` exactly as a one-process DataLoader with that batch size
        draws them (same random stream on every rank); yields this rank's ``Shard`` of each."""
        sized = cast(Sized, dataset)  # a map-style dataset: torch's Dataset type does not declare __len__
        sampler = RandomSampler(sized, generator=rng) if shuffle else SequentialSampler(sized)
        return DataLoader(
            Tagged(dataset),
            batch_sampler=ShardedBatches(BatchSampler(sampler, self.global_batch_size, drop_last=False), self.parallel),
            collate_fn=TaggedCollate(self.collate_fn),
            num_workers=self.num_workers,
            generator=rng,
        )

    def meta_split(self, rng: torch.Generator) -> tuple[Dataset, Dataset]:
        """Disjoint random meta-train and meta-test subsets, M batches each where the data allows.

        With a separate ``meta_test_set`` (trusted data, say) the meta-train subset is drawn from the
        training set and the meta-test batches come from that set.
        """
        n = len(self.train_set)  # type: ignore[arg-type]
        perm = torch.randperm(n, generator=rng).tolist()
        if self.meta_test_set is not None:
            return Subset(
                self.train_set, perm[: self.meta.meta_steps * self.global_batch_size or 1]
            ), self.meta_test_set
        half = min(self.meta.meta_steps * self.global_batch_size, n // 2) or 1
        return Subset(self.train_set, perm[:half]), Subset(self.train_set, perm[half : 2 * half])

    def _cycle(self, dataset: Dataset, rng: torch.Generator) -> Iterator[Any]:
        while True:
            yield from self._loader(dataset, rng)

    def _prepare(self, batch: Any, rng: torch.Generator) -> Any:
        prepare = self.hooks.prepare_batch
        return prepare(batch, rng) if prepare is not None else batch

    # -- data parallelism (no-ops in a single process) --------------------------------------------
    def _problem_for(self, *pairs: tuple[Shard, Any]) -> Any:
        """The problem, wrapped so that a stand-in batch (weight 0) stays out of global batch-norm
        statistics when this rank's share of a global batch is empty."""
        stand_ins = [batch for shard, batch in pairs if shard.weight == 0]
        return StandInProblem(self.problem, stand_ins, self.parallel) if stand_ins else self.problem

    def _average(self, record: Record, weight: float, weights: dict[str, float] | None = None) -> Record:
        """The losses of a record averaged over the global batch (each rank's value times its share)."""
        if not self.distributed:
            return record
        keys = [
            k
            for k, v in record.items()
            if k not in ("phase", "epoch", "step", "loss_generator_grad_norm")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        ]
        averaged = self.parallel.weighted_sum(
            {k: record[k] for k in keys}, {k: (weights or {}).get(k, weight) for k in keys}
        )
        return {**record, **averaged}

    @property
    def distributed(self) -> bool:
        return self.parallel.world_size > 1

    # -- phases -------------------------------------------------------------------------------
    @property
    def learner_lr(self) -> float:
        return float(self.learner_opt.param_groups[0]["lr"])

    def meta_phase(self, epoch: int, rng: torch.Generator) -> Record:
        steps = self.meta.meta_steps
        if steps == 0 or self.outer_opt is None or epoch <= self.meta.warmup_epochs:
            return {}
        mtr, mts = self.meta_split(rng)
        train_iter, test_iter = self._cycle(mtr, rng), self._cycle(mts, rng)
        inner_lr = self.learner_lr if self.meta.inner_lr == "learner" else float(self.meta.inner_lr)
        lookahead = (
            float(self.objective_opt.param_groups[0]["lr"])
            if self.objective_opt is not None and self.meta.objective_lookahead
            else None
        )
        sums: dict[str, float] = {}
        skipped = 0
        self.problem.loss_generator.train()
        for step in range(1, steps + 1):
            train = next(train_iter)
            train_batch = self._prepare(train.batch, rng)
            test = next(test_iter)
            test_batch = self._prepare(test.batch, rng)
            parallel: dict[str, Any] = {}
            if self.distributed:
                parallel = {
                    "grad_hook": self.parallel.sum_grads_,
                    "inner_grad_hook": self.parallel.sum_grads,
                    "train_scale": train.weight,
                    "test_scale": test.weight,
                }
            try:
                result = meta_step(
                    self._problem_for((train, train_batch), (test, test_batch)),
                    train_batch,
                    test_batch,
                    self.outer_opt,
                    inner_lr=inner_lr,
                    inner_steps=self.meta.inner_steps,
                    truncate=self.meta.truncate,
                    backend=self.meta.backend,
                    lookahead_lr=lookahead,
                    horizon=getattr(self.meta, "horizon", "unrolled"),
                    output_lr=getattr(self.meta, "output_lr", 0.01),
                    **parallel,
                )
            except NonFiniteError as err:
                self._nonfinite(err, "meta", epoch, step, steps)
                skipped += 1
                continue
            self.consecutive_skips = 0
            record = {
                "phase": "meta",
                "epoch": epoch,
                "step": step,
                "inner_loss": result.inner_loss,
                "outer_loss": result.outer_loss,
                "loss_generator_grad_norm": result.loss_generator_grad_norm,
                **({"objective_loss": result.objective_loss} if result.objective_loss is not None else {}),
                **{f"inner_{k}": v for k, v in result.inner_terms.items()},
            }
            record = self._average(record, train.weight, {"outer_loss": test.weight})
            self._emit("meta", epoch, step, steps, record, sums)
        return {f"meta/{k}": v / max(1, steps - skipped) for k, v in sums.items()}

    def learner_phase(self, epoch: int, rng: torch.Generator) -> Record:
        loader = self._loader(self.train_set, rng)
        steps = self.meta.learner_steps or len(loader)
        batches: Iterable[Any] = itertools.islice(self._cycle(self.train_set, rng), steps)
        sums: dict[str, float] = {}
        skipped = 0
        self.problem.loss_generator.eval()
        for step, shard in enumerate(batches, start=1):
            batch = self._prepare(shard.batch, rng)
            parallel = {"loss_scale": shard.weight, "grad_hook": self.parallel.sum_grads_} if self.distributed else {}
            try:
                result = learner_step(
                    self._problem_for((shard, batch)),
                    batch,
                    self.learner_opt,
                    self.objective_opt,
                    grad_clip=self.optim.grad_clip,
                    autocast=self.autocast,
                    **parallel,
                )
            except NonFiniteError as err:
                self._nonfinite(err, "learner", epoch, step, steps)
                skipped += 1
                continue
            self.consecutive_skips = 0
            record = {
                "phase": "learner",
                "epoch": epoch,
                "step": step,
                "learner_loss": result.learner_loss,
                **({"objective_loss": result.objective_loss} if result.objective_loss is not None else {}),
                **{f"learner_{k}": v for k, v in result.learner_terms.items()},
            }
            record = self._average(record, shard.weight)
            self._emit("learner", epoch, step, steps, record, sums)
        return {f"learner/{k}": v / max(1, steps - skipped) for k, v in sums.items()}

    def _nonfinite(self, err: NonFiniteError, phase: str, epoch: int, step: int, total: int) -> None:
        """Log a step stopped by a NaN/Inf; skip it (``on_nonfinite = "skip"``) or stop the run."""
        self.consecutive_skips += 1
        cap = self.max_consecutive_skips
        if self.on_nonfinite == "stop":
            action, reason = "stop", "on_nonfinite = 'stop'"
        elif self.consecutive_skips > cap:
            action, reason = (
                "stop",
                f"{self.consecutive_skips} batches in a row were non-finite (max_consecutive_skips = {cap})",
            )
        else:
            action, reason = "skip", ""
        record = {
            "phase": "nonfinite",
            "epoch": epoch,
            "step": step,
            "step_phase": phase,
            **err.record(),
            "action": action,
            "consecutive_skips": self.consecutive_skips,
            "message": str(err),
        }
        if self.hooks.log is not None:
            self.hooks.log(record)
        if action == "stop":
            raise NonFiniteStop(err, f"epoch {epoch}, {phase} step {step}", epoch, reason)
        if self.hooks.progress is not None:
            self.hooks.progress(phase, epoch, step, total, record)

    def _emit(self, phase: str, epoch: int, step: int, total: int, record: Record, sums: dict[str, float]) -> None:
        for k, v in record.items():
            if k not in ("phase", "epoch", "step") and isinstance(v, (int, float)):
                sums[k] = sums.get(k, 0.0) + float(v)
        if self.hooks.log is not None:
            self.hooks.log(record)
        if self.hooks.progress is not None:
            self.hooks.progress(phase, epoch, step, total, record)

    # -- the schedule -------------------------------------------------------------------------
    def fit(self) -> list[Record]:
        """Train from ``self.epoch`` (0, or where a loaded checkpoint left off) to ``meta.epochs``."""
        for epoch in range(self.epoch + 1, self.meta.epochs + 1):
            start = time.perf_counter()
            rng = seed_everything(epoch_seed(self.seed, epoch))
            if self.parallel.rank:  # stochastic layers (dropout) draw per rank; the data stream is shared
                torch.manual_seed((epoch_seed(self.seed, epoch) + 104_729 * self.parallel.rank) % 2**63)
            lrs = {"lr/learner": self.learner_lr}
            summary: Record = {"phase": "epoch", "epoch": epoch, **lrs}
            summary.update(self.meta_phase(epoch, rng))
            summary.update(self.learner_phase(epoch, rng))
            with warnings.catch_warnings():
                # The schedules count epochs: an optimizer that took no step this epoch (the loss generator's
                # during warm-up, or with every batch skipped) still moves on, without PyTorch's warning.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                for scheduler in self.schedulers:
                    scheduler.step()
            self.epoch = epoch
            last = epoch == self.meta.epochs
            if self.hooks.evaluate is not None and (last or (self.eval_every and epoch % self.eval_every == 0)):
                summary.update({f"val/{k}": v for k, v in self.hooks.evaluate(epoch).items()})
            summary["seconds"] = time.perf_counter() - start
            for role in ROLES:  # never checkpoint a non-finite state
                try:
                    check_params(getattr(self.problem, role), role)
                except NonFiniteError as err:
                    raise NonFiniteStop(err, f"the end of epoch {epoch}", epoch, "the epoch is not saved") from None
            self.history.append(summary)
            if self.hooks.log is not None:
                self.hooks.log(summary)
            if self.hooks.checkpoint is not None:
                self.hooks.checkpoint(epoch, last)
        return self.history

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        p = self.problem
        return {
            "epoch": self.epoch,
            "learner": p.learner.state_dict(),
            "generator": p.loss_generator.state_dict(),  # the checkpoint's key (format 1)
            "objective": p.objective.state_dict() if p.objective is not None else None,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "history": self.history,
            "guard": {"consecutive_skips": self.consecutive_skips},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = self.problem
        p.learner.load_state_dict(state["learner"])
        p.loss_generator.load_state_dict(state["generator"])
        if p.objective is not None:
            p.objective.load_state_dict(state["objective"])
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"], strict=True):
            sch.load_state_dict(s)
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.consecutive_skips = int(state.get("guard", {}).get("consecutive_skips", 0))
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

    def reschedule(self) -> dict[str, list[float]]:
        """Make restored optimizers and schedulers follow this trainer's config.

        ``load_state_dict`` brings back the learning rates the run was started with; a resume whose config
        sets others (a lower learning rate, say after the NaN guard stopped a run) continues with the new
        base rates and decay, at the point of the schedule the run reached:
        ``lr = base · gamma^(epoch // lr_step)`` (StepLR's closed form).  Returns the changed settings as
        ``{name: [old, new]}`` (names of ``Optimization`` and ``Schedule``: ``learner_lr``, ``objective_lr``,
        ``outer_lr``, ``lr_step``, ``lr_gamma``); nothing is touched when there are none (a plain resume
        stays bit-exact).
        """
        bases = [
            ("learner_lr", self.learner_opt, self.optim.learner_lr),
            ("objective_lr", self.objective_opt, self.optim.objective_lr),
            ("outer_lr", self.outer_opt, self.meta.outer_lr),
        ]
        changes: dict[str, list[float]] = {}
        schedules = []
        for key, opt, base in bases:
            if opt is None:
                continue
            scheduler = self.schedulers[self.optimizers.index(opt)]
            schedules.append((opt, scheduler, float(base)))
            old = scheduler.base_lrs[0]
            if old != base:
                changes[key] = [float(old), float(base)]
            if scheduler.step_size != self.optim.lr_step:
                changes["lr_step"] = [scheduler.step_size, self.optim.lr_step]
            if scheduler.gamma != self.optim.lr_gamma:
                changes["lr_gamma"] = [scheduler.gamma, self.optim.lr_gamma]
        if not changes:
            return {}
        for opt, scheduler, base in schedules:
            scheduler.step_size, scheduler.gamma = self.optim.lr_step, self.optim.lr_gamma
            scheduler.base_lrs = [base] * len(opt.param_groups)
            lr = base * self.optim.lr_gamma ** (scheduler.last_epoch // self.optim.lr_step)
            for group in opt.param_groups:
                group["initial_lr"], group["lr"] = base, lr
            scheduler._last_lr = [lr] * len(opt.param_groups)  # what get_last_lr() reports
        return changes
