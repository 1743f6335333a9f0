"""The ``mefb`` profile end to end: ``metaloss eval --profile mefb`` on multi-exposure folders against
MEFB's MATLAB values (all 20 metrics), and MEF-SSIM on its own on multi-focus and infrared–visible
pairs. The per-metric checks over every reference case are in test_mefb_{shared,info,structural,phase}.py.
"""

from __future__ import annotations

import json
import math

import pytest
from mefb_reference import DATA, cases, needs_mefb_data

from metaloss.cli import main
from metaloss.metrics import PROFILES

pytestmark = needs_mefb_data

#: MATLAB's values are printed to 5 digits; Qc, Qy and VIF's Lake1 are explained in docs/metrics.md.
TOLERANCE = {"Qc": 2e-2, "Qy": 2e-2}
SCENES = ("TableLamp", "Venice")  # the two smallest scenes
METHODS = ("DEM", "IFCNN")


def _link_folder(folder, files):
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


def test_profile_lists_mefb_metrics():
    prof = PROFILES["mefb"]
    assert prof.metrics == (
        "CE",
        "EN",
        "FMI",
        "NMI",
        "PSNR",
        "Qncie",
        "TE",
        "AG",
        "EI",
        "Qabf",
        "Qp",
        "SD",
        "SF",
        "Qc",
        "Qw",
        "Qy",
        "MEF-SSIM",
        "Qcb",
        "Qcv",
        "VIF",
    )
    assert {m for m, up in prof.higher_is_better.items() if not up} == {"CE", "Qcv"}
    assert prof["MEF_SSIM"].name == "MEF-SSIM"  # MEFB's spelling is accepted


def test_eval_cli_matches_matlab(tmp_path, capsys):
    chosen = [c for c in cases() if c.scene in SCENES and c.method in METHODS]
    assert len(chosen) == len(SCENES) * len(METHODS)
    a = _link_folder(tmp_path / "under", sorted({c.a for c in chosen}))
    b = _link_folder(tmp_path / "over", sorted({c.b for c in chosen}))
    fused = [_link_folder(tmp_path / m, [c.fused for c in chosen if c.method == m]) for m in METHODS]
    out = tmp_path / "m.json"
    args = ["eval", "--profile", "mefb", "--a", str(a), "--b", str(b), "--json", str(out), "--no-progress"]
    assert main(args + [x for d in fused for x in ("--fused", str(d))]) == 0
    result = json.loads(out.read_text())
    names = PROFILES["mefb"].reference_names
    checked = 0
    for case in chosen:
        ours = result["methods"][case.method]["images"][case.fused.name]
        for metric, value in ours.items():
            expected = case.expected[names[metric]]
            assert math.isclose(value, expected, rel_tol=TOLERANCE.get(metric, 5e-5)), (case, metric, value, expected)
            checked += 1
    assert checked == 20 * len(chosen)
    assert "profile: mefb" in capsys.readouterr().out


@pytest.mark.parametrize(
    "folder,a,b",
    [("mfif", "A", "B"), ("tno25", "ir", "vi")],
    ids=["multi-focus", "infrared-visible"],
)
def test_mef_ssim_alone_on_other_tasks(tmp_path, capsys, folder, a, b):
    """``--metrics MEF-SSIM`` without ``--profile`` picks the mefb profile and scores grey and colour
    sources of other tasks (here source b taken as the fused image: a value strictly inside 0–1)."""
    src_a, src_b = DATA / folder / a, DATA / folder / b
    first = sorted(src_a.iterdir())[:2]
    pairs_a = _link_folder(tmp_path / "a", first)
    pairs_b = _link_folder(tmp_path / "b", [next(p for p in src_b.iterdir() if p.stem == f.stem) for f in first])
    out = tmp_path / "m.json"
    rc = main(
        [
            "eval",
            "--a",
            str(pairs_a),
            "--b",
            str(pairs_b),
            "--fused",
            str(pairs_b),
            "--metrics",
            "MEF-SSIM",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "profile 'mefb'" in err
    values = json.loads(out.read_text())["methods"]["b"]["images"]
    assert len(values) == 2
    assert all(0.0 < v["MEF-SSIM"] < 1.0 for v in values.values())
