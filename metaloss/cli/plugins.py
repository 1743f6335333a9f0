"""``metaloss plugins [--json]``: the registered plugins of each group, with the package that provides them."""

from __future__ import annotations

import argparse
import json

from metaloss.cli.errors import EXIT_OK


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
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
                status += (
                    f'  AMBIGUOUS: also registered by {", ".join(info.shared_with)}; use name = "{info.config_name}"'
                )
            print(f"  {info.name:16s} {info.distribution} {info.version}  ({info.value}){status}")
    return EXIT_OK
