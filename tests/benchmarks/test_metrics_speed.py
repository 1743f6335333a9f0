"""``benchmarks.metrics_speed --mef``: the mefb-against-vifb table on a small copy of MEFB's layout."""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks import metrics_speed


def _write(path, seed, shape=(90, 100, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(path), img)


def test_mef_table(tmp_path, capsys):
    mef = tmp_path / "mef"
    _write(mef / "under" / "s1.png", 0)
    _write(mef / "over" / "s1.jpg", 1)  # pairs by name whatever the extension
    _write(mef / "mefb_reference" / "fused" / "M1" / "s1.png", 2)
    _write(mef / "mefb_reference" / "fused" / "M2" / "s1.png", 3, shape=(180, 200, 3))  # not the sources' size
    pairs = metrics_speed._load_mef(mef, "mefb")
    assert len(pairs) == 1 and pairs[0][2].shape == (1, 3, 90, 100)
    metrics_speed.print_mef_table(mef, "cpu")
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| vifb") or line.startswith("| mefb")
    ]
    assert [r.split("|")[2].strip() for r in rows] == ["all 13", "all 20", "19, without Qp", "Qp alone"]
    assert rows[0].rstrip(" |").endswith("1.00x")
