"""The metric profiles against published reference values on real images (VIFB, 21 pairs × 13
fusion methods).

- ``vifb`` against VIFB's own MATLAB values (``matlab_metrics.json``, printed to 5 significant
  digits): every metric within those digits (relative error ≤ 5e-5, or absolute ≤ 1e-4 near
  zero); Qcb and Qcv within 1e-3 relative.
- ``cddfuse`` against CDDFuse's ``utils/Evaluator.py`` run on the same images read as grey
  (``cddfuse_evaluator_metrics.json``): relative error ≤ 1e-4 for every metric and image.
- ``tdfusion`` (no published values): its VIF is half of CDDFuse's, its SSIM scikit-image's on
  uint8 images, the rest CDDFuse's.

Skipped only when ../shared/data is absent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import pytest
import torch

from metaloss.metrics import PROFILES, VIFB_NAMES, evaluate_folders

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
VIFB = DATA / "vifb"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found: {DATA.resolve()} is absent"),
]


def _fused_dirs() -> list[Path]:
    return sorted(p for p in (VIFB / "fused").iterdir() if p.is_dir())


WORKERS = max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread_per_worker():
    """Evaluate source pairs in parallel threads, each single-threaded (faster than one pair at a
    time with multi-threaded torch and OpenCV)."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


def _evaluate(profile: str, dirs: list[Path]):
    return evaluate_folders(VIFB / "ir", VIFB / "vi", dirs, profile=profile, progress=False, workers=WORKERS)


@pytest.fixture(scope="module")
def vifb_results(one_thread_per_worker):
    return _evaluate("vifb", _fused_dirs())


@pytest.fixture(scope="module")
def cddfuse_results(one_thread_per_worker):
    return _evaluate("cddfuse", _fused_dirs())


def _values(res, metric: str):
    for mr in res.methods:
        for r in mr.records:
            assert r.error is None, f"{mr.label}/{r.name}: {r.error}"
            yield mr.label, r.name, r.values[metric]


def test_vifb_data_complete(vifb_results):
    ref = json.loads((VIFB / "matlab_metrics.json").read_text())["values"]
    n = sum(len(m.evaluated) for m in vifb_results.methods)
    assert n == sum(len(v) for v in ref.values()) == 273
    assert all(not m.errors for m in vifb_results.methods)


@pytest.mark.parametrize("metric", PROFILES["vifb"].metrics)
def test_vifb_matches_matlab(vifb_results, metric):
    ref = json.loads((VIFB / "matlab_metrics.json").read_text())["values"]
    rel_tol, abs_tol = (1e-3, 0.0) if metric in ("Qcb", "Qcv") else (5e-5, 1e-4)
    bad = []
    worst = 0.0
    for method, name, value in _values(vifb_results, metric):
        expected = ref[Path(name).stem][method][VIFB_NAMES[metric]]
        err = abs(value - expected)
        rel = err / abs(expected) if expected else math.inf
        worst = max(worst, rel if expected else err)
        if not (rel <= rel_tol or err <= abs_tol):
            bad.append(f"{method}/{name}: {value!r} vs MATLAB {expected!r} (rel {rel:.2e})")
    assert not bad, f"{metric}: {len(bad)} of 273 off (worst rel {worst:.2e}):\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("metric", PROFILES["cddfuse"].metrics)
def test_cddfuse_matches_evaluator(cddfuse_results, metric):
    ref = json.loads((VIFB / "cddfuse_evaluator_metrics.json").read_text())
    bad = []
    n = 0
    for method, name, value in _values(cddfuse_results, metric):
        expected = ref[f"{method}/{name}"][metric]
        rel = abs(value - expected) / abs(expected)
        n += 1
        if not rel <= 1e-4:
            bad.append(f"{method}/{name}: {value!r} vs Evaluator {expected!r} (rel {rel:.2e})")
    assert n == len(ref) == 273
    assert not bad, f"{metric}: {len(bad)} off:\n" + "\n".join(bad[:20])


def test_tdfusion_relates_to_cddfuse(cddfuse_results, one_thread_per_worker):
    """On a subset: TDFusion's VIF is the mean where CDDFuse's is the sum; SSIM is scikit-image's
    on uint8 images (data range 255) averaged over the sources; the other metrics are CDDFuse's."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    import numpy as np

    from metaloss.data.io import read_gray_cddfuse

    dirs = _fused_dirs()[:3]
    td = _evaluate("tdfusion", dirs)
    cdd = {(m.label, r.name): r.values for m in cddfuse_results.methods for r in m.records}
    checked = 0
    for mr in td.methods:
        for r in mr.records[:4]:
            c = cdd[(mr.label, r.name)]
            assert r.values["VIF"] == pytest.approx(c["VIF"] / 2, rel=1e-12)
            for m in ("EN", "SD", "SF", "AG", "MI", "SCD", "Qabf", "CC", "PSNR", "MSE"):
                assert r.values[m] == pytest.approx(c[m], rel=1e-12)
            f, a, b = (
                np.uint8(read_gray_cddfuse(p))
                for p in (VIFB / "fused" / mr.label / r.name, VIFB / "ir" / r.name, VIFB / "vi" / r.name)
            )
            ref = (skimage_metrics.structural_similarity(f, a) + skimage_metrics.structural_similarity(f, b)) / 2
            assert r.values["SSIM"] == pytest.approx(ref, rel=1e-9)
            checked += 1
    assert checked == 12
