"""``metaloss eval`` (metaloss.cli.eval) and evaluate_folders on small folders written here."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from metaloss import cli
from metaloss.cli.eval import configure_parser, format_table, run
from metaloss.metrics import PROFILES, evaluate_folders

H, W = 48, 64


def _scene(seed: int, colour: bool = False, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 9.0) + rng.normal(0, 12, (h, w))
    img = np.clip(base, 0, 255).astype(np.uint8)
    if colour:
        img = np.stack([img, np.roll(img, 3, axis=1), 255 - img], axis=-1)
    return img


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """ir/, vi/ with pairs a, b, c; two methods: m1 (a, b, c.png fused at the wrong size, d
    without partners), m2 (a, b)."""
    d = {k: tmp_path / k for k in ("ir", "vi", "m1", "m2")}
    for p in d.values():
        p.mkdir()
    for i, n in enumerate("abc"):
        cv2.imwrite(str(d["ir"] / f"{n}.png"), _scene(i))
        cv2.imwrite(str(d["vi"] / f"{n}.png"), _scene(10 + i, colour=True))
    for i, n in enumerate("ab"):
        ir = _scene(i).astype(np.float64)
        vi = cv2.cvtColor(_scene(10 + i, colour=True), cv2.COLOR_BGR2GRAY).astype(np.float64)
        cv2.imwrite(str(d["m1"] / f"{n}.png"), np.uint8(np.round(0.5 * ir + 0.5 * vi)))
        cv2.imwrite(str(d["m2"] / f"{n}.jpg"), np.uint8(np.round(0.8 * ir + 0.2 * vi)))  # other extension
    cv2.imwrite(str(d["m1"] / "c.png"), _scene(2, h=H + 4))  # size mismatch
    cv2.imwrite(str(d["m1"] / "d.png"), _scene(3))  # no partner
    (d["m1"] / "notes.txt").write_text("not an image")  # ignored (extension)
    return d


def main(argv: list[str]) -> int:
    return cli.main(["eval", *argv])


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure_parser(p)
    return p.parse_args(list(argv))


def test_eval_folders_reports_problems_per_file(folders):
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["m1"], folders["m2"]], progress=False)
    m1, m2 = res.methods
    assert [r.name for r in m1.evaluated] == ["a.png", "b.png"]
    errors = {r.name: r.error for r in m1.errors}
    assert set(errors) == {"c.png", "d.png"}
    assert "size mismatch" in errors["c.png"] and "52x64" in errors["c.png"]
    assert "no infrared partner" in errors["d.png"] and "no visible partner" in errors["d.png"]
    assert [r.name for r in m2.evaluated] == ["a.jpg", "b.jpg"]  # paired by stem
    assert res.metrics == list(PROFILES["cddfuse"].metrics)
    means = res.means()
    for m in res.metrics:
        vals = [r.values[m] for r in m1.evaluated]
        assert means["m1"][m] == pytest.approx(sum(vals) / 2)
    best = res.best()
    assert best["MSE"] == [min(means, key=lambda k: means[k]["MSE"])]
    assert best["SSIM"] == [max(means, key=lambda k: means[k]["SSIM"])]


def test_cli_single_folder(folders, capsys):
    rc = run(
        _args("--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(folders["m1"]), "--no-progress")
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "profile: cddfuse" in out.splitlines()[0]
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("image"))
    assert header.split() == ["image", *[m if m != "MSE" else "MSE(-)" for m in PROFILES["cddfuse"].metrics]]
    assert any(line.startswith("a.png") for line in lines)
    assert any(line.startswith("mean") for line in lines)
    assert "c.png: size mismatch" in out
    assert "d.png: no infrared partner" in out


def test_cli_comparison_json_csv(folders, tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(
        [
            "--ir", str(folders["ir"]), "--vi", str(folders["vi"]),
            "--fused", str(folders["m1"]), "--fused", str(folders["m2"]),
            "--profile", "tdfusion", "--metrics", "EN,SSIM", "MSE",
            "--json", str(js), "--csv", str(cs), "--no-progress",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "profile: tdfusion" in out.splitlines()[0]
    comp = out[out.index("== comparison") :].splitlines()
    assert "profile tdfusion" in comp[0]
    assert comp[1].split() == ["method", "EN", "SSIM", "MSE(-)"]
    rows = {r.split()[0]: r.split()[1:] for r in comp[3:5]}
    assert set(rows) == {"m1", "m2"}
    for col in range(3):  # exactly one best (no ties on these images) per metric
        assert sum(rows[m][col].endswith("*") for m in rows) == 1

    data = json.loads(js.read_text())
    assert data["profile"] == "tdfusion"
    assert data["metrics"] == ["EN", "SSIM", "MSE"]
    assert data["higher_is_better"] == {"EN": True, "SSIM": True, "MSE": False}
    assert set(data["methods"]["m1"]["images"]) == {"a.png", "b.png"}
    assert set(data["methods"]["m1"]["errors"]) == {"c.png", "d.png"}
    assert data["methods"]["m2"]["n_images"] == 2
    mse = {m: data["methods"][m]["mean"]["MSE"] for m in ("m1", "m2")}
    assert data["best"]["MSE"] == [min(mse, key=mse.get)]

    with open(cs, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["image"] for r in table if r["method"] == "m1"} == {"a.png", "b.png", "c.png", "d.png", "mean"}
    err_row = next(r for r in table if r["image"] == "c.png")
    assert err_row["EN"] == "" and "size mismatch" in err_row["error"]
    mean_row = next(r for r in table if r["method"] == "m2" and r["image"] == "mean")
    assert float(mean_row["MSE"]) == pytest.approx(data["methods"]["m2"]["mean"]["MSE"])


def test_cli_vifb_profile_on_colour_fused(folders, tmp_path, capsys):
    fused = tmp_path / "colour"
    fused.mkdir()
    for i, n in enumerate("ab"):
        cv2.imwrite(str(fused / f"{n}.png"), _scene(20 + i, colour=True))
    rc = main(["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(fused),
               "--profile", "vifb", "--summary", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "profile: vifb" in out
    assert "Qcb" in out and "Qcv(-)" in out and "CE(-)" in out
    assert "a.png" not in out  # --summary: means only


def test_cli_usage_errors(folders, tmp_path, capsys):
    base = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--no-progress"]
    assert main([*base, "--fused", str(folders["m1"]), "--metrics", "Qcb"]) == 2
    assert "has no metric 'Qcb'" in capsys.readouterr().err
    assert main([*base, "--fused", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--fused", str(folders["m1"]), "--profile", "matlab"])


def test_cli_source_options_and_profile_choice(folders, capsys):
    """``--a``/``--b`` are ``--ir``/``--vi``; ``--metrics`` that only one other profile has pick it
    (and say so), an explicit ``--profile`` is kept and the error names what it has."""
    base = ["--fused", str(folders["m2"]), "--no-progress", "--summary"]
    assert main(["--a", str(folders["ir"]), "--b", str(folders["vi"]), *base, "--metrics", "Qabf"]) == 0
    by_letter = capsys.readouterr().out
    assert main(["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), *base, "--metrics", "Qabf"]) == 0
    assert capsys.readouterr().out == by_letter
    assert main(["--a", str(folders["ir"]), "--b", str(folders["vi"]), *base, "--metrics", "RMSE"]) == 0
    captured = capsys.readouterr()
    assert "profile 'vifb'" in captured.err and "profile: vifb" in captured.out
    assert (
        main(["--a", str(folders["ir"]), "--b", str(folders["vi"]), *base, "--metrics", "RMSE", "--profile", "cddfuse"])
        == 2
    )
    assert "profile 'cddfuse' has no metric 'RMSE'" in capsys.readouterr().err
    assert main(["--a", str(folders["ir"]), "--b", str(folders["vi"]), *base, "--metrics", "EI"]) == 2  # vifb and mefb
    assert "has no metric 'EI'" in capsys.readouterr().err


def test_cli_nothing_evaluable(folders, tmp_path, capsys):
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"")  # zero bytes
    (only_bad / "b.png").write_bytes(b"garbage")
    rc = main(["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(only_bad), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "a.png: cannot read image" in out and "empty file" in out
    assert "b.png: cannot read image" in out


def test_unreadable_source_and_workers(folders, capsys):
    (folders["vi"] / "b.png").write_bytes(b"broken")
    serial = evaluate_folders(folders["ir"], folders["vi"], [folders["m1"]], progress=False)
    parallel = evaluate_folders(folders["ir"], folders["vi"], [folders["m1"]], progress=False, workers=2)
    for res in (serial, parallel):
        errs = {r.name: r.error for r in res.methods[0].errors}
        assert "source unreadable" in errs["b.png"]
    a_s = serial.methods[0].records[0].values
    a_p = parallel.methods[0].records[0].values
    assert a_s == a_p


def test_progress_bar_goes_to_stderr(folders, capsys):
    evaluate_folders(folders["ir"], folders["vi"], [folders["m2"]], progress=True)
    captured = capsys.readouterr()
    assert "eval [cddfuse]" in captured.err
    assert captured.out == ""


def test_format_table():
    t = format_table(["name", "x"], [["a", "1.0"], ["long name", "10.25"]])
    lines = t.splitlines()
    assert lines[0] == "name           x"
    assert lines[2] == "a            1.0"
    assert lines[3] == "long name  10.25"
    assert all(ord(ch) < 128 for ch in t)


def test_nan_means_skip_nan(folders):
    res = evaluate_folders(folders["ir"], folders["vi"], [folders["m1"]], progress=False, metrics=["EN"])
    res.methods[0].evaluated[0].values["EN"] = float("nan")
    assert res.means()["m1"]["EN"] == res.methods[0].evaluated[1].values["EN"]
    res.methods[0].evaluated[1].values["EN"] = float("nan")
    assert math.isnan(res.means()["m1"]["EN"])
    assert res.best()["EN"] == []


def test_results_file_naming_an_input_is_refused_before_scoring(folders, tmp_path, capsys, monkeypatch):
    import metaloss.cli.eval as eval_command

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the results file was checked")

    monkeypatch.setattr(eval_command, "evaluate_folders", no_scoring)
    (tmp_path / "link").symlink_to(folders["m2"])
    base = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(folders["m1"]),
            "--fused", str(folders["m2"]), "--no-progress"]  # fmt: skip
    before = {p: p.read_bytes() for d in ("ir", "vi", "m1", "m2") for p in folders[d].iterdir()}
    cases = [
        ("--json", folders["ir"] / "a.png", folders["ir"] / "a.png"),  # a source image
        ("--csv", tmp_path / "link" / "a.jpg", folders["m2"] / "a.jpg"),  # a fused image, through a link
        ("--json", folders["vi"] / ".." / "m1", folders["m1"]),  # a fused folder
    ]
    for option, target, clash in cases:
        assert main([*base, option, str(target)]) == 2
        assert capsys.readouterr() == (
            "",
            (
                f"metaloss eval: error: {option} {str(target)!r} is the input {str(clash)!r}; "
                "write the results to another file\n"
            ),
        )
    assert main([*base, "--csv", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"metaloss eval: error: --csv {str(tmp_path)!r} is a folder; give a file name\n"
    assert {p: p.read_bytes() for d in ("ir", "vi", "m1", "m2") for p in folders[d].iterdir()} == before


def test_source_pairs_without_a_fused_image_are_warned_and_recorded(folders, tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    sources = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"])]
    fused = ["--fused", str(folders["m1"]), "--fused", str(folders["m2"])]
    rc = main([*sources, *fused, "--metrics", "EN", "--json", str(js), "--csv", str(cs), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err == (
        f"warning: m2: 1 source pair(s) have no fused image in {str(folders['m2'])!r} and are left out of its means: "
        "c.png\n"
    )
    assert "(2 evaluated, 0 with problems, 1 source pair(s) without a fused image)" in out
    methods = json.loads(js.read_text())["methods"]
    assert (methods["m1"]["missing"], methods["m2"]["missing"]) == ([], ["c.png"])
    with open(cs, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "m2"]
    assert [(r["image"], r["EN"], r["error"]) for r in rows if r["image"] == "c.png"] == [
        ("c.png", "", "no fused image")
    ]


def test_missing_warning_names_ten_pairs_then_counts(tmp_path):
    from metaloss.cli.eval import format_missing

    d = {k: tmp_path / k for k in ("ir", "vi", "fused")}
    for p in d.values():
        p.mkdir()
    names = [f"{i:02d}.png" for i in range(12)]
    for n in names:
        cv2.imwrite(str(d["ir"] / n), _scene(0, h=8, w=8))
        cv2.imwrite(str(d["vi"] / n), _scene(1, h=8, w=8))
    cv2.imwrite(str(d["ir"] / "ir_only.png"), _scene(0, h=8, w=8))  # not a pair: never missing
    res = evaluate_folders(d["ir"], d["vi"], d["fused"], progress=False)
    assert res.methods[0].missing == names
    assert format_missing(res).endswith(f": {', '.join(names[:10])} and 2 more\n")


def test_two_sources_of_one_stem_are_a_usage_error(folders, capsys):
    cv2.imwrite(str(folders["vi"] / "a.jpg"), _scene(0))
    assert (
        main(["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(folders["m1"]), "--no-progress"])
        == 2
    )
    assert (
        capsys.readouterr().err
        == f"metaloss eval: error: {folders['vi']}: several images with one name: a.jpg and a.png\n"
    )


def test_one_folder_summary_stars_nothing(folders, capsys):
    base = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--metrics", "EN,SSIM", "--no-progress"]
    assert main([*base, "--fused", str(folders["m2"]), "--summary"]) == 0
    out = capsys.readouterr().out
    means = out[out.index("== means") :].splitlines()
    assert "best" not in means[0] and "*" not in "\n".join(means)
    assert means[3].split()[0] == "m2" and len(means[3].split()) == 3  # the label and the two means


def test_fused_folders_of_different_image_sets_are_warned(folders, tmp_path, capsys):
    fewer = tmp_path / "m3"
    fewer.mkdir()
    (fewer / "a.jpg").write_bytes((folders["m2"] / "a.jpg").read_bytes())
    base = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--metrics", "EN", "--no-progress"]
    assert main([*base, "--fused", str(folders["m1"]), "--fused", str(fewer)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: the fused folders hold different image sets (m1: 2, m3: 1 images scored; 1 in all), so the "
        "comparison's means are over different images; not in every folder: b\n"
    ) in err
    assert main([*base, "--fused", str(folders["m1"]), "--fused", str(folders["m2"])]) == 0
    assert "different image sets" not in capsys.readouterr().err  # a and b scored in both
