"""``metaloss plot RUN_DIR``: the loss curves of a run as a PNG (``metaloss.plot``)."""

from __future__ import annotations

import argparse

from metaloss.cli.errors import EXIT_OK, fail


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (with log.jsonl)")
    parser.add_argument(
        "--out", "-o", help="PNG path, or a folder to write curves.png in (default: RUN_DIR/curves.png)"
    )


def run(args: argparse.Namespace) -> int:
    from metaloss.plot import PlotError, plot_run

    try:
        path = plot_run(args.run_dir, args.out)
    except PlotError as err:
        return fail(str(err))
    print(path)
    return EXIT_OK
