"""``metaloss eval``: fusion metrics of folders of fused images, as plain-text tables.

    metaloss eval --a DIR --b DIR --fused DIR [--fused DIR ...] [--profile P]
                  [--metrics M [M ...]] [--json FILE] [--csv FILE] [--summary] [--device D]

``--a``/``--b`` are the two source folders (``--ir``/``--vi``, their infrared–visible spelling).
Without ``--profile``, metrics that only one other profile has (``--metrics MEF-SSIM``) are scored
with that profile's conventions.

Prints, under a header naming the profile, a table per fused folder (one row per image, then the
means) with the problems found (missing partner, unreadable file, size mismatch) listed per
file; with several fused folders, a comparison table of the means with the best value of each
metric marked ``*`` (one folder: its means, nothing marked).  Source pairs that a fused folder has no
image for are named in a warning on stderr (its means leave them out), and so are the images not
scored in every fused folder compared.  ``--json``/``--csv`` naming an input (a source or fused image,
or a folder) is refused before scoring.  Errors are ``metaloss eval: error: MESSAGE`` lines on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from metaloss.cli.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail
from metaloss.cli.sources import add_source_arguments
from metaloss.data.pairs import list_images
from metaloss.metrics.folders import FolderEvaluation, MethodResult, evaluate_folders
from metaloss.metrics.profiles import DEFAULT_PROFILE, PROFILES
from metaloss.utils.io import clashing_input

PROG = "metaloss eval"

__all__ = ["configure_parser", "format_different_sets", "format_evaluation", "format_missing", "format_table", "run"]

#: Source pairs named per fused folder in the warning about missing fused images; the rest are counted.
MISSING_SHOWN = 10


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    parser.description = "Fusion metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, ...) of folders of fused images."
    add_source_arguments(parser, "a folder of source images")
    parser.add_argument(
        "--fused",
        required=True,
        type=Path,
        action="append",
        metavar="DIR",
        help="folder of fused images (repeat for several methods); files pair with the sources by name",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help=f"metric conventions (default: {DEFAULT_PROFILE}, or the one profile that has all the "
        "--metrics asked for); see docs/metrics.md",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="M",
        help="metrics to compute, space- or comma-separated (default: all of the profile's)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the results as CSV")
    parser.add_argument("--summary", action="store_true", help="print only the means, not the per-image tables")
    parser.add_argument("--device", default="cpu", help="torch device to compute on (default: cpu)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="source pairs evaluated in parallel threads (default 1); with N > 1 torch and OpenCV "
        "run single-threaded in each",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split_metrics(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out or None


def _profile_for(metrics: list[str] | None, err: TextIO) -> str:
    """The default profile, or the only profile with every metric in ``metrics`` when the default
    lacks one of them (``--metrics MEF-SSIM``: ``mefb``), said on ``err``."""
    default = PROFILES[DEFAULT_PROFILE]
    if not metrics or all(m in default for m in metrics):
        return DEFAULT_PROFILE
    holders = [name for name, prof in PROFILES.items() if all(m in prof for m in metrics)]
    if len(holders) != 1:
        return DEFAULT_PROFILE  # the unknown-metric error below names what the default has
    print(f"note: profile {holders[0]!r} (the one with {', '.join(metrics)})", file=err)
    return holders[0]


def _result_file_error(args: argparse.Namespace) -> str | None:
    """Why ``--json``/``--csv`` cannot be written, or None: it names an input of this evaluation (a
    source or fused image, or one of their folders), which it would replace, or another folder, or a
    file in a folder that does not exist, where writing would fail after all the scoring."""
    folders = [args.a, args.b, *args.fused]
    inputs = [*folders, *(p for d in folders for p in list_images(d))]
    for option, target in (("--json", args.json), ("--csv", args.csv)):
        if target is None:
            continue
        clash = clashing_input(target, inputs)
        if clash is not None:
            return f"{option} {str(target)!r} is the input {str(clash)!r}; write the results to another file"
        if target.is_dir():
            return f"{option} {str(target)!r} is a folder; give a file name"
        if not target.parent.is_dir():
            return f"{option} {str(target)!r}: the folder {str(target.parent)!r} does not exist"
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``metaloss eval``. Returns 0 when at least one image was evaluated, 1 when none was,
    2 for a usage error (unknown metric, missing folder, ``--json``/``--csv`` naming an input)."""
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    metrics = _split_metrics(args.metrics)
    profile = PROFILES[args.profile or _profile_for(metrics, err)]
    if metrics is not None:
        unknown = [m for m in metrics if m not in profile]
        if unknown:
            return fail(
                f"profile {profile.name!r} has no metric {', '.join(map(repr, unknown))}; "
                f"it has {', '.join(profile.metrics)}",
                EXIT_USAGE,
                prog=PROG,
            )
    for what, d in [("--a", args.a), ("--b", args.b)] + [("--fused", d) for d in args.fused]:
        if not Path(d).is_dir():
            return fail(f"{what} {str(d)!r} is not a directory", EXIT_USAGE, prog=PROG)
    problem = _result_file_error(args)
    if problem is not None:
        return fail(problem, EXIT_USAGE, prog=PROG)
    workers = max(1, int(args.workers))
    threads = None
    if workers > 1:
        import cv2
        import torch

        threads = (torch.get_num_threads(), cv2.getNumThreads())
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    try:
        res = evaluate_folders(
            args.a,
            args.b,
            args.fused,
            profile,
            metrics,
            device=args.device,
            progress=not args.no_progress,
            workers=workers,
        )
    except (ValueError, RuntimeError) as exc:  # e.g. an unusable --device
        return fail(str(exc), EXIT_USAGE, prog=PROG)
    finally:
        if threads is not None:
            torch.set_num_threads(threads[0])
            cv2.setNumThreads(threads[1])
    err.write(format_missing(res))
    err.write(format_different_sets(res))
    out.write(format_evaluation(res, per_image=not args.summary))
    if args.json:
        res.write_json(args.json)
        print(f"wrote {args.json}", file=out)
    if args.csv:
        res.write_csv(args.csv)
        print(f"wrote {args.csv}", file=out)
    return EXIT_OK if any(m.evaluated for m in res.methods) else EXIT_ERROR


