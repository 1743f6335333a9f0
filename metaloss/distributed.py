"""Data-parallel training on ``torch.distributed``: one process per rank, launched by ``torchrun``.

Every rank holds the three networks whole and trains on its own shard of each *global* batch; after
each step every rank holds the same parameters.  Nothing here knows about image fusion.

- **Data.**  Each global batch (``data.batch_size`` x world size samples) is drawn exactly as a single
  process with that batch size draws it (same shared random stream on every rank), then split into
  contiguous per-rank chunks (``metaloss.meta.parallel``, where the engine's side of data parallelism
  lives).  A rank whose chunk is empty (a last, partial batch with fewer samples than ranks) runs a
  stand-in sample with weight 0.
- **Gradients.**  A rank holding ``n_r`` of a global batch's ``N`` samples has weight ``w_r = n_r / N``.
  Every loss is the rank's mean over its samples, so ``sum_r grad(w_r * loss_r)`` is the gradient
  of the global batch's mean.  Each rank scales its losses by ``w_r`` *before* differentiating them
  (exact even when a forward pass communicates, as synchronised batch norm does) and the gradients are
  summed: the learner's and objective's after the backward pass (:meth:`DistributedContext.sum_grads_`),
  each inner gradient of a meta-step *inside* the differentiable update
  (:meth:`DistributedContext.sum_grads`, an all-reduce whose backward is an all-reduce), so every rank
  steps the learner on the global batch's gradient, as one process would; the meta-gradient is then
  the sum of the ranks' meta-gradients.
- **BatchNorm.**  :class:`DistributedBatchNorm` normalises with the global batch's statistics (a
  differentiable all-reduce of per-channel sums), on any backend; :func:`convert_batchnorm` swaps it in.
- **Processes.**  :func:`context` joins the process group that ``torchrun`` describes in the
  environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
  :func:`launch` starts ``metaloss run`` on N local processes through ``torch.distributed.run``.

docs/distributed.md has the launch recipes (one node, several nodes, SLURM) and the reasoning.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import gc
import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

#: environment variables torchrun sets for each worker
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed run cannot start, or a rank reported an error the others must share."""


