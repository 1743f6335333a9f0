"""The label scan before a run (metaloss.data.scan) on the real LLVIP (Pascal-VOC) and MSRS (YOLO txt)
labels and on broken copies of them: one message naming the files, never a DataLoader traceback."""

import os
import shutil
from pathlib import Path

import pytest

from metaloss.cli import main
from metaloss.data.benchmarks import LLVIP, PairFolders
from metaloss.data.folders import DatasetError
from metaloss.data.scan import SHOWN, check_labels


def llvip_copy(shared_data: Path, tmp_path: Path) -> Path:
    """``llvip_voc`` with its images linked and its annotations copied (to be broken)."""
    src, dst = shared_data / "llvip_voc", tmp_path / "llvip"
    for folder in ("infrared", "visible"):
        for path in (src / folder).rglob("*.jpg"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    shutil.copytree(src / "Annotations", dst / "Annotations")
    return dst


def msrs_copy(shared_data: Path, tmp_path: Path) -> Path:
    src, dst = shared_data / "msrs8", tmp_path / "msrs8"
    dst.mkdir()
    for folder in ("ir", "vi"):
        os.symlink(src / folder, dst / folder)
    shutil.copytree(src / "labels", dst / "labels")
    return dst


def problems_of(dataset, targets=("boxes",)) -> str:
    with pytest.raises(DatasetError) as err:
        check_labels(dataset, targets, "data (test)")
    return str(err.value)


def test_real_labels_scan_clean(shared_data):
    llvip = LLVIP(str(shared_data / "llvip_voc"))
    msrs = PairFolders(str(shared_data / "msrs8"), labels="labels")
    for dataset in (llvip, msrs):
        assert dataset.label_keys == ("boxes",)
        assert dataset.scan_labels() == []
        check_labels(dataset, ("boxes",), "data")
    assert msrs.box_class_names == ("person", "bicycle", "car")  # from its classes.txt


def test_broken_voc_files_are_named_together(shared_data, tmp_path):
    root = llvip_copy(shared_data, tmp_path)
    names = sorted(p.stem for p in (root / "infrared" / "train").iterdir())
    (root / "Annotations" / f"{names[0]}.xml").unlink()
    (root / "Annotations" / f"{names[1]}.xml").write_text("<annotation><size>")
    xml = root / "Annotations" / f"{names[2]}.xml"
    xml.write_text(xml.read_text().replace(">person<", ">dog<"))
    message = problems_of(LLVIP(str(root)))
    assert message.startswith("data (test): 3 label problem(s)")
    assert f"{names[0]}.xml: annotation file missing" in message
    assert f"{names[1]}.xml: not a readable Pascal-VOC XML file" in message
    assert f"{names[2]}.xml: unknown class 'dog'" in message


def test_many_problems_show_the_first_few_and_a_count(shared_data, tmp_path):
    root = llvip_copy(shared_data, tmp_path)
    for xml in (root / "Annotations").iterdir():
        xml.write_text("garbage")
    n = len(list((root / "infrared" / "train").iterdir()))
    message = problems_of(LLVIP(str(root)))
    assert f"{n} label problem(s)" in message
    assert message.count("not a readable Pascal-VOC XML file") == SHOWN
    assert message.endswith(f"... and {n - SHOWN} more")


def test_yolo_class_id_out_of_range_is_named(shared_data, tmp_path):
    root = msrs_copy(shared_data, tmp_path)
    label = sorted((root / "labels").glob("0*.txt"))[0]
    lines = label.read_text().splitlines()
    label.write_text("\n".join(["3" + lines[0][1:], *lines[1:]]))
    message = problems_of(PairFolders(str(root), labels="labels"))
    assert f"{label}:1: class '3' is not an index below 3" in message


def test_a_task_without_labels_runs_on_a_labelled_layout_without_reading_them(shared_data, tmp_path):
    root = llvip_copy(shared_data, tmp_path)
    shutil.rmtree(root / "Annotations")
    dataset = LLVIP(str(root))
    check_labels(dataset, (), "data")  # reconstruction: no targets
    assert dataset.label_keys == ()
    assert set(dataset[0]) == {"name", "ir", "vi"}


def test_a_task_that_needs_labels_on_a_dataset_without_them(shared_data):
    dataset = PairFolders(str(shared_data / "msrs8"))
    message = problems_of(dataset)
    assert "the objective trains on boxes but the dataset gives no labels" in message


def test_unpaired_image_is_named(shared_data, tmp_path):
    root = llvip_copy(shared_data, tmp_path)
    lonely = sorted((root / "visible" / "train").iterdir())[3]
    lonely.unlink()
    with pytest.raises(DatasetError, match=f"{root / 'infrared' / 'train' / lonely.name} has no partner"):
        LLVIP(str(root))


def config(root: Path, objective: str = "detection", generator: str = "tdfusion") -> str:
    return f"""
name = "scan"
device = "cpu"
[data]
name = "llvip"
root = "{root}"
[learner]
name = "dense"
[loss_generator]
name = "{generator}"
[objective]
name = "{objective}"
"""


def test_run_and_check_report_the_problems_before_training(shared_data, tmp_path, capsys):
    pytest.importorskip("ultralytics")
    root = llvip_copy(shared_data, tmp_path)
    missing = sorted((root / "Annotations").iterdir())[0]
    missing.unlink()
    toml = tmp_path / "exp.toml"
    toml.write_text(config(root))
    assert main(["run", str(toml), "--check"]) == 1
    assert f"{missing}: annotation file missing" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["run", str(toml), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: annotation file missing" in err and "Traceback" not in err
    assert not out.exists()  # nothing written: found before the run started
    toml.write_text(config(root, "reconstruction", "refusion"))
    assert main(["run", str(toml), "--check"]) == 0
    assert "labels: none" in capsys.readouterr().err
