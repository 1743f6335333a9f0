"""The two source options every command that reads pairs takes: ``--a``/``--b``, with ``--ir``/``--vi``
as their infrared–visible spelling (one wording of which source goes where, for every command)."""

from __future__ import annotations

import argparse
from pathlib import Path

#: What each slot holds in the four fusion tasks (``metaloss.pretrained.SOURCES`` per shipped model).
SLOT_A = "infrared; CT, PET or SPECT; near focus; under-exposed"
SLOT_B = "visible; MRI; far focus; over-exposed"


def add_source_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--a``/``--ir`` and ``--b``/``--vi`` (required; ``args.a``, ``args.b`` as ``Path``); ``what``
    names what each option takes, e.g. ``"image, or a folder of them"``."""
    for slot, alias, held in (("a", "ir", SLOT_A), ("b", "vi", SLOT_B)):
        parser.add_argument(
            f"--{slot}",
            f"--{alias}",
            dest=slot,
            required=True,
            type=Path,
            metavar="PATH",
            help=f"source {slot} ({held}): {what}",
        )
