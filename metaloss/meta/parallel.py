"""Data parallelism as the engine sees it: each rank's share of a global batch, and sums over the ranks.

The engine holds no process group.  ``AlternatingTrainer(parallel=...)`` takes any object with the
:class:`DataParallel` interface (``metaloss.distributed.DistributedContext`` is the one that
communicates); without one the trainer is a single process (:class:`SingleProcess`).

Every rank draws the same global batches; :class:`ShardedBatches` gives rank r its contiguous chunk of
each, tagged so that :class:`TaggedCollate` can weigh the chunk by its share of the global batch
(:class:`Shard`).  A rank whose chunk is empty runs a stand-in sample with weight 0, inside
``parallel.stand_in(True)`` (:class:`StandInProblem`) so that it stays out of global batch statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor
from torch.utils.data import Dataset, Sampler

T = TypeVar("T")

__all__ = [
    "DataParallel",
    "Shard",
    "ShardedBatches",
    "SingleProcess",
    "StandInProblem",
    "Tagged",
    "TaggedCollate",
    "shard_indices",
]


@runtime_checkable
class DataParallel(Protocol):
    """This process's rank among ``world_size`` and the collectives the trainer needs.

    ``sum_grads(grads)``: the sum over ranks as a new list, differentiable (used inside the inner
    update); ``sum_grads_(grads)``: the same in place, after a backward pass; ``weighted_sum(values,
    weights)``: ``sum over ranks of weights[k] * values[k]`` per key (logged losses);
    ``stand_in(flag)``: a context in which this rank's samples are stand-ins (weight 0).
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def sum_grads(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]: ...

    def sum_grads_(self, grads: Sequence[Tensor | None]) -> None: ...

    def weighted_sum(self, values: dict[str, float], weights: dict[str, float]) -> dict[str, float]: ...

    def stand_in(self, flag: bool) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class SingleProcess:
    """One process: no communication."""

    rank: int = 0
    world_size: int = 1

    def sum_grads(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        return list(grads)

    def sum_grads_(self, grads: Sequence[Tensor | None]) -> None:
        return None

    def weighted_sum(self, values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
        return dict(values)

    def stand_in(self, flag: bool) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


def shard_indices(indices: Sequence[T], rank: int, world_size: int) -> tuple[list[T], int]:
    """Rank ``rank``'s contiguous chunk of a global batch and how many real samples it holds.

    Chunks differ in size by at most one; a full batch of ``b * world_size`` gives each rank ``b``
    consecutive samples.  An empty chunk is returned as ``[indices[0]], 0``: a stand-in sample that
    lets the rank take part in every collective, with weight 0.
    """
    n, w, r = len(indices), world_size, rank
    start = r * (n // w) + min(r, n % w)
    size = n // w + (1 if r < n % w else 0)
    chunk = list(indices[start : start + size])
    if not chunk:
        return [indices[0]], 0
    return chunk, size


class ShardedBatches(Sampler[list[tuple[int, int, int]]]):
    """Wraps a sampler of global batches (lists of dataset indices); yields this rank's chunk of each as
    ``(index, real, global_size)`` triples for :class:`Tagged` (``real`` = 0 for a stand-in sample).

    The wrapped sampler draws from the same generator on every rank, so all ranks agree on the batches.
    """

    def __init__(self, batches: Sampler[list[int]] | Sequence[list[int]], parallel: DataParallel | None = None):
        self.batches, self.parallel = batches, parallel or SingleProcess()

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.batches:
            chunk, real = shard_indices(list(batch), self.parallel.rank, self.parallel.world_size)
            yield [(i, int(k < real), len(batch)) for k, i in enumerate(chunk)]


class Tagged(Dataset):
    """``dataset[(index, real, global_size)] -> (dataset[index], real, global_size)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Any, int, int]:
        index, real, size = key
        return self.dataset[index], real, size


@dataclass
class Shard:
    """A rank's part of a global batch: the collated ``batch`` and its ``weight`` = real samples / global
    batch size (0 for a stand-in)."""

    batch: Any
    weight: float


class TaggedCollate:
    """Collates the samples of :class:`Tagged` into a :class:`Shard`."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None):
        if collate_fn is None:
            from torch.utils.data import default_collate

            collate_fn = default_collate
        self.collate_fn = collate_fn

    def __call__(self, items: list[tuple[Any, int, int]]) -> Shard:
        real = sum(r for _, r, _ in items)
        return Shard(self.collate_fn([s for s, _, _ in items]), real / items[0][2])


class StandInProblem:
    """Forwards to a ``MetaProblem``; runs each loss on a stand-in batch under ``parallel.stand_in(True)``.

    ``stand_ins``: the batch objects (compared by identity) that are stand-ins on this rank.
    """

    def __init__(self, problem: Any, stand_ins: Sequence[Any], parallel: DataParallel):
        self._problem, self._stand_ins, self._parallel = problem, list(stand_ins), parallel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._problem, name)

    def _flag(self, batch: Any) -> AbstractContextManager[None]:
        return self._parallel.stand_in(any(batch is b for b in self._stand_ins))

    def inner_loss(self, learner_params: Any, batch: Any) -> Any:
        with self._flag(batch):
            return self._problem.inner_loss(learner_params, batch)

    def objective_loss(self, objective_params: Any, learner_params: Any, batch: Any) -> Tensor:
        with self._flag(batch):
            return self._problem.objective_loss(objective_params, learner_params, batch)

    def outer_loss(self, learner_params: Any, objective_params: Any, batch: Any) -> Tensor:
        with self._flag(batch):
            return self._problem.outer_loss(learner_params, objective_params, batch)

    def optimum_outer_loss(self, objective_params: Any, batch: Any) -> Tensor:
        with self._flag(batch):
            return self._problem.optimum_outer_loss(objective_params, batch)

    def output_outer_loss(self, learner_params: Any, objective_params: Any, batch: Any, step: float) -> Tensor:
        with self._flag(batch):
            return self._problem.output_outer_loss(learner_params, objective_params, batch, step)
