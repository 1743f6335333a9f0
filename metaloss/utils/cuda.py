"""The GPU settings of a run: cuDNN, TF32, cuBLAS determinism and bfloat16 autocast (docs/gpu.md).

These are process-wide switches of PyTorch; a run on a CUDA device sets them once, before its networks
are built, so that they do not depend on what the process did before.  Only APIs that PyTorch 2.4
already had are used (the GPU machines run older PyTorch than the development machine).
"""

from __future__ import annotations

import os

import torch

#: cuBLAS's workspace setting under which its matrix products are deterministic; without it
#: ``torch.use_deterministic_algorithms`` warns (or fails) at the first one on CUDA 10.2 and later.
CUBLAS_WORKSPACE = ":4096:8"


def configure_cuda(deterministic: bool) -> None:
    """Choose cuDNN's and the matrix products' settings for a run on a GPU.

    - TF32 is off for matrix products and convolutions: ``dtype = "float32"`` means float32 (10 more
      mantissa bits than TF32), so the meta-gradient, a difference of second-order terms, matches the
      CPU's to float32 rounding; ``dtype = "bfloat16"`` is the speed switch, and it says so.
    - ``deterministic``: cuDNN picks deterministic algorithms and does not autotune (``benchmark``
      times candidate algorithms and may pick another one in the next run); cuBLAS gets its
      deterministic workspace (read when its first handle is made: set before the first product).
    - not ``deterministic``: ``benchmark`` on; a run's crops and task images have one size each, so
      cuDNN autotunes each layer once and reuses the fastest algorithm.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def bfloat16_problem(device: torch.device) -> str | None:
    """Why bfloat16 autocast cannot run on ``device`` (None when it can): it needs a CUDA device whose
    hardware has bfloat16 arithmetic (compute capability 8.0, Ampere, and later)."""
    if device.type != "cuda":
        return f"it needs a CUDA device, and the run is on {device}"
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic (compute capability 8.0 or later)"
    return None
