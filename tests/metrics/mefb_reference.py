"""MEFB's published fused images and MATLAB metric values (``../shared/data/mef/mefb_reference``):
the cases every ``mefb`` metric test checks against.

``matlab_metrics.json`` holds ``values[scene][method][metric]`` with MEFB's names (``Cross_entropy``,
``MEF_SSIM``, …), written by MEFB's ``compute_metrics.m`` through ``dlmwrite`` (5 significant
digits). Source A is ``mef/under/<scene>``, source B ``mef/over/<scene>``, the fused image
``fused/<method>/<scene>``; all read as MATLAB's ``imread`` does (stored channels, RGB order).

Not every column belongs to the images under its name. Entropy depends on the fused image alone and
tells which column is which: the images in ``fused/IFCNN`` have the values of the column labelled
``SPD_MEF``, and those in ``fused/MGFF`` and ``fused/SPD_MEF`` match no column (the columns
labelled ``IFCNN`` and ``MGFF`` hold other methods' values) — :data:`COLUMN` pairs what does match.
Six Preschool files are 1416×2128 while their sources are 708×1064, and their fused-only metrics
miss MATLAB's by 0.2 %: MATLAB scored other files; those cases are left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
from torch import Tensor

from metaloss.metrics.folders import load_image_tensor

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MEF = DATA / "mef"
REFERENCE = MEF / "mefb_reference"

needs_mefb_data = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"real test data not found: {REFERENCE.resolve()} is absent"),
]


@dataclass(frozen=True)
class Case:
    scene: str
    method: str
    a: Path
    b: Path
    fused: Path
    expected: dict[str, float | None]


def _find(folder: Path, stem: str) -> Path:
    (hit,) = [p for p in folder.iterdir() if p.stem == stem]
    return hit


#: Folder of fused images → the column of ``matlab_metrics.json`` that holds their values.
COLUMN = {"DEM": "DEM", "FMMEF": "FMMEF", "GFF": "GFF", "IFCNN": "SPD_MEF", "U2Fusion": "U2Fusion"}


@lru_cache(maxsize=1)
def cases() -> tuple[Case, ...]:
    """Every (scene, fused folder) whose MATLAB value is known: the :data:`COLUMN` folders × 15
    scenes, less the fused files whose size differs from their sources' (71 cases)."""
    ref = json.loads((REFERENCE / "matlab_metrics.json").read_text())["values"]
    out = []
    for scene, columns in sorted(ref.items()):
        for method, column in sorted(COLUMN.items()):
            case = Case(
                scene,
                method,
                _find(MEF / "under", scene),
                _find(MEF / "over", scene),
                _find(REFERENCE / "fused" / method, scene),
                columns[column],
            )
            if read(case.fused).shape[-2:] == read(case.a).shape[-2:]:
                out.append(case)
    return tuple(out)


@lru_cache(maxsize=256)
def read(path: Path) -> Tensor:
    """``[1, C, H, W]`` float64, 0–255, as MATLAB's ``imread`` gives it."""
    return load_image_tensor(path, "vifb")


def relative_errors(
    metric: Callable[[Tensor, Tensor, Tensor], float], matlab_name: str, selected: tuple[Case, ...] | None = None
) -> Iterator[tuple[Case, float, float, float]]:
    """``(case, ours, matlab, relative error)`` for every case with a finite MATLAB value;
    ``metric(fused, a, b)`` takes the three images as :func:`read` gives them."""
    for case in cases() if selected is None else selected:
        expected = case.expected[matlab_name]
        if expected is None or not math.isfinite(expected):
            continue
        ours = float(metric(read(case.fused), read(case.a), read(case.b)))
        yield case, ours, expected, abs(ours - expected) / max(abs(expected), 1e-12)
