"""``metaloss export``: the fusion network as an ONNX model with dynamic height and width.

    metaloss export [--checkpoint CKPT] --onnx OUT.onnx [--opset N] [--no-verify]

The model has inputs ``ir`` and ``vi`` and output ``fused``, all float32 ``[N, 1, H, W]`` in [0, 1]
with N, H and W dynamic (the Y channel; colour handling stays outside the model, see
``metaloss.data.color``).  The export uses PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), which needs only the ``onnx`` package; after writing,
the model is checked with ``onnx.checker`` and, when ``onnxruntime`` is installed, run at two sizes
and compared with PyTorch (the maximum absolute difference is printed).  Also runnable as
``python -m metaloss.export``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from metaloss.utils.io import default_file_mode

__all__ = ["DEFAULT_OPSET", "configure_parser", "export_onnx", "main", "run", "verify_onnx"]

DEFAULT_OPSET = 17
INPUT_NAMES = ("ir", "vi")
OUTPUT_NAME = "fused"
#: Sizes ``verify_onnx`` compares at by default (different from the 64×64 example used to trace).
VERIFY_SIZES = ((72, 96), (101, 67))

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class ExportError(RuntimeError):
    pass


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    *,
    example_size: tuple[int, int] = (64, 64),
    check: bool = True,
) -> Path:
    """Export a fusion network ``forward(ir, vi) -> fused`` to ONNX at ``path``, with dynamic batch,
    height and width.

    The network is traced in eval mode on CPU with random ``[1, 1, *example_size]`` inputs; the
    file is written to a temporary name in the same folder and renamed when complete.  With
    ``check`` the result is validated by ``onnx.checker``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(module.parameters(), torch.empty(0)).device
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(1, 1, *example_size, generator=g).to(device) for _ in INPUT_NAMES)
    axes = {0: "batch", 2: "height", 3: "width"}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module,
                example,
                tmp,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        if check:
            import onnx

            onnx.checker.check_model(tmp, full_check=True)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def verify_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Run the ONNX model with onnxruntime (CPU) and ``module`` with PyTorch on the same random pairs
    at each of ``sizes``; the maximum absolute difference of the outputs per size."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    device = next(module.parameters(), torch.empty(0)).device
    out: dict[tuple[int, int], float] = {}
    with _eval_mode(module), torch.inference_mode():
        for h, w in sizes:
            ir, vi = torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)
            expected = module(ir.to(device), vi.to(device)).float().cpu().numpy()
            got = session.run([OUTPUT_NAME], {"ir": ir.numpy(), "vi": vi.numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"ONNX output shape {got.shape} != PyTorch's {expected.shape} at {h}×{w}")
            out[(h, w)] = float(np.abs(got - expected).max())
    return out


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--checkpoint", "-c", metavar="CKPT",
        help="checkpoint written by `metaloss run` (or its run directory); default: the package's pretrained model",
    )
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True,
        help="compare onnxruntime with PyTorch at two sizes after export (default: on, when onnxruntime is installed)",
    )
    return parser


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"metaloss export: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from metaloss.inference import InferenceError, load_model

    try:
        import onnx  # noqa: F401
    except ImportError:
        return _fail("ONNX export needs the 'onnx' package: pip install 'metaloss[onnx]'")
    try:
        model = load_model(args.checkpoint)
    except InferenceError as err:
        return _fail(str(err))
    try:
        path = export_onnx(model.fusion, args.onnx, args.opset)
    except Exception as err:  # exporter errors come in many types; report them as one failure
        return _fail(f"export to {args.onnx} failed: {type(err).__name__}: {err}")
    print(f"wrote {path} (fusion network of {model.source}; inputs ir, vi; output fused; [N, 1, H, W], dynamic N, H, W)")
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
            return _fail(f"onnxruntime differs from PyTorch by {worst:.3g} (> 1e-4)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="metaloss export", description="Export the fusion network to ONNX."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
