"""From a config to a finished run: build the plugins, train, evaluate, write the run directory.

A run directory holds ``config.toml`` (the resolved config), ``log.jsonl`` (one JSON record per step
and per epoch), ``checkpoints/last.pt`` (and ``checkpoints/epoch_XXX.pt`` with ``checkpoint.every``),
``val_images/epoch_XXX/NAME.png`` (a few fused validation images per evaluation) and ``summary.json``.

Interruptions (docs/reliability.md): every file is written atomically; ``last.pt`` always holds a
consistent state (the initial one, then the state after each completed epoch), so a run killed at any
point continues with ``metaloss run --resume RUN_DIR`` from the start of the epoch it was in, and ends
exactly as an uninterrupted run.  Ctrl-C (SIGINT) raises :class:`RunInterrupted` naming that command.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import metaloss
from metaloss import distributed, registry
from metaloss.checkpoint import CheckpointError, build_plugin, checkpoint_state, read_checkpoint, write_checkpoint
from metaloss.config import ExperimentConfig, PluginSection, check_eval_size, upgrade_keys
from metaloss.data.collate import collate_pairs
from metaloss.data.images import compose, stretch
from metaloss.data.scan import check_labels
from metaloss.meta.guard import ROLES, NonFiniteStop
from metaloss.meta.trainer import AlternatingTrainer, TrainerHooks, seed_everything
from metaloss.problem import FusionProblem
from metaloss.protocols import Task
from metaloss.utils.cuda import bfloat16_problem, configure_cuda
from metaloss.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, naming_the_file
from metaloss.utils.memory import set_allocator_policy
from metaloss.utils.runlock import LOCK_NAME, RunLock, RunLocked


class RunError(RuntimeError):
    """A run cannot start or continue (bad run directory, unusable checkpoint)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run.  ``run_dir``: its directory; ``epoch``: the epoch whose
    completed state ``checkpoints/last.pt`` holds (0: the initial state), from which ``--resume``
    continues; ``signal``: the signal's name."""

    def __init__(self, run_dir: Path, epoch: int, epochs: int, signal: str = "SIGINT"):
        self.run_dir, self.epoch, self.epochs, self.signal = run_dir, epoch, epochs, signal
        super().__init__(
            f"interrupted by {signal}; {run_dir / 'checkpoints' / 'last.pt'} holds the state after epoch {epoch} of "
            f"{epochs}"
        )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it stops a run where Ctrl-C would (what SLURM and
    Kubernetes send before they kill a job)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`_Terminated` (main thread only: elsewhere Python cannot
    install handlers, and the process's own handling is left as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_device(name: str) -> torch.device:
    """The device ``device = name`` means here; a CUDA device that this machine lacks is refused now,
    naming the key, rather than by torch when the first network is moved to it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device = {name!r} but CUDA is not available; use device = 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(f"device = {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


#: ``dtype`` of a config -> (the networks' dtype, the autocast dtype of learner and objective steps)
PRECISION: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "float32": (torch.float32, None),
    "float64": (torch.float64, None),
    "bfloat16": (torch.float32, torch.bfloat16),
}


def check_precision(dtype: str, device: torch.device) -> None:
    """Refuse ``dtype = "bfloat16"`` where it cannot run; ``device = "auto"`` is known only now."""
    problem = bfloat16_problem(device) if PRECISION[dtype][1] is torch.bfloat16 else None
    if problem is not None:
        raise RunError(f"dtype = {dtype!r}: {problem}; use dtype = 'float32'")


def _build(group: str, section: PluginSection, **kwargs: Any) -> Any:
    """The plugin ``section`` names, built by ``metaloss.checkpoint.build_plugin``."""
    return build_plugin(group, {"name": section.name, **section.options}, **kwargs)


def build_dataset(section: PluginSection, split: str) -> Dataset:
    return _build("datasets", section, split=split)


def build_task(section: PluginSection, dataset: Dataset) -> nn.Module:
    """Options left unset (None) are filled from the dataset (``metaloss.checkpoint.build_with``)."""
    return _build("tasks", section, dataset=dataset)


def build_datasets(cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """The training and validation sets, fitted to the objective's targets and their labels scanned
    (:func:`metaloss.data.scan.check_labels`): problems with the data end a run before it starts."""
    targets = getattr(registry.load("tasks", cfg.objective.name), "targets", None)
    train_set = build_dataset(cfg.data, "train")
    check_labels(train_set, targets, f"data ({cfg.data.name}, train split)")
    val_section = cfg.val_data or cfg.data
    val_set = build_dataset(val_section, "val")
    check_labels(val_set, targets, f"{'val_data' if cfg.val_data else 'data'} ({val_section.name}, val split)")
    return train_set, val_set


@dataclass
class Experiment:
    config: ExperimentConfig
    problem: FusionProblem
    train_set: Dataset
    val_set: Dataset
    device: torch.device


def build_experiment(cfg: ExperimentConfig, device: torch.device | None = None) -> Experiment:
    """``device``: where to build (a rank's own GPU, say); default: ``cfg.device`` resolved."""
    device = device if device is not None else resolve_device(cfg.device)
    check_precision(cfg.dtype, device)
    dtype = PRECISION[cfg.dtype][0]
    set_allocator_policy(cfg.performance.allocator)
    if device.type == "cuda":
        configure_cuda(cfg.deterministic)
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    train_set, val_set = build_datasets(cfg)
    if cfg.eval.metrics and len(val_set):  # type: ignore[arg-type]  # too small for the metrics: found now, not after an epoch
        check_eval_size(cfg, *val_set[0]["ir"].shape[-2:])
    learner = _build("fusion", cfg.learner)
    loss_generator = _build("loss_generators", cfg.loss_generator)
    objective = build_task(cfg.objective, train_set)
    problem = FusionProblem(
        learner,
        loss_generator,
        objective,
        alpha=cfg.loss.alpha,
        weight_form=cfg.loss.weight_form,
        intensity_norm=cfg.loss.intensity_norm,
        gradient_target=cfg.loss.gradient_target,
        ssim_weight=cfg.loss.ssim_weight,
        objective_weight=cfg.loss.objective_weight,
        crop_size=cfg.data.crop_size,
        task_size=cfg.data.task_size,
        task_from_crop=cfg.data.task_from_crop,
        swap_modalities=cfg.data.swap_modalities,
        device=device,
        dtype=dtype,
        recompute_generator=cfg.performance.recompute_generator,
        recompute_outer=cfg.performance.recompute_outer,
        meta_gradient_method=cfg.performance.meta_gradient,
    ).to(device=device, dtype=dtype)
    if cfg.meta.meta_steps:  # found now, not at the first meta-step
        problem.check_horizon(cfg.meta.horizon)
    return Experiment(cfg, problem, train_set, val_set, device)


# -- evaluation ---------------------------------------------------------------------------------------
def _val_batches(exp: Experiment) -> Iterator[dict[str, Any]]:
    n = len(exp.val_set)  # type: ignore[arg-type]
    k = exp.config.eval.num_images or n
    subset = Subset(exp.val_set, list(range(min(k, n))))
    yield from DataLoader(subset, batch_size=1, collate_fn=collate_pairs)


@torch.no_grad()
def evaluate(exp: Experiment, image_dir: Path | None = None) -> dict[str, float]:
    """Fuse the validation pairs; score the fused images (fusion metrics) and the task on them.  The
    first ``eval.save_images`` fused images go to ``image_dir`` as ``NAME.png``, to look at."""
    from metaloss import metrics as fusion_metrics

    problem, cfg = exp.problem, exp.config
    task = problem.objective
    task.eval()
    evaluator = cast(Task, task).evaluator()
    scores: dict[str, list[float]] = {}
    saved = 0
    for batch in _val_batches(exp):
        ir, vi = batch["ir"].to(exp.device), batch["vi"].to(exp.device)
        fused = problem.fuse(ir, vi).to(ir.dtype)  # metrics in the images' own type (dtype = float64 runs)
        if cfg.eval.stretch:  # as `metaloss fuse` writes this run's images
            fused = torch.stack([stretch(f) for f in fused])
        if image_dir is not None:
            saved += save_fused(fused, batch["name"], image_dir, cfg.eval.save_images - saved)
        if cfg.eval.metrics:
            values = fusion_metrics.evaluate(
                (fused * 255).round(),
                (ir * 255).round(),
                (vi * 255).round(),
                profile=cfg.eval.profile,
                metrics=cfg.eval.metrics,
            )
            for name, v in values.items():
                scores.setdefault(name, []).extend(v.double().cpu().tolist())
        task_batch = problem.prepare_batch(batch, torch.Generator(), augment=False)
        task_fused = problem.fuse(task_batch["task_ir"], task_batch["task_vi"])
        evaluator.update(task(task_fused), task_batch)
    task.train()
    out = {f"fusion/{k}": sum(v) / len(v) for k, v in scores.items() if v}
    out.update({f"task/{k}": v for k, v in evaluator.compute().items()})
    return out


def save_fused(fused: torch.Tensor, names: list[str], folder: Path, limit: int) -> int:
    """Up to ``limit`` (>= 0) of the fused images ``[B, 1, H, W]`` as 8-bit ``folder/NAME.png``
    (atomically); the number written."""
    import cv2

    count = min(limit, len(names))
    for image, name in zip(fused[:count], names[:count], strict=True):
        ok, data = cv2.imencode(".png", compose(image, None))
        if not ok:
            raise RunError(f"cannot encode the fused validation image {name!r} as PNG")
        file_name = name if name.lower().endswith(".png") else f"{name}.png"  # synthetic scenes' names end so
        atomic_write_bytes(folder / file_name, data.tobytes())
    return count


# -- the run directory ----------------------------------------------------------------------------------
class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def val_images(self, epoch: int) -> Path:
        """Where the fused validation images of the evaluation after ``epoch`` go."""
        return self.path / "val_images" / f"epoch_{epoch:03d}"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    def check_new(self) -> None:
        """A new run goes into a missing or empty directory (its own lock file aside)."""
        if self.path.exists() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise RunError(f"run directory {self.path} already exists and is not empty; use --resume or another --out")

    def lock(self) -> RunLock:
        """Hold the directory for this process (one writer per run; utils/runlock.py)."""
        try:
            return RunLock(self.path).acquire()
        except RunLocked as err:
            raise RunError(f"{err}; a run directory has one writer at a time (wait for it, or stop it first)") from None

    def create(self, cfg: ExperimentConfig, resume: bool = False) -> None:
        if not resume:  # config.toml first: from then on the directory can be resumed
            self.check_new()
            atomic_write_text(self.path / "config.toml", cfg.to_toml())
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if resume:
            self.repair()

    def update_config(self, cfg: ExperimentConfig) -> None:
        """A resume changed the config: ``config.toml`` holds what the run continues with."""
        atomic_write_text(self.path / "config.toml", cfg.to_toml())

    def repair(self) -> None:
        """After a crash: remove temporary files of interrupted atomic writes, and a last log line cut
        off mid-write (so that appended records stay one per line)."""
        for folder in (self.path, self.checkpoints):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if self.log_path.is_file():
            data = self.log_path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.log_path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n"
        with naming_the_file(self.log_path), self.log_path.open("a", encoding="utf-8") as f:
            f.write(line)

    def save_checkpoint(self, state: dict[str, Any], epoch: int, every: int) -> None:
        """``epoch_XXX.pt`` (every ``every`` epochs), then ``last.pt``: ``last.pt`` changes last, so a
        crash between the two leaves it at the previous epoch, which a resume then repeats."""
        if every and epoch and epoch % every == 0:
            write_checkpoint(self.checkpoints / f"epoch_{epoch:03d}.pt", state)
        write_checkpoint(self.checkpoints / "last.pt", state)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", summary)


def default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _load_for_resume(path: Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        epochs = sorted(path.parent.glob("epoch_*.pt"))
        if not path.is_file() or not epochs:
            raise RunError(str(err)) from err
        raise RunError(f"{err}\nan earlier state is in {epochs[-1]}: copy it to {path} to resume from it") from err


def _saved_config(saved: Any) -> dict[str, Any]:
    """A checkpoint's config with the keys of this version (``config.upgrade_keys``); {} if unreadable."""
    if not isinstance(saved, dict):
        return {}
    try:
        return upgrade_keys(saved)[0]
    except ValueError:
        return saved


def _config_differences(saved: Any, cfg: ExperimentConfig) -> str:
    """The network sections in which a checkpoint's config differs from ``cfg`` ("" if none or unknown)."""
    saved = _saved_config(saved)
    if not saved:
        return ""
    now = cfg.model_dump(mode="json")
    parts = [
        f"it was written with {key} = {saved.get(key)}, this config has {key} = {now.get(key)}"
        for key in ("learner", "loss_generator", "objective")
        if saved.get(key) != now.get(key)
    ]
    return "; ".join(parts)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"learner_lr": 1e-3}}`` -> ``{"optim.learner_lr": 1e-3}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


#: The config key of each setting ``AlternatingTrainer.reschedule`` reports.
_RESCHEDULED_KEYS = {
    "learner_lr": "optim.learner_lr",
    "objective_lr": "optim.objective_lr",
    "outer_lr": "meta.outer_lr",
    "lr_step": "optim.lr_step",
    "lr_gamma": "optim.lr_gamma",
}


def _apply_config_changes(
    saved: Any, cfg: ExperimentConfig, trainer: AlternatingTrainer, run_dir: RunDirectory, quiet: bool
) -> None:
    """A resume with a changed config (``--resume RUN --set KEY=VALUE``): the restored learning rates and
    schedule take the new values (:meth:`AlternatingTrainer.reschedule`), every changed key is logged
    (``"phase": "config_change"``) and written to the run's ``config.toml``, and the user is told."""
    applied = {_RESCHEDULED_KEYS[name]: change for name, change in trainer.reschedule().items()}
    before, now = _flat(_saved_config(saved)), _flat(cfg.model_dump(mode="json"))
    changes = {k: [before.get(k), v] for k, v in now.items() if k in before and before[k] != v}
    changes.update(applied)
    if not changes:
        return
    run_dir.log({"phase": "config_change", "epoch": trainer.epoch, "changes": changes, "applied": sorted(applied)})
    run_dir.update_config(cfg)
    if not quiet:
        lines = [
            f"  {k}: {old} -> {new}" + (" (applied to the restored optimizer and schedule)" if k in applied else "")
            for k, (old, new) in sorted(changes.items())
        ]
        print("resuming with a changed config:\n" + "\n".join(lines), file=sys.stderr)


class _Progress:
    """One tqdm bar over every step of the run, described by epoch and phase."""

    def __init__(self, cfg: ExperimentConfig, steps_per_epoch: int, start_epoch: int, quiet: bool):
        self.cfg, self.quiet = cfg, quiet
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            remaining = (cfg.meta.epochs - start_epoch) * steps_per_epoch
            self.bar = tqdm(total=remaining, unit="step", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, phase: str, epoch: int, step: int, total: int, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"epoch {epoch}/{self.cfg.meta.epochs} {phase} {step}/{total}")
        keys = ("inner_loss", "outer_loss") if phase == "meta" else ("learner_loss", "objective_loss")
        self.bar.set_postfix({k.split("_")[0]: f"{record[k]:.4g}" for k in keys if k in record}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    *,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out``; returns the summary (also in ``summary.json``).

    In a process that torchrun started (``WORLD_SIZE`` > 1) this is one rank of a data-parallel run
    (``metaloss.distributed``, docs/distributed.md): rank 0 names the run directory, reads the
    checkpoint to resume from and hands it to every rank, and alone evaluates and writes the directory.
    """
    parallel = distributed.context(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    main = parallel is None or parallel.is_main
    if parallel is not None:  # the default name holds the time: rank 0's choice is everyone's
        out = parallel.broadcast_object(str(out or default_run_dir(cfg)))
    run_dir = RunDirectory(out or default_run_dir(cfg)) if main else _NonWritingRunDirectory(out)  # type: ignore[arg-type]

    held: list[RunLock] = []
    made: list[Path] = []  # folders the lock created, removed again if the run leaves them empty

    def take_directory() -> None:  # before reading or writing anything in it
        if not resume:
            run_dir.check_new()  # first: no lock file is left in a folder the run may not use
        elif not run_dir.path.is_dir():
            raise RunError(
                f"no run directory at {run_dir.path} to resume (no checkpoint at {run_dir.checkpoints / 'last.pt'})"
            )
        made.extend(p for p in (run_dir.path, *run_dir.path.parents) if not p.exists())
        held.append(run_dir.lock())

    if parallel is not None:
        parallel.on_main(take_directory)
    else:
        take_directory()
    try:
        with _sigterm_as_interrupt():
            return _train(cfg, run_dir, parallel, quiet=quiet, resume=resume)
    finally:
        for lock in held:
            lock.release()
        for folder in made:  # deepest first: a run that failed before writing leaves nothing behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def _train(
    cfg: ExperimentConfig,
    run_dir: RunDirectory,
    parallel: distributed.DistributedContext | None,
    *,
    quiet: bool,
    resume: bool,
) -> dict[str, Any]:
    """:func:`run` once the run directory is held."""
    main = parallel is None or parallel.is_main

    def resume_state() -> dict[str, Any] | None:
        last_pt = run_dir.checkpoints / "last.pt"
        # a run directory with its config but no checkpoint yet was stopped before its first write of
        # last.pt: it starts again from the beginning
        if last_pt.is_file() or not (run_dir.path / "config.toml").is_file():
            return _load_for_resume(last_pt)
        return None

    state = None
    if resume:  # rank 0 reads the checkpoint; every rank resumes from that one state
        state = parallel.on_main(resume_state) if parallel is not None else resume_state()
    exp = build_experiment(cfg, parallel.device if parallel is not None else None)
    if parallel is not None and cfg.distributed.sync_batchnorm:
        for role in ROLES:
            distributed.convert_batchnorm(getattr(exp.problem, role))
    if parallel is not None:
        parallel.on_main(lambda: run_dir.create(cfg, resume=resume))
    else:
        run_dir.create(cfg, resume=resume)
    trainer = AlternatingTrainer(
        exp.problem,
        exp.train_set,
        cfg.meta,
        cfg.optim,
        batch_size=cfg.data.batch_size,
        collate_fn=collate_pairs,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        eval_every=cfg.eval.every,
        checkpoint_every=cfg.checkpoint.every,
        guard=cfg.guard,
        parallel=parallel,
        autocast=PRECISION[cfg.dtype][1],
    )
    if state is not None:
        try:
            trainer.load_state_dict(state["trainer"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            differences = _config_differences(state.get("config"), cfg)
            raise RunError(
                f"checkpoint {run_dir.checkpoints / 'last.pt'} does not fit this config"
                + (f" ({differences})" if differences else "")
                + f": {err}"
            ) from err
        _apply_config_changes(state.get("config"), cfg, trainer, run_dir, quiet or not main)
    n_train = len(exp.train_set)  # type: ignore[arg-type]
    learner_steps = cfg.meta.learner_steps or math.ceil(n_train / trainer.global_batch_size)
    progress = _Progress(cfg, cfg.meta.meta_steps + learner_steps, trainer.epoch, quiet or not main)

    saved = {"epoch": trainer.epoch}  # the epoch whose state checkpoints/last.pt holds

    def checkpoint(epoch: int, is_last: bool) -> None:
        run_dir.save_checkpoint(
            checkpoint_state(cfg.model_dump(mode="json"), trainer.state_dict(), world_size=trainer.parallel.world_size),
            epoch,
            cfg.checkpoint.every,
        )
        saved["epoch"] = epoch

    trainer.hooks = TrainerHooks(
        prepare_batch=exp.problem.prepare_batch,
        log=run_dir.log,
        progress=progress,
        evaluate=(lambda epoch: evaluate(exp, run_dir.val_images(epoch))) if main else None,  # rank 0 alone
        checkpoint=checkpoint,
    )
    if state is None:
        run_dir.log({"phase": "start", "config": cfg.name, **_environment(), **_parallel_info(trainer)})
    if resume:  # records of the epoch that was cut short are repeated after this one
        run_dir.log({"phase": "resume", "epoch": trainer.epoch})
    start = time.perf_counter()
    try:
        if state is None:
            checkpoint(0, False)  # the initial state: a resume from here ends exactly as a full run
        history = trainer.fit()
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, _Terminated) else "SIGINT"
        run_dir.log({"phase": "interrupted", "signal": name, "epoch": trainer.epoch, "saved_epoch": saved["epoch"]})
        raise RunInterrupted(run_dir.path, saved["epoch"], cfg.meta.epochs, name) from None
    except NonFiniteStop as err:
        raise RunError(
            f"{err}.\n{run_dir.checkpoints / 'last.pt'} holds the last good state (epoch {saved['epoch']}); "
            f"the record is in {run_dir.log_path}.  To continue, e.g. with guard.on_nonfinite = 'skip' or "
            f"a lower learning rate: metaloss run --resume {run_dir.path} --set KEY=VALUE"
        ) from err
    finally:
        progress.close()
    final = history[-1] if history else {}
    summary = {
        "name": cfg.name,
        "epochs": trainer.epoch,
        "seconds": round(time.perf_counter() - start, 3),
        "loss_weight_form": cfg.loss.weight_form,
        "parameters": {role: _count(getattr(exp.problem, role)) for role in ROLES},
        "metrics": {k[4:]: v for k, v in final.items() if k.startswith("val/")},
        "final": {k: v for k, v in final.items() if not k.startswith("val/")},
        "environment": _environment(),
        "distributed": _parallel_info(trainer),
    }
    run_dir.write_summary(summary)
    return summary


class _NonWritingRunDirectory(RunDirectory):
    """The run directory as ranks other than 0 of a distributed run hold it: rank 0 writes for all."""

    def create(self, cfg: ExperimentConfig, resume: bool = False) -> None:
        pass

    def repair(self) -> None:
        pass

    def update_config(self, cfg: ExperimentConfig) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any], epoch: int, every: int) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass


def _parallel_info(trainer: AlternatingTrainer) -> dict[str, Any]:
    p = trainer.parallel
    return {
        "world_size": p.world_size,
        "backend": getattr(p, "backend", None),
        "global_batch_size": trainer.global_batch_size,
    }


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _environment() -> dict[str, Any]:
    return {
        "metaloss": metaloss.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "pid": os.getpid(),
    }
