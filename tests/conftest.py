"""Shared fixtures.  Tests that need ../shared/data skip only when that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Several pytest-xdist workers on 2 cores: one intra-op thread each avoids oversubscription,
# which otherwise makes double-backward tests tens of times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test images not found: {SHARED_DATA} is absent (CI requires it)")
    return SHARED_DATA


@pytest.fixture
def repo() -> Path:
    return REPO
