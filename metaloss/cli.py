"""``metaloss run | eval | fuse | export | plugins | plot | new-plugin``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


def _parser() -> argparse.ArgumentParser:
    import metaloss

    parser = argparse.ArgumentParser(
        prog="metaloss",
        description="Learn the loss function of an image-fusion network by meta-learning.",
    )
    parser.add_argument("--version", action="version", version=f"metaloss {metaloss.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train an experiment from a TOML config", description="Train an experiment.")
    run.add_argument("config", nargs="?", help="experiment TOML file (omit with --resume)")
    run.add_argument("--out", "-o", help="run directory (default: runs/<name>-<time>)")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set meta.inner_steps=3 (value read as TOML; repeatable)",
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    run.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train on N local processes (torch.distributed, data parallel; torchrun's launcher); "
        "data.batch_size is per process. For several nodes use torchrun (docs/distributed.md)",
    )

    ev = sub.add_parser("eval", help="score fused images with fusion metrics", description="Score fused images.")
    try:
        from metaloss.metrics import cli as metrics_cli

        metrics_cli.configure_parser(ev)
    except ImportError as err:  # pragma: no cover - only while the metrics package is incomplete
        ev.set_defaults(_eval_error=str(err))

    fuse = sub.add_parser("fuse", help="fuse image pairs with a trained fusion network", description="Fuse image pairs.")
    from metaloss import fuse_cli

    fuse_cli.configure_parser(fuse)
    export = sub.add_parser("export", help="export the fusion network to ONNX", description="Export to ONNX.")
    from metaloss import export as export_cli

    export_cli.configure_parser(export)

    plugins = sub.add_parser("plugins", help="list registered plugins", description="List registered plugins.")
    plugins.add_argument("--json", action="store_true", help="print JSON")

    new = sub.add_parser(
        "new-plugin",
        help="create a plugin package: pyproject with entry points, one plugin of each kind, tests",
        description="Create OUT/metaloss-NAME/: a package with a working fusion network, loss generator, task and "
        "dataset registered as NAME, a test file using metaloss.testing, and an example experiment (docs/plugins.md).",
    )
    new.add_argument("name", metavar="NAME", help="plugin name, e.g. depth: package metaloss-depth, module metaloss_depth")
    new.add_argument("--out", "-o", default=".", help="folder to create metaloss-NAME/ in (default: the current folder)")
    new.add_argument("--force", action="store_true", help="write into an existing non-empty metaloss-NAME/ (overwrites the scaffold's files)")

    plot = sub.add_parser("plot", help="draw the loss curves of a run to a PNG", description="Plot a run's log.")
    plot.add_argument("run_dir", help="a run directory (with log.jsonl)")
    plot.add_argument("--out", "-o", help="PNG path, or a folder to write curves.png in (default: RUN_DIR/curves.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"run": _run, "eval": _eval, "fuse": _fuse, "export": _export, "plugins": _plugins, "plot": _plot, "new-plugin": _new_plugin}[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not as an error Python prints at exit
        return code
    except KeyboardInterrupt:
        print("metaloss: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`metaloss plugins | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the flush at exit fails again
        return EXIT_ERROR
    except OSError as err:  # a file a command could not read or write: one line, not a traceback
        return _fail(_os_error_line(err))


def _os_error_line(err: OSError) -> str:
    """A failed read or write in one line, naming the file where the error does; a full disk says so."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return f"the disk is full: cannot write {err.filename or 'a file'} ({reason})"
    return f"{err.filename}: {reason}" if err.filename else reason


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


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    print(f"metaloss: error: {f'[rank {rank}] ' if rank else ''}{message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    from metaloss.config import ConfigError, load_config
    from metaloss.experiment import RunError, RunInterrupted, default_run_dir, run
    from metaloss.registry import PluginError

    if args.resume:
        if args.config:
            return _fail("give either CONFIG or --resume RUN_DIR, not both", EXIT_USAGE)
        config_path = Path(args.resume) / "config.toml"
        out = args.resume
    else:
        if not args.config:
            return _fail("the run command needs CONFIG (or --resume RUN_DIR)", EXIT_USAGE)
        config_path, out = Path(args.config), args.out
    try:
        cfg = load_config(config_path, args.overrides)
    except ConfigError as err:
        return _fail(str(err), EXIT_USAGE)
    run_dir = Path(out) if out else default_run_dir(cfg)  # named here: checked now, and named in errors
    problem = _unusable_run_dir(run_dir, "--resume" if args.resume else "--out" if out else "run directory")
    if problem:
        return _fail(problem, EXIT_USAGE)
    if args.check:
        print(cfg.to_toml(), end="")
        return EXIT_OK
    if args.nproc != 1:
        return _launch(args, run_dir)
    from metaloss import distributed

    try:
        summary = run(cfg, run_dir, quiet=args.quiet, resume=bool(args.resume))
    except RunInterrupted as err:  # Ctrl-C or SIGTERM: last.pt holds the last completed epoch
        code = EXIT_TERMINATED if err.signal == "SIGTERM" else EXIT_INTERRUPTED
        if not distributed.is_main_process():
            return code  # rank 0 prints the resume command
        command = ["metaloss", "run", "--resume", str(err.run_dir)]  # a resume's changes are in its config.toml
        print(f"metaloss: {err}\nresume with:\n  {shlex.join(command)}", file=sys.stderr)
        return code
    except ConfigError as err:  # found when the data is read (the validation images' size)
        return _fail(str(err), EXIT_USAGE)
    except (RunError, PluginError, FileNotFoundError, ValueError, distributed.DistributedError) as err:
        return _fail(str(err))
    except OSError as err:  # a full disk, a lost mount: checkpoints are replaced atomically, never half-written
        last = run_dir / "checkpoints" / "last.pt"
        resume = f"; {last} holds the last completed epoch: once that is fixed, resume with " + shlex.join(
            ["metaloss", "run", "--resume", str(run_dir)]
        )
        return _fail(_os_error_line(err) + (resume if last.is_file() else ""))
    finally:
        distributed.shutdown()
    if not distributed.is_main_process():
        return EXIT_OK  # rank 0 reports for a distributed run
    metrics = summary.get("metrics", {})
    if not args.quiet:
        print(f"finished {summary['epochs']} epochs in {summary['seconds']:.1f} s")
        for key, value in metrics.items():
            print(f"  {key:24s} {value:.4f}")
    return EXIT_OK


def _launch(args: argparse.Namespace, out: Path) -> int:
    """``metaloss run --nproc N``: the same command on N local processes through torchrun's launcher;
    ``out``: the run directory, named before the start so that every rank and the user know it."""
    from metaloss import distributed

    if args.nproc < 1:
        return _fail(f"--nproc must be >= 1, got {args.nproc}", EXIT_USAGE)
    if distributed.launched():
        return _fail("--nproc starts processes itself; under torchrun leave it out", EXIT_USAGE)
    if args.resume:
        command = ["run", "--resume", args.resume]
    else:
        command = ["run", args.config, "--out", str(out)]
    for item in args.overrides:
        command += ["--set", item]
    if args.quiet:
        command.append("--quiet")
    return distributed.launch(args.nproc, command)


def _eval(args: argparse.Namespace) -> int:
    if getattr(args, "_eval_error", None):
        return _fail(f"metrics are unavailable: {args._eval_error}")
    from metaloss.metrics import cli as metrics_cli

    return metrics_cli.run(args)


def _fuse(args: argparse.Namespace) -> int:
    from metaloss import fuse_cli

    return fuse_cli.run(args)


def _export(args: argparse.Namespace) -> int:
    from metaloss import export as export_cli

    return export_cli.run(args)


def _plugins(args: argparse.Namespace) -> int:
    from metaloss import registry

    found = registry.list_plugins()
    if args.json:
        print(json.dumps({g: [i.as_dict() for i in infos] for g, infos in found.items()}, indent=2))
        return EXIT_OK
    for group, infos in found.items():
        print(f"{registry.GROUPS[group]}:")
        if not infos:
            print("  (none)")
        for info in infos:
            status = f"  ERROR: {info.error}" if info.error else ""
            if info.shared_with:  # the bare name is refused; say which spelling picks this one
                status += f"  AMBIGUOUS: also registered by {', '.join(info.shared_with)}; use name = \"{info.config_name}\""
            print(f"  {info.name:16s} {info.distribution} {info.version}  ({info.value}){status}")
    return EXIT_OK


def _new_plugin(args: argparse.Namespace) -> int:
    from metaloss.scaffold import PluginNames, ScaffoldError, create_plugin

    try:
        names = PluginNames.from_name(args.name)
        root, files = create_plugin(args.name, args.out, force=args.force)
    except ScaffoldError as err:
        return _fail(str(err), EXIT_USAGE)
    except OSError as err:
        return _fail(f"cannot write the plugin package: {err}")
    print(f"created {root}/ (distribution {names.distribution}, module {names.module}, entry points {names.entry!r})")
    for path in files:
        print(f"  {path.relative_to(root)}")
    print("next:")
    print(f"  pip install -e '{root}[test]'     # then `metaloss plugins` lists {names.entry!r} in every group")
    print(f"  pytest {root}")
    print(f"  metaloss run {root / (names.entry + '.toml')}")
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from metaloss.plot import PlotError, plot_run

    try:
        path = plot_run(args.run_dir, args.out)
    except PlotError as err:
        return _fail(str(err))
    print(path)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
