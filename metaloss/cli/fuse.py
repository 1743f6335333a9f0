"""``metaloss fuse``: fuse one pair of images, or two folders of pairs, with a trained model.

    metaloss fuse [--checkpoint CKPT | --model NAME] --a PATH --b PATH --out DIR [--tile SIZE]
                  [--tiling auto|exact|blend] [--overlap PX] [--stretch | --no-stretch] [--save-weights]
                  [--colormap NAME] [--engine auto|torch|fast] [--allocator auto|keep|release|system]
                  [--threads N] [--device DEV] [--quiet]

``--a``/``--b`` (the two sources; ``--ir``/``--vi`` is their infrared–visible spelling; which source
goes where for each shipped model: ``metaloss.pretrained.SOURCES``) are two files (one pair) or two
folders; in folders, images (by extension) are paired by file name without extension
(``metaloss.data.pairs``), and files without a partner are listed on stderr.  Each fused image is
written as an 8-bit PNG ``DIR/<name>.png`` (``<name>``: the source's file name without extension;
for a single pair with two different names, source b's); weight maps go to ``DIR/weights/``.
``DIR`` may not be the folder of a source image: that is refused before anything is written.  See ``docs/fuse.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaloss.cli.errors import EXIT_OK, EXIT_USAGE, fail
from metaloss.cli.sources import add_source_arguments
from metaloss.data.pairs import PairingError, pair_images
from metaloss.pretrained import MODELS, SOURCES

PROG = "metaloss fuse"


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from metaloss.deploy.tiling import AUTO_TILE, AUTO_WHOLE_MAX_PIXELS, DEFAULT_OVERLAP, EXACT_CHUNK

    parser.add_argument(
        "--checkpoint",
        "-c",
        metavar="CKPT",
        help="checkpoint written by `metaloss run` (or its run directory); default: the package's pretrained model",
    )
    parser.add_argument(
        "--model",
        "-m",
        default="default",
        choices=sorted(MODELS),
        help="which shipped pretrained model to use when no --checkpoint is given: "
        + "; ".join(f"{k}: {v}, a = {SOURCES[k][0]}, b = {SOURCES[k][1]}" for k, v in MODELS.items()),
    )
    add_source_arguments(parser, "an image, or a folder of them")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument(
        "--tile",
        type=_nonneg_int,
        default=None,
        metavar="SIZE",
        help=(
            "process large images in SIZE×SIZE pieces to bound memory; 0 = whole image at once; default: whole "
            f"image up to {AUTO_WHOLE_MAX_PIXELS} pixels, else {EXACT_CHUNK} (exact) or {AUTO_TILE} (blend)"
        ),
    )
    parser.add_argument(
        "--tiling",
        choices=("auto", "exact", "blend"),
        default="auto",
        help=(
            "exact: layer by layer with global attention statistics, same result as the whole image "
            "(Restormer-based networks); blend: independent overlapping tiles, ramp-blended (any network, "
            "approximate); auto (default): exact when the network supports it"
        ),
    )
    parser.add_argument(
        "--overlap",
        type=_nonneg_int,
        default=DEFAULT_OVERLAP,
        metavar="PX",
        help=f"blend tiling: minimum overlap of neighbouring tiles in pixels (default {DEFAULT_OVERLAP})",
    )
    parser.add_argument(
        "--stretch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="min-max stretch the fused Y channel of each image to [0, 1], as the reference test scripts do "
        "(default: the model's own setting, [eval] stretch of its run; on for the reference-style networks)",
    )
    parser.add_argument(
        "--save-weights",
        action="store_true",
        help="also write the loss generator's weight maps as heat maps in DIR/weights/: <name>_w_a.png, "
        "<name>_w_b.png (and <name>_v_a.png, <name>_v_b.png for gradient weights)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "fast"),
        default="auto",
        help="fast: Restormer networks run pixel-major in row bands with folded weights (metaloss.deploy.engine; "
        "the whole-image result up to float rounding, streamed, so --tiling exact is implied); torch: the network's "
        "own forward with the tiling options; auto (default): fast for Restormer networks on the CPU, else torch",
    )
    parser.add_argument(
        "--allocator",
        choices=("auto", "keep", "release", "system"),
        default="auto",
        help="how freed CPU memory is handled (metaloss.utils.memory): release (returned to the system at once, "
        "lowest peak memory), keep (reused, faster), system (glibc's defaults); auto (default): keep with the fast "
        "engine (its few full-size maps are reused), release with the torch engine",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: PyTorch's, i.e. OMP_NUM_THREADS or every core); the fast engine runs N row "
        "bands side by side, each on one thread",
    )
    parser.add_argument("--colormap", default="viridis", help="OpenCV colormap of the heat maps (default viridis)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class Job:
    name: str
    a: Path
    b: Path


def pair_jobs(a: Path, b: Path) -> tuple[list[Job], list[Path]]:
    """The pairs to fuse and the unpaired files.  Two files: one pair.  Two folders: images matched by
    file name without extension (``metaloss.data.pairs``: ``x.png`` pairs with ``x.jpg``)."""
    if a.is_file() and b.is_file():
        return [Job(b.stem, a, b)], []
    if a.is_dir() and b.is_dir():
        pairing = pair_images(a, b)
        return [Job(*pair) for pair in pairing.pairs], sorted(pairing.only_a + pairing.only_b)
    for p in (a, b):
        if not p.exists():
            raise PairingError(f"no such file or folder: {p}")
    raise PairingError(f"--a and --b must both be files or both be folders: {a}, {b}")


def overwrite_risk(out: Path, sources: Sequence[Path]) -> str | None:
    """Why fusing into ``out`` could replace a source image, or None when it cannot.  Every output is
    ``out/<name>...png``, so a source is safe unless ``out`` is its folder, as given or where its link
    points; such a folder is refused whatever the names, as fused images in it would also be taken
    for sources by the next run on that folder."""
    from metaloss.utils.io import clashing_input

    folders: dict[Path, Path] = {}  # folder -> a source image in it
    for source in sources:
        for image in (source, source.resolve()):
            folders.setdefault(image.parent, image)
    folder = clashing_input(out, folders)
    if folder is None:
        return None
    return (
        f"--out {out} is the folder of the source image {folders[folder]}, which fused images could "
        "overwrite; choose another folder"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``metaloss fuse`` with parsed ``args``; returns the exit status."""
    from metaloss.data.images import ImageReadError, ImageSizeError, load_pair
    from metaloss.deploy.allocator import set_fusing_allocator_policy
    from metaloss.deploy.fuse import fuse_images, heatmap, resolve_engine, write_png
    from metaloss.deploy.model import InferenceError, load_model
    from metaloss.deploy.tiling import plan_tiling
    from metaloss.experiment import RunError, resolve_device
    from metaloss.registry import PluginError

    if args.threads is not None and args.threads < 1:
        return fail(f"--threads must be at least 1, got {args.threads}", EXIT_USAGE, prog=PROG)
    if args.tiling == "blend" and args.tile and args.overlap >= args.tile:
        return fail(f"--overlap ({args.overlap}) must be smaller than --tile ({args.tile})", EXIT_USAGE, prog=PROG)
    try:
        heatmap(np.zeros((1, 1), np.float32), args.colormap)  # an unknown colormap fails before any work
    except ValueError as err:
        return fail(str(err), EXIT_USAGE, prog=PROG)
    try:
        jobs, unpaired = pair_jobs(args.a, args.b)
    except PairingError as err:
        return fail(str(err), EXIT_USAGE, prog=PROG)
    risk = overwrite_risk(Path(args.out), [p for job in jobs for p in (job.a, job.b)] + unpaired)
    if risk is not None:
        return fail(risk, EXIT_USAGE, prog=PROG)
    if unpaired:
        print(f"metaloss fuse: {len(unpaired)} file(s) without a partner, not fused:", file=sys.stderr)
        for p in unpaired:
            print(f"  {p}", file=sys.stderr)
    if not jobs:
        return fail(f"no image pairs in {args.a} and {args.b}", prog=PROG)
    try:
        device = resolve_device(args.device)
        if args.checkpoint and args.model != "default":
            return fail("give --checkpoint or --model, not both", EXIT_USAGE, prog=PROG)
        model = load_model(args.checkpoint, generator=args.save_weights, device=device, model=args.model)
    except (InferenceError, RunError, PluginError) as err:
        return fail(str(err), prog=PROG)
    try:  # refuse an impossible tiling (exact for a network that cannot stream) before any work
        for net in (model.fusion, model.generator):
            if net is not None:
                plan_tiling(net, 1 << 16, 1 << 16, tile=args.tile, mode=args.tiling, overlap=args.overlap)
    except ValueError as err:
        return fail(str(err), EXIT_USAGE, prog=PROG)

    try:
        engines = {resolve_engine(net, args.engine) for net in (model.fusion, model.generator) if net is not None}
    except ValueError as err:
        return fail(str(err), EXIT_USAGE, prog=PROG)
    set_fusing_allocator_policy(engines, args.allocator)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="pair", file=sys.stderr, dynamic_ncols=True, desc="fuse")

    def on_tile(i: int, n: int) -> None:
        if bar is not None and n > 1:
            bar.set_postfix_str(f"step {i}/{n}")

    failures: list[str] = []
    try:
        for job in jobs:
            if bar is not None:
                bar.set_description(f"fuse {job.name}")
            try:
                pair = load_pair(job.a, job.b)
                result = fuse_images(
                    model,
                    pair,
                    tile=args.tile,
                    mode=args.tiling,
                    overlap=args.overlap,
                    stretch_y=args.stretch,
                    weights=args.save_weights,
                    on_tile=on_tile,
                    engine=args.engine,
                )
                del pair
                write_png(out / f"{job.name}.png", result.image)
                if result.maps:
                    (out / "weights").mkdir(exist_ok=True)
                for suffix, values in result.maps.items():
                    image = heatmap(values, args.colormap, value_range=None, colorbar=True)
                    write_png(out / "weights" / f"{job.name}_{suffix}.png", image)
            except (ImageReadError, ImageSizeError, OSError) as err:
                failures.append(f"{job.name}: {err}")
                if bar is not None:
                    bar.write(f"metaloss fuse: {job.name}: {err}", file=sys.stderr)
                else:
                    print(f"metaloss fuse: {job.name}: {err}", file=sys.stderr)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if failures:
        return fail(f"{len(failures)} of {len(jobs)} pair(s) failed; the others are in {out}", prog=PROG)
    if not args.quiet:
        print(f"fused {len(jobs)} pair(s) into {out} ({model.source})", file=sys.stderr)
    return EXIT_OK
