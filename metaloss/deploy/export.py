"""The fusion network as an ONNX model with dynamic batch, height and width (``metaloss export``).

The model has inputs ``ir`` and ``vi`` and output ``fused``, all float32 ``[N, 1, H, W]`` in [0, 1]
with N, H and W dynamic (the Y channel; colour handling stays outside the model, see
``metaloss.data.color``).  The export uses PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), which needs only the ``onnx`` package; the model is
checked with ``onnx.checker``, and :func:`verify_onnx` compares onnxruntime with PyTorch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from metaloss.utils.io import default_file_mode

__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx", "verify_onnx"]

DEFAULT_OPSET = 17
INPUT_NAMES = ("ir", "vi")
OUTPUT_NAME = "fused"
#: Sizes ``verify_onnx`` compares at by default (different from the 64×64 example used to trace).
VERIFY_SIZES = ((72, 96), (101, 67))


class ExportError(RuntimeError):
    """The exported model does not behave as the network does."""


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
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