def launched() -> bool:
    """True in a worker that torchrun started with more than one process in the job."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def is_main_process() -> bool:
    """True unless this is a torchrun worker of rank > 0."""
    return os.environ.get("RANK", "0") in ("0", "")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_process(local_world_size: int) -> int:
    return max(1, cpu_count() // max(1, local_world_size))


# -- the process group ------------------------------------------------------------------------------
@dataclass
class DistributedContext:
    """This process's place in the job and the collectives the trainer uses (it is the trainer's
    ``metaloss.meta.parallel.DataParallel``).

    A context with ``world_size == 1`` (:meth:`single`) is valid and does no communication.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    group: Any = None

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> DistributedContext:
        return cls(device=torch.device(device))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def stand_in(self, flag: bool) -> contextlib.AbstractContextManager[None]:
        """While set, :class:`DistributedBatchNorm` leaves this rank's samples out of the global statistics."""
        return stand_in(flag)

    # -- gradients --------------------------------------------------------------------------------
    def sum_grads(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """``grads -> sum over ranks of grads`` as one differentiable all-reduce (a new list).

        Used on the inner update's gradients (and the objective's look-ahead), whose losses each rank
        scaled by its share of the global batch: with the graph kept, the backward pass of the
        all-reduce is itself an all-reduce, so the second-order meta-gradient flows back to every
        rank's inner batch.  Gradients that are None (unused parameters, the same on every rank) stay
        None.
        """
        present = [g for g in grads if g is not None]
        if not self.enabled or not present:
            return list(grads)
        total = all_reduce_sum(torch.cat([g.reshape(-1) for g in present]), self.group)
        out: list[Tensor | None] = []
        offset = 0
        for g in grads:
            if g is None:
                out.append(None)
                continue
            out.append(total[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return out

    @torch.no_grad()
    def sum_grads_(self, grads: Sequence[Tensor | None]) -> None:
        """In place: ``grads <- sum over ranks of grads`` (one flat all-reduce).  The ranks' losses were
        scaled by their weights before the backward pass, so the sum is the global batch's gradient."""
        present = [g for g in grads if g is not None]
        if not self.enabled or not present:
            return
        flat = torch.cat([g.reshape(-1) for g in present])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for g in present:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def weighted_sum(self, values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
        """``sum over ranks of weights[k] * values[k]`` for each key (the same keys on every rank)."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) * weights[k] for k in keys], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, group=self.group)
        return dict(zip(keys, t.tolist(), strict=True))

    # -- objects ----------------------------------------------------------------------------------
    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self._comm_device)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 alone and hand its result to every rank; when it raises, rank 0 re-raises
        and every other rank raises :class:`DistributedError` with the same message, so that no rank is
        left waiting in a collective."""
        if not self.enabled:
            return fn()
        payload: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                payload = ("ok", fn())
            except Exception as err:
                error, payload = err, ("error", f"rank 0: {err}")
        payload = self.broadcast_object(payload)
        if error is not None:
            raise error
        if payload[0] == "error":
            raise DistributedError(payload[1])
        return payload[1]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the backward pass of an all-reduce (sum) is an all-reduce (sum)
    of the incoming gradients; it goes through ``apply`` again, so it is differentiable to any order."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def all_reduce_sum(tensor: Tensor, group: Any = None) -> Tensor:
    """Sum of ``tensor`` over the ranks, differentiable (the input is left unchanged)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)


_CURRENT: DistributedContext | None = None


def context(device: str = "auto", backend: str = "auto", timeout_s: float = 1800) -> DistributedContext | None:
    """Join the process group torchrun described in the environment (once per process); None when this
    process was not started by torchrun with more than one process.

    ``device``: the config's device; ``"auto"`` or ``"cuda"`` become ``cuda:LOCAL_RANK`` when CUDA is
    available.  ``backend``: ``"auto"`` = NCCL on CUDA, gloo on CPU.  Each rank uses
    ``cpu_count // LOCAL_WORLD_SIZE`` threads unless ``OMP_NUM_THREADS`` is set.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_process(local_world))
    dev = _rank_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise DistributedError(f"distributed.backend = 'nccl' needs a CUDA device; device is {dev}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        _bind_world_defaults_before_init()
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    _CURRENT = DistributedContext(rank, world, local_rank, local_world, dev, backend)
    return _CURRENT


def _rank_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device = {name!r} but CUDA is not available; use device = 'cpu' or 'auto'")
        if dev.index is None:  # one GPU per local rank
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise DistributedError(f"local rank {local_rank} has no GPU: this node has {count}")
            dev = torch.device("cuda", local_rank)
    return dev


def _bind_world_defaults_before_init() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists.

    Its collectives take ``group=group.WORLD`` as a default argument, evaluated when the module is first
    imported, and PyTorch imports it lazily (``torch._dynamo`` pulls it in with the first optimizer).
    Imported after ``init_process_group``, ten functions' defaults hold the default process group for the
    life of the process: ``destroy_process_group`` then cannot free it, and gloo's worker threads
    (``pt_gloo_runloop``) outlive the interpreter.  A worker still releasing a finished all-reduce when
    Python finalises must take the GIL to free the tensor's Python object; ``take_gil`` ends the thread
    with ``pthread_exit``, whose unwinding through the work's (noexcept) destructor calls
    ``std::terminate``: the rank aborts with "terminate called without an active exception" after
    its work is done (seen under load, when that thread is descheduled between finishing the work
    and dropping it).  Imported first, the defaults are ``None`` (the default group at call time).
    """
    import torch.distributed.nn.functional  # noqa: F401


def shutdown() -> None:
    """Leave the process group (if :func:`context` joined one), and check that it was freed: a process
    group that something still references keeps its backend's threads past the interpreter's end
    (see :func:`_bind_world_defaults_before_init`)."""
    global _CURRENT
    if _CURRENT is not None and dist.is_initialized():
        world = weakref.ref(dist.group.WORLD)
        dist.destroy_process_group()
        if world() is not None:
            gc.collect()
        if world() is not None:
            warnings.warn(
                "the default process group is still referenced after destroy_process_group, so its backend's "
                "threads outlive it and can abort the process at exit; keep no reference to dist.group.WORLD "
                "and create process groups through metaloss.distributed.context()",
                RuntimeWarning,
                stacklevel=2,
            )
    _CURRENT = None


# -- stand-in samples -------------------------------------------------------------------------------
_STAND_IN: contextvars.ContextVar[bool] = contextvars.ContextVar("metaloss_stand_in", default=False)


@contextlib.contextmanager
def stand_in(flag: bool = True) -> Iterator[None]:
    """While set, :class:`DistributedBatchNorm` leaves this rank's samples out of the global statistics
    (the rank runs a stand-in sample with weight 0)."""
    token = _STAND_IN.set(flag)
    try:
        yield
    finally:
        _STAND_IN.reset(token)


# -- batch norm over the global batch -----------------------------------------------------------------
class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any number of spatial dims) whose training-mode statistics are those of the global
    batch over all ranks, computed with two differentiable all-reduces (sums, then centred squares).

    Works on gloo (CPU) and NCCL, through ``torch.func.functional_call`` and to any order of
    differentiation; ``torch.nn.SyncBatchNorm`` refuses CPU tensors.  Parameter and buffer names are BatchNorm's,
    so checkpoints load in either.  In eval mode, or in a single process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        keep = 0.0 if _STAND_IN.get() else 1.0
        local_count = keep * (x.numel() // max(1, x.shape[1]))
        sums = all_reduce_sum(torch.cat([x.sum(dims) * keep, x.new_tensor([local_count])]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.reshape(shape)
        var = all_reduce_sum(centred.square().sum(dims) * keep) / count
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                n = float(count)
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / max(n - 1, 1.0)) * factor)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by :class:`DistributedBatchNorm`, sharing
    its parameter and buffer tensors; returns the module (a new one if ``module`` itself is one)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistributedBatchNorm):
        new = DistributedBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


# -- launching ----------------------------------------------------------------------------------------
def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run ``python -m metaloss <module_args>`` on ``nproc`` local processes through torchrun's own
    launcher (``torch.distributed.run``, standalone rendezvous on a free localhost port).

    Returns 0, or 1 after printing which rank failed and how; each rank's own messages (tracebacks,
    ``metaloss: error: ...``) appear above, prefixed by torchrun with the rank.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_process(nproc))
    with tempfile.TemporaryDirectory(prefix="metaloss_torchrun_") as log_dir:  # torchrun's copies of the output
        args = parse_args(
            [
                "--standalone",
                f"--nproc-per-node={nproc}",
                f"--log-dir={log_dir}",
                "--tee=3",
                "--log-line-prefix-template=[rank${rank}]: ",
                "--module",
                "metaloss",
                *module_args,
            ]
        )
        try:
            run(args)
        except ChildFailedError as err:
            failed = [
                f"rank {rank} (local rank {f.local_rank}) failed with "
                + (f"signal {-f.exitcode}" if f.exitcode < 0 else f"exit code {f.exitcode}")
                for rank, f in sorted(err.failures.items())
            ]
            print(
                f"metaloss: error: the distributed run failed: {'; '.join(failed)} (its messages are above)",
                file=sys.stderr,
            )
            return 1
    return 0
