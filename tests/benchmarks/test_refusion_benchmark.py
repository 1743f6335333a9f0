"""Pieces of the ReFusion benchmark that need no training: the plain-average baseline's images."""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks.refusion import HELD_OUT, TNO_TARGET, write_average


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
