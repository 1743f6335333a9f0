"""``metaloss plot RUN_DIR [RUN_DIR ...]``: the training curves of runs as a PNG (``metaloss.plot``)."""

from __future__ import annotations

import argparse

from metaloss.cli.errors import EXIT_OK, fail


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with log.jsonl) to compare")
    parser.add_argument(
        "--out",
        "-o",
        help="PNG path, or a folder to write curves.png in (default for one run: RUN_DIR/curves.png; "
        "several runs need it)",
    )


def run(args: argparse.Namespace) -> int:
    from metaloss.plot import PlotError, plot_runs

    try:
        path = plot_runs(args.run_dirs, args.out)
    except PlotError as err:
        return fail(str(err))
    print(path)
    return EXIT_OK
