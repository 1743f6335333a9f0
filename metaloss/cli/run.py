"""``metaloss run CONFIG | --resume RUN_DIR``: train an experiment (``--nproc N``: on N local processes)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from metaloss.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, fail, os_error_line

if TYPE_CHECKING:
    from metaloss.config import ExperimentConfig


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="experiment TOML file (omit with --resume)")
    parser.add_argument("--out", "-o", help="run directory (default: runs/<name>-<time>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set meta.inner_steps=3 (value read as TOML; repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar (the final metrics are still printed)"
    )
    parser.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N local processes (torch.distributed, data parallel; torchrun's launcher); "
        "data.batch_size is per process. For several nodes use torchrun (docs/distributed.md)",
    )


def _unusable_run_dir(path: Path, option: str) -> str | None:
    """Why the run directory ``path`` cannot be made or written (a file in the way, no permission), or
    None; checked before any work, where a run used to fail with a traceback after building everything."""
    if path.exists() and not path.is_dir():
        return f"{option} {path}: is a file, not a folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{option} {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: no permission to write in {existing}"
    return None


def run(args: argparse.Namespace) -> int:
    from metaloss.config import ConfigError, load_config
    from metaloss.experiment import RunError, RunInterrupted, default_run_dir
    from metaloss.experiment import run as run_experiment
    from metaloss.registry import PluginError

    if args.resume:
        if args.config:
            return fail("give either CONFIG or --resume RUN_DIR, not both", EXIT_USAGE)
        config_path = Path(args.resume) / "config.toml"
        out = args.resume
    else:
        if not args.config:
            return fail("the run command needs CONFIG (or --resume RUN_DIR)", EXIT_USAGE)
        config_path, out = Path(args.config), args.out
    try:
        cfg = load_config(config_path, args.overrides)
    except ConfigError as err:
        return fail(str(err), EXIT_USAGE)
    run_dir = Path(out) if out else default_run_dir(cfg)  # named here: checked now, and named in errors
    problem = _unusable_run_dir(run_dir, "--resume" if args.resume else "--out" if out else "run directory")
    if problem:
        return fail(problem, EXIT_USAGE)
    if args.check:
        print(cfg.to_toml(), end="")
        return _check_data(cfg)
    if args.nproc != 1:
        return _launch(args, run_dir)
    from metaloss import distributed

    try:
        summary = run_experiment(cfg, run_dir, quiet=args.quiet, resume=bool(args.resume))
    except RunInterrupted as err:  # Ctrl-C or SIGTERM: last.pt holds the last completed epoch
        code = EXIT_TERMINATED if err.signal == "SIGTERM" else EXIT_INTERRUPTED
        if not distributed.is_main_process():
            return code  # rank 0 prints the resume command
        command = ["metaloss", "run", "--resume", str(err.run_dir)]  # a resume's changes are in its config.toml
        print(f"metaloss: {err}\nresume with:\n  {shlex.join(command)}", file=sys.stderr)
        return code
    except ConfigError as err:  # found when the data is read (the validation images' size)
        return fail(str(err), EXIT_USAGE)
    except (RunError, PluginError, FileNotFoundError, ValueError, distributed.DistributedError) as err:
        return fail(str(err))
    except OSError as err:  # a full disk, a lost mount: checkpoints are replaced atomically, never half-written
        last = run_dir / "checkpoints" / "last.pt"
        resume = f"; {last} holds the last completed epoch: once that is fixed, resume with " + shlex.join(
            ["metaloss", "run", "--resume", str(run_dir)]
        )
        return fail(os_error_line(err) + (resume if last.is_file() else ""))
    finally:
        distributed.shutdown()
    if not distributed.is_main_process():
        return EXIT_OK  # rank 0 reports for a distributed run
    print(f"finished {summary['epochs']} epochs in {summary['seconds']:.1f} s")
    for key, value in summary.get("metrics", {}).items():
        print(f"  {key:24s} {value:.4f}")
    print(results_line(run_dir))
    return EXIT_OK


def results_line(run_dir: Path) -> str:
    """Where a finished run's results are, named as they exist: its summary, log, checkpoints and
    fused validation images, and the commands that use them."""
    parts = [
        name for name in ("summary.json", "log.jsonl", "checkpoints/last.pt", "val_images") if (run_dir / name).exists()
    ]
    quoted = shlex.quote(str(run_dir))
    return (
        f"results in {run_dir}: {', '.join(parts)}\n"
        f"  curves: metaloss plot {quoted}   fuse: metaloss fuse --checkpoint {quoted} --a ... --b ... -o ..."
    )


def _check_data(cfg: ExperimentConfig) -> int:
    """``--check``: build the datasets and scan their labels as a run would before its first step; the
    pair counts on stderr (stdout holds the config), or the problems found."""
    from metaloss.experiment import build_datasets
    from metaloss.registry import PluginError

    try:
        train_set, val_set = build_datasets(cfg)
    except (PluginError, FileNotFoundError, ValueError) as err:
        return fail(str(err))
    keys = getattr(train_set, "label_keys", None)
    labels = f"; labels: {', '.join(keys) or 'none'}" if keys is not None else ""
    print(f"data: {len(train_set)} training pairs, {len(val_set)} validation pairs{labels}", file=sys.stderr)  # type: ignore[arg-type]
    return EXIT_OK


def _launch(args: argparse.Namespace, out: Path) -> int:
    """``metaloss run --nproc N``: the same command on N local processes through torchrun's launcher;
    ``out``: the run directory, named before the start so that every rank and the user know it."""
    from metaloss import distributed

    if args.nproc < 1:
        return fail(f"--nproc must be >= 1, got {args.nproc}", EXIT_USAGE)
    if distributed.launched():
        return fail("--nproc starts processes itself; under torchrun leave it out", EXIT_USAGE)
    if args.resume:
        command = ["run", "--resume", args.resume]
    else:
        command = ["run", args.config, "--out", str(out)]
    for item in args.overrides:
        command += ["--set", item]
    if args.quiet:
        command.append("--quiet")
    return distributed.launch(args.nproc, command)
