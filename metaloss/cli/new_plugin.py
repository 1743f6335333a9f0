"""``metaloss new-plugin NAME``: a plugin package to start from (``metaloss.scaffold``)."""

from __future__ import annotations

import argparse

from metaloss.cli.errors import EXIT_OK, EXIT_USAGE, fail


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", metavar="NAME", help="plugin name, e.g. depth: package metaloss-depth, module metaloss_depth"
    )
    parser.add_argument(
        "--out", "-o", default=".", help="folder to create metaloss-NAME/ in (default: the current folder)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty metaloss-NAME/ (overwrites the scaffold's files)",
    )


def run(args: argparse.Namespace) -> int:
    from metaloss.scaffold import PluginNames, ScaffoldError, create_plugin

    try:
        names = PluginNames.from_name(args.name)
        root, files = create_plugin(args.name, args.out, force=args.force)
    except ScaffoldError as err:
        return fail(str(err), EXIT_USAGE)
    except OSError as err:
        return fail(f"cannot write the plugin package: {err}")
    print(f"created {root}/ (distribution {names.distribution}, module {names.module}, entry points {names.entry!r})")
    for path in files:
        print(f"  {path.relative_to(root)}")
    print("next:")
    print(f"  pip install -e '{root}[test]'     # then `metaloss plugins` lists {names.entry!r} in every group")
    print(f"  pytest {root}")
    print(f"  metaloss run {root / (names.entry + '.toml')}")
    return EXIT_OK
