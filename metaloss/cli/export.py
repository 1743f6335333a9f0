"""``metaloss export``: the fusion network as an ONNX model with dynamic height and width.

    metaloss export [--checkpoint CKPT] --onnx OUT.onnx [--opset N] [--no-verify]

The command around ``metaloss.deploy.export`` (inputs ``ir``, ``vi``, output ``fused``, float32
``[N, 1, H, W]``): loads the model, exports it, checks it with ``onnx.checker`` and, when
``onnxruntime`` is installed, runs it at two sizes and compares with PyTorch (the maximum absolute
difference is printed).
"""

from __future__ import annotations

import argparse
import sys

from metaloss.cli.errors import EXIT_OK, fail
from metaloss.deploy.export import DEFAULT_OPSET

PROG = "metaloss export"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        "-c",
        metavar="CKPT",
        help="checkpoint written by `metaloss run` (or its run directory); default: the package's pretrained model",
    )
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime with PyTorch at two sizes after export (default: on, when onnxruntime is installed)",
    )


def run(args: argparse.Namespace) -> int:
    from metaloss.deploy.export import export_onnx, verify_onnx
    from metaloss.deploy.model import InferenceError, load_model

    try:
        import onnx  # noqa: F401
    except ImportError:
        return fail("ONNX export needs the 'onnx' package: pip install 'metaloss[onnx]'", prog=PROG)
    try:
        model = load_model(args.checkpoint)
    except InferenceError as err:
        return fail(str(err), prog=PROG)
    try:
        path = export_onnx(model.fusion, args.onnx, args.opset)
    except Exception as err:  # exporter errors come in many types; report them as one failure
        return fail(f"export to {args.onnx} failed: {type(err).__name__}: {err}", prog=PROG)
    print(
        f"wrote {path} (fusion network of {model.source}; inputs ir, vi; output fused; [N, 1, H, W], dynamic N, H, W)"
    )
    if args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: not verified", file=sys.stderr)
            return EXIT_OK
        diffs = verify_onnx(model.fusion, path)
        for (h, w), d in diffs.items():
            print(f"  onnxruntime vs PyTorch at {h}×{w}: max abs difference {d:.3g}")
        worst = max(diffs.values())
        if worst > 1e-4:
            return fail(f"onnxruntime differs from PyTorch by {worst:.3g} (> 1e-4)", prog=PROG)
    return EXIT_OK