# ------------------------------------------------------------------------------------ formatting
def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    a = abs(v)
    if a >= 10000:
        return f"{v:.1f}"
    if a >= 1000:
        return f"{v:.2f}"
    return f"{v:.4f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=False)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def _header_cells(res: FolderEvaluation) -> list[str]:
    hib = res.higher_is_better
    return [m if hib[m] else f"{m}(-)" for m in res.metrics]


def _method_table(res: FolderEvaluation, mr: MethodResult) -> str:
    rows = [[r.name, *(_fmt(r.values[m]) for m in res.metrics)] for r in mr.evaluated]
    means = mr.mean(res.metrics)
    if rows:
        rows.append(["mean", *(_fmt(means[m]) for m in res.metrics)])
    return format_table(["image", *_header_cells(res)], rows)


def format_missing(res: FolderEvaluation) -> str:
    """The warning, one line per fused folder, naming the source pairs it has no fused image for
    (the first ``MISSING_SHOWN``, then a count): its means leave them out, so they are not comparable
    with those of a folder that has them."""
    lines = []
    for mr in res.methods:
        if mr.missing:
            names = ", ".join(mr.missing[:MISSING_SHOWN])
            more = f" and {len(mr.missing) - MISSING_SHOWN} more" if len(mr.missing) > MISSING_SHOWN else ""
            lines.append(
                f"warning: {mr.label}: {len(mr.missing)} source pair(s) have no fused image in "
                f"{str(mr.fused_dir)!r} and are left out of its means: {names}{more}\n"
            )
    return "".join(lines)


def format_different_sets(res: FolderEvaluation) -> str:
    """The warning when the fused folders compared were scored on different images: their means then
    differ by the images as much as by the methods.  Names the images not scored in every folder (the
    first ``MISSING_SHOWN``, then a count); "" for one folder, or folders of one image set."""
    sets = {mr.label: {Path(r.name).stem for r in mr.evaluated} for mr in res.methods}
    if len(sets) < 2 or len({frozenset(s) for s in sets.values()}) == 1:
        return ""
    common = set.intersection(*sets.values())
    differing = sorted(set.union(*sets.values()) - common)
    names = ", ".join(differing[:MISSING_SHOWN])
    more = f" and {len(differing) - MISSING_SHOWN} more" if len(differing) > MISSING_SHOWN else ""
    counts = ", ".join(f"{label}: {len(stems)}" for label, stems in sets.items())
    return (
        f"warning: the fused folders hold different image sets ({counts} images scored; {len(common)} in all), "
        f"so the comparison's means are over different images; not in every folder: {names}{more}\n"
    )


def format_evaluation(res: FolderEvaluation, per_image: bool = True) -> str:
    """The text ``metaloss eval`` prints for ``res``."""
    parts = [
        f"fusion metrics, profile: {res.profile.name} ({res.profile.description})\n",
        f"infrared: {res.ir_dir}   visible: {res.vi_dir}\n",
        "(-) marks metrics for which lower is better\n",
    ]
    for mr in res.methods:
        n_ok, n_err = len(mr.evaluated), len(mr.errors)
        absent = f", {len(mr.missing)} source pair(s) without a fused image" if mr.missing else ""
        parts.append(f"\n== {mr.label}: {mr.fused_dir}  ({n_ok} evaluated, {n_err} with problems{absent})\n")
        if per_image:
            if mr.evaluated:
                parts.append(_method_table(res, mr))
            else:
                parts.append("no image could be evaluated\n")
        if mr.errors:
            parts.append("problems:\n")
            parts.extend(f"  {r.name}: {r.error}\n" for r in mr.errors)
    if len(res.methods) > 1:
        means = res.means()
        best = res.best()
        rows = []
        for mr in res.methods:
            cells = [mr.label]
            for m in res.metrics:
                v = means[mr.label][m]
                cells.append(_fmt(v) + ("*" if mr.label in best[m] else " "))
            rows.append(cells)
        parts.append(f"\n== comparison: mean over each folder's images, * = best (profile {res.profile.name})\n")
        parts.append(format_table(["method", *(h + " " for h in _header_cells(res))], rows))
    elif not per_image:  # one folder: its means, nothing to mark best against
        means = res.means()
        rows = [[mr.label, *(_fmt(means[mr.label][m]) for m in res.metrics)] for mr in res.methods]
        parts.append(f"\n== means: mean over the folder's images (profile {res.profile.name})\n")
        parts.append(format_table(["method", *_header_cells(res)], rows))
    return "".join(parts)
