"""The GPU settings of a run (metaloss.utils.cuda): set on any machine, checked on a GPU where there is one."""

from __future__ import annotations

import os

import pytest
import torch

from metaloss.utils.cuda import CUBLAS_WORKSPACE, bfloat16_problem, configure_cuda


@pytest.fixture
def saved_backends(monkeypatch):
    """Put the process-wide switches back after the test (they are plain attributes on any build)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    ) = flags


@pytest.mark.parametrize("deterministic", [True, False])
def test_configure_cuda_turns_tf32_off_and_autotunes_only_when_not_deterministic(saved_backends, deterministic):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = not deterministic, deterministic
    configure_cuda(deterministic)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.deterministic is deterministic
    assert torch.backends.cudnn.benchmark is not deterministic
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (CUBLAS_WORKSPACE if deterministic else None)


def test_a_users_cublas_workspace_setting_is_kept(saved_backends, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_cuda(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_bfloat16_needs_a_cuda_device():
    assert bfloat16_problem(torch.device("cpu")) == "it needs a CUDA device, and the run is on cpu"


@pytest.mark.cuda
def test_bfloat16_runs_on_gpus_with_bfloat16_arithmetic():
    """Ampere (compute capability 8.0) and later have it; the reason names an older GPU."""
    device = torch.device("cuda")
    problem = bfloat16_problem(device)
    if torch.cuda.get_device_capability(device) >= (8, 0):
        assert problem is None
    else:
        assert problem is not None and torch.cuda.get_device_name(device) in problem
