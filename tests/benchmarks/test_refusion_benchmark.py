"""Pieces of the ReFusion benchmark that need no training: the plain-average baseline's images, the
held-out evaluation sets of the task models."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.refusion import HELD_OUT, ROOT, TASKS, TNO_TARGET, subset, write_average


def test_plain_average_is_written_per_pair_by_name(tmp_path):
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir(), vi.mkdir()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 9, 11), dtype=np.uint8)
    cv2.imwrite(str(ir / "p1.png"), a)
    cv2.imwrite(str(vi / "p1.jpg"), cv2.merge([b, b, b]), [cv2.IMWRITE_JPEG_QUALITY, 100])
    write_average(ir, vi, tmp_path / "avg")
    (out,) = (tmp_path / "avg").iterdir()
    assert out.name == "p1.png"
    vi_grey = cv2.imread(str(vi / "p1.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    expected = np.round((a.astype(np.float32) + vi_grey) / 2)
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_GRAYSCALE), expected.astype(np.uint8))


def test_held_out_sets_are_not_the_evaluation_set():
    assert "tno25" not in {folder for folder, _, _ in HELD_OUT.values()}
    assert TNO_TARGET == {"VIF": 0.754, "Qabf": 0.552, "SSIM": 1.016}  # the official checkpoint on tno25


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_model_is_scored_on_pairs_its_run_never_trains_on(task, shared_data, tmp_path):
    """The evaluation sets of `benchmarks.refusion task` hold no training pair of the task's config:
    its validation split, a pattern its `data.exclude` keeps out, or another collection."""
    from metaloss.config import load_config
    from metaloss.experiment import build_dataset

    config = TASKS[task].config
    cwd = os.getcwd()
    os.chdir(ROOT)  # data.root is relative to the repository root
    try:
        trained = {Path(p.a).resolve() for p in build_dataset(load_config(ROOT / config).data, "train").pairs}
    finally:
        os.chdir(cwd)
    for label, eval_set in TASKS[task].sets.items():
        folder = subset(eval_set, config, tmp_path / "".join(c for c in label if c.isalnum()))
        scored = {p.resolve() for p in (folder / "a").iterdir()}
        assert len(scored) == len(list((folder / "b").iterdir())) > 0
        assert not scored & trained, f"{label}: scored on training pairs"
