"""Dataset loaders on their real layouts: labels written here in each format, images real where we have them."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from metaloss.data.benchmarks import FMB, LLVIP, M3FD, MSRS, Harvard, PairFolders
from metaloss.data.folders import DatasetError, read_voc_boxes, read_yolo_boxes, to_unit_gray


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def voc(path: Path, w: int, h: int, objects: list[tuple[str, int, int, int, int]]) -> Path:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"
    )
    return path


def test_to_unit_gray_matches_opencv_luma():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    expected = cv2.cvtColor(rgb[..., ::-1].astype(np.float32), cv2.COLOR_BGR2GRAY) / 255
    assert np.allclose(to_unit_gray(rgb), expected, atol=1e-6)
    assert to_unit_gray(np.full((2, 2), 65535, np.uint16)).max() == 1.0


def test_msrs_on_real_images_with_written_labels(tmp_path, shared_data):
    src = shared_data / "msrs8"
    names = sorted(p.name for p in (src / "ir").iterdir())[:3]
    for part in ("train", "test"):
        for name in names:
            link(src / "ir" / name, tmp_path / part / "ir" / name)
            link(src / "vi" / name, tmp_path / part / "vi" / name)
            mask = np.zeros((480, 640), np.uint8)
            mask[100:200, 50:300] = 2  # person
            mask[300:, :] = 1  # car
            write_png(tmp_path / part / "Segmentation_labels" / name, mask)
    ds = MSRS(str(tmp_path), split="train")
    assert len(ds) == 3 and ds.num_classes == 9
    s = ds[0]
    assert s["ir"].shape == s["vi"].shape == (1, 480, 640) and s["mask"].shape == (480, 640)
    assert 0 <= s["ir"].min() and s["vi"].max() <= 1 and s["vi"].std() > 0.01  # real content
    assert set(s["mask"].unique().tolist()) == {0, 1, 2} and s["mask"][150, 100] == 2
    assert len(MSRS(str(tmp_path), split="val")) == 3


def test_fmb_layout_and_ignore_label(tmp_path):
    for part in ("train", "test"):
        write_png(tmp_path / part / "Infrared" / "a.png", np.full((6, 8), 40, np.uint8))
        write_png(tmp_path / part / "Visible" / "a.png", np.full((6, 8, 3), 90, np.uint8))
        label = np.full((6, 8), 255, np.uint8)
        label[:3] = 14
        write_png(tmp_path / part / "Label" / "a.png", label)
    ds = FMB(str(tmp_path))
    s = ds[0]
    assert ds.num_classes == 15 and ds.ignore_index == 255
    assert set(s["mask"].unique().tolist()) == {14, 255}
    assert s["vi"][0, 0, 0].item() == pytest.approx(90 / 255)


def test_llvip_voc_boxes_on_real_images(tmp_path, shared_data):
    src = shared_data / "llvip" / "test"
    name = sorted(p.name for p in (src / "ir").iterdir())[0]
    link(src / "ir" / name, tmp_path / "infrared" / "test" / name)
    link(src / "vi" / name, tmp_path / "visible" / "test" / name)
    voc(tmp_path / "Annotations" / f"{Path(name).stem}.xml", 1280, 1024, [("person", 128, 256, 384, 768)])
    ds = LLVIP(str(tmp_path), split="test")
    s = ds[0]
    assert s["ir"].shape == (1, 1024, 1280) and ds.num_box_classes == 1
    assert torch.allclose(s["boxes"], torch.tensor([[0, 0.2, 0.5, 0.2, 0.5]]))


def test_m3fd_maps_classes_by_name_not_position(tmp_path):
    for i in range(5):
        write_png(tmp_path / "Ir" / f"{i:05d}.png", np.zeros((10, 20), np.uint8))
        write_png(tmp_path / "Vis" / f"{i:05d}.png", np.zeros((10, 20, 3), np.uint8))
        voc(tmp_path / "Annotation" / f"{i:05d}.xml", 20, 10, [("Truck", 0, 0, 10, 10), ("people", 10, 0, 20, 5)])
    train, val = M3FD(str(tmp_path), split="train"), M3FD(str(tmp_path), split="val")
    assert len(train) == 4 and len(val) == 1
    assert not {p.name for p in train.pairs} & {p.name for p in val.pairs}
    boxes = train[0]["boxes"]
    assert boxes[:, 0].tolist() == [5, 0]  # Truck is class 5, People class 0, whatever the XML order
    assert boxes[0, 1:].tolist() == pytest.approx([0.25, 0.5, 0.5, 1.0])


def test_voc_unknown_class_and_broken_files(tmp_path):
    path = voc(tmp_path / "a.xml", 10, 10, [("dog", 0, 0, 5, 5)])
    with pytest.raises(DatasetError, match="unknown class 'dog'"):
        read_voc_boxes(path, {"person": 0})
    assert len(read_voc_boxes(path, {"person": 0}, ignore_unknown=True)) == 0
    (tmp_path / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"b\.xml"):
        read_voc_boxes(tmp_path / "b.xml", {"person": 0})


def test_yolo_txt_labels(tmp_path):
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.1 0.1\n")
    assert torch.allclose(
        read_yolo_boxes(tmp_path / "a.txt", 2), torch.tensor([[1, 0.5, 0.5, 0.2, 0.4], [0, 0.1, 0.2, 0.1, 0.1]])
    )
    assert read_yolo_boxes(tmp_path / "missing.txt").shape == (0, 5)
    (tmp_path / "b.txt").write_text("3 0.5 0.5 0.2 0.4\n")
    with pytest.raises(DatasetError, match=r"b.txt:1: class '3'"):
        read_yolo_boxes(tmp_path / "b.txt", 2)
    (tmp_path / "c.txt").write_text("0 0.5 1.5 0.2 0.4\n")
    with pytest.raises(DatasetError, match=r"c\.txt:1"):
        read_yolo_boxes(tmp_path / "c.txt", 2)


def test_pair_folders_on_real_roadscene_and_tno(shared_data):
    rs = PairFolders(str(shared_data / "roadscene"))
    assert len(rs) == 221
    s = rs[0]
    assert s["ir"].shape == s["vi"].shape and s["name"] == rs.pairs[0].name
    tno = PairFolders(str(shared_data / "tno25"), val_fraction=0.2, split="val")
    assert len(tno) == 5
    assert len(PairFolders(str(shared_data / "tno25"), val_fraction=0.2)) == 20


def test_pair_folders_with_yolo_labels_and_masks(tmp_path):
    for n in ("a", "b"):
        write_png(tmp_path / "ir" / f"{n}.png", np.zeros((8, 8), np.uint8))
        write_png(tmp_path / "vi" / f"{n}.png", np.zeros((8, 8), np.uint8))
        write_png(tmp_path / "masks" / f"{n}.png", np.ones((8, 8), np.uint8))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = PairFolders(str(tmp_path), labels="labels", box_class_names=("thing",))
    assert ds[0]["boxes"].shape == (1, 5) and ds[1]["boxes"].shape == (0, 5)
    ds = PairFolders(str(tmp_path), masks="masks", class_names=("bg", "fg"))
    assert ds[1]["mask"].sum() == 64 and ds.num_classes == 2


def test_unpaired_files_are_listed_not_skipped(tmp_path):
    write_png(tmp_path / "ir" / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "ir" / "lonely.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "vi" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"lonely.png has no partner"):
        PairFolders(str(tmp_path))
    assert len(PairFolders(str(tmp_path), allow_unpaired=True)) == 1


def test_size_mismatch_names_both_files(tmp_path):
    write_png(tmp_path / "ir" / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "vi" / "a.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(DatasetError, match=r"ir/a.png is \(4, 4\) but .*vi/a.png is \(4, 6\)"):
        PairFolders(str(tmp_path))[0]


@pytest.mark.parametrize("cls", [MSRS, FMB, LLVIP, M3FD, PairFolders, Harvard])
def test_missing_root_says_where_to_get_it_and_the_layout(cls, tmp_path):
    with pytest.raises(DatasetError) as info:
        cls(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "does not exist" in message and "layout" in message and str(tmp_path / "nowhere") in message
    if cls is not PairFolders:
        assert "http" in message


# -- ReFusion's other fusion tasks: multi-focus, multi-exposure, the Harvard atlas (issue 21) -------------


def test_multi_focus_folders_pair_across_extensions_and_exclude_a_test_set(shared_data):
    mfif = shared_data / "mfif"
    every = PairFolders(str(mfif), a="A", b="B")
    assert len(every) == 80
    assert {p.a.suffix.lower() for p in every.pairs} >= {".jpg", ".png", ".bmp"}  # JPEG, PNG and BMP pairs
    train = PairFolders(str(mfif), a="A", b="B", exclude=("lytro_*",), val_fraction=0.1)
    val = PairFolders(str(mfif), a="A", b="B", exclude=("lytro_*",), val_fraction=0.1, split="val")
    assert len(train) == 54 and len(val) == 6
    assert not any(p.name.startswith("lytro_") for p in train.pairs + val.pairs)
    sample = train[0]
    assert sample["ir"].shape == sample["vi"].shape and sample["ir"].shape[0] == 1  # luma of colour sources
    with pytest.raises(DatasetError, match="exclude"):
        PairFolders(str(mfif), a="A", b="B", exclude=("*",))


def test_multi_exposure_folders_read_tiff_and_the_infrared_visible_spelling(shared_data):
    mef = PairFolders(str(shared_data / "mef"), a="under", b="over")
    assert len(mef) == 69
    tiff = next(i for i, p in enumerate(mef.pairs) if p.a.suffix.lower() in (".tif", ".tiff"))
    sample = mef[tiff]
    assert 0.0 <= float(sample["ir"].min()) and float(sample["vi"].max()) <= 1.0
    assert float(sample["vi"].mean()) > float(sample["ir"].mean())  # over-exposed is brighter
    same = PairFolders(str(shared_data / "mef"), ir="under", vi="over")
    assert [p.name for p in same.pairs] == [p.name for p in mef.pairs]
    with pytest.raises(DatasetError, match=r"data\.a and data\.ir"):
        PairFolders(str(shared_data / "mef"), a="under", ir="under", b="over")


def test_harvard_reads_all_three_modalities_with_a_held_out_part_of_each(shared_data):
    root = str(shared_data / "medical" / "harvard")
    train, val = Harvard(root), Harvard(root, split="val")
    counts = {m: sum(p.name.startswith(m + "_") for p in train.pairs + val.pairs) for m in ("CT", "PET", "SPECT")}
    assert counts == {"CT": 160, "PET": 245, "SPECT": 333}
    assert {p.name.split("_")[0] for p in val.pairs} == {"CT", "PET", "SPECT"}
    assert not {p.name for p in train.pairs} & {p.name for p in val.pairs}
    pet = next(p for p in val.pairs if p.name.startswith("PET_"))
    assert pet.a.parent.name == "PET" and pet.b.parent.name == "MRI"  # source a: the functional image
    sample = val[val.pairs.index(pet)]
    assert sample["ir"].shape == (1, 256, 256) and sample["vi"].shape == (1, 256, 256)
    assert len(Harvard(root, modalities=["CT"])) == 144
    with pytest.raises(DatasetError, match="PET-MRI"):
        Harvard(str(shared_data / "mfif"), modalities=["PET"])


def test_colour_on_both_sides_is_fused_and_pseudo_colour_is_kept(shared_data):
    from metaloss.data.color import fuse_chroma
    from metaloss.data.images import load_pair

    mfif = shared_data / "mfif"
    a, b = next((mfif / "A").glob("lytro_01.*")), next((mfif / "B").glob("lytro_01.*"))
    pair = load_pair(a, b)
    assert pair.ir.is_color and pair.vi.is_color and pair.chroma is not None
    assert torch.allclose(pair.chroma, fuse_chroma([pair.ir.cbcr, pair.vi.cbcr]))  # both sides' chroma
    harvard = shared_data / "medical" / "harvard" / "PET-MRI"
    name = sorted((harvard / "PET").iterdir())[0].name
    pet = load_pair(harvard / "PET" / name, harvard / "MRI" / name)
    assert pet.ir.is_color and not pet.vi.is_color
    assert torch.equal(pet.chroma, pet.ir.cbcr)  # the pseudo-colour of PET, kept as it is
