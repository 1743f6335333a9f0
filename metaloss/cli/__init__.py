"""``metaloss run | eval | fuse | export | plugins | new-plugin | plot``.

One module of this package per command, each with ``configure_parser(parser)`` (its options) and
``run(args) -> int`` (an exit status of :mod:`metaloss.cli.errors`, errors reported with its
``fail``).  The modules are imported when the parser is built, not with ``metaloss.cli``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from metaloss.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, fail, os_error_line

__all__ = ["COMMANDS", "main"]

#: command -> (module in metaloss.cli, help in the command list, description in the command's help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("run", "train an experiment from a TOML config", "Train an experiment."),
    "eval": ("eval", "score fused images with fusion metrics", "Score fused images."),
    "fuse": ("fuse", "fuse image pairs with a trained fusion network", "Fuse image pairs."),
    "export": ("export", "export the fusion network to ONNX", "Export to ONNX."),
    "plugins": ("plugins", "list registered plugins", "List registered plugins."),
    "new-plugin": (
        "new_plugin",
        "create a plugin package: pyproject with entry points, one plugin of each kind, tests",
        "Create OUT/metaloss-NAME/: a package with a working fusion network, loss generator, task and "
        "dataset registered as NAME, a test file using metaloss.testing, and an example experiment (docs/plugins.md).",
    ),
    "plot": ("plot", "draw the loss curves of a run to a PNG", "Plot a run's log."),
}


def _parser() -> argparse.ArgumentParser:
    import metaloss

    parser = argparse.ArgumentParser(
        prog="metaloss",
        description="Learn the loss function of an image-fusion network by meta-learning.",
    )
    parser.add_argument("--version", action="version", version=f"metaloss {metaloss.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text, description) in COMMANDS.items():
        module = importlib.import_module(f"metaloss.cli.{module_name}")
        command = sub.add_parser(name, help=help_text, description=description)
        module.configure_parser(command)
        command.set_defaults(_command=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``metaloss`` command; returns its exit status."""
    args = _parser().parse_args(argv)
    try:
        code = args._command.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not as an error Python prints at exit
        return code
    except KeyboardInterrupt:
        print("metaloss: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`metaloss plugins | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the flush at exit fails again
        return EXIT_ERROR
    except OSError as err:  # a file a command could not read or write: one line, not a traceback
        return fail(os_error_line(err))
