"""``metaloss run | eval | fuse | export | plugins | plot | new-plugin``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    plot.add_argument("--out", "-o", help="PNG path (default: RUN_DIR/curves.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"run": _run, "eval": _eval, "fuse": _fuse, "export": _export, "plugins": _plugins, "plot": _plot, "new-plugin": _new_plugin}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("metaloss: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    print(f"metaloss: error: {f'[rank {rank}] ' if rank else ''}{message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    from metaloss.config import ConfigError, load_config
    from metaloss.experiment import RunError, RunInterrupted, run
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
    if args.check:
        print(cfg.to_toml(), end="")
        return EXIT_OK
    if args.nproc != 1:
        return _launch(args, cfg, out)
    from metaloss import distributed

    try:
        summary = run(cfg, out, quiet=args.quiet, resume=bool(args.resume))
    except RunInterrupted as err:  # Ctrl-C: last.pt holds the last completed epoch
        if not distributed.is_main_process():
            return EXIT_INTERRUPTED  # rank 0 prints the resume command
        command = ["metaloss", "run", "--resume", str(err.run_dir)]
        for item in args.overrides if args.resume else []:  # a resume's overrides are not in config.toml
            command += ["--set", item]
        print(f"metaloss: {err}\nresume with:\n  {shlex.join(command)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RunError, PluginError, FileNotFoundError, ValueError, distributed.DistributedError) as err:
        return _fail(str(err))
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


def _launch(args: argparse.Namespace, cfg: object, out: str | None) -> int:
    """``metaloss run --nproc N``: the same command on N local processes through torchrun's launcher."""
    from metaloss import distributed
    from metaloss.experiment import default_run_dir

    if args.nproc < 1:
        return _fail(f"--nproc must be >= 1, got {args.nproc}", EXIT_USAGE)
    if distributed.launched():
        return _fail("--nproc starts processes itself; under torchrun leave it out", EXIT_USAGE)
    if args.resume:
        command = ["run", "--resume", args.resume]
    else:  # named here, so that every rank and the user know it
        out = str(out or default_run_dir(cfg))  # type: ignore[arg-type]
        command = ["run", args.config, "--out", out]
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
