"""The fusion benchmarks' own folder layouts (registered in ``metaloss.datasets``).

Each dataset reads the layout its authors distribute; ``split`` "train" reads the training part,
"val" and "test" the test part (M3FD has no official split: a fixed random ``val_fraction``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from metaloss.data.folders import (
    DatasetError,
    MismatchedSize,
    Pair,
    PairedFolderDataset,
    match_pairs,
    read_voc_boxes,
    split_names,
)

Split = Literal["train", "val", "test"]


def _split_dir(split: str) -> str:
    return "train" if split == "train" else "test"


class PairFolders(PairedFolderDataset):
    """Any folder of registered pairs: ``root/<a>/``, ``root/<b>/`` (one stem per pair, any image
    extensions), optionally ``root/<masks>/`` (class-index PNGs) or ``root/<labels>/`` (YOLO txt; box
    class names from ``box_class_names``, else from a ``classes.txt`` there).
    RoadScene, TNO, multi-focus (``a = "A"``, ``b = "B"``), multi-exposure (``a = "under"``,
    ``b = "over"``).  ``ir``/``vi`` are the infrared–visible spelling of ``a``/``b``.  ``split`` reads
    ``root/<split>/`` when that folder exists; otherwise the whole root, of which a fixed random
    ``val_fraction`` is held out for "val"/"test" (0: every split sees all pairs).  ``exclude``: stems
    matching any of these shell patterns (``"lytro_*"``) are left out of every split, e.g. a test set
    kept out of training.  A pair of two sizes is an error unless ``mismatched_size`` says which image
    to resize.
    """

    source = "any folder of registered image pairs"
    layout = "  ROOT/<a>/NAME.png  ROOT/<b>/NAME.jpg  [ROOT/masks/NAME.png | ROOT/labels/NAME.txt]"

    def __init__(
        self,
        root: str,
        a: str | None = None,
        b: str | None = None,
        ir: str | None = None,
        vi: str | None = None,
        masks: str | None = None,
        labels: str | None = None,
        class_names: tuple[str, ...] = (),
        box_class_names: tuple[str, ...] = (),
        val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        exclude: tuple[str, ...] = (),
        allow_unpaired: bool = False,
        mismatched_size: MismatchedSize = "error",
        split: Split = "train",
    ):
        folder_a, folder_b = source_folders(a, b, ir, vi)
        base = self.check_root(root)
        has_split_dirs = (base / split).is_dir()
        base = base / split if has_split_dirs else base
        pairs = match_pairs(base / folder_a, base / folder_b, allow_unpaired)
        pairs = [p for p in pairs if not any(fnmatch.fnmatchcase(p[0], pattern) for pattern in exclude)]
        if not pairs:
            raise DatasetError(f"{base}: every pair matches data.exclude = {list(exclude)}")
        if val_fraction and not has_split_dirs:
            keep = set(split_names([p[0] for p in pairs], split, val_fraction))
            pairs = [p for p in pairs if p[0] in keep]
        if masks and labels:
            raise DatasetError("give masks or labels, not both")
        if labels and not (base / labels).is_dir():
            raise DatasetError(f"{base / labels}: no such folder (data.labels = {labels!r})")
        if labels and not box_class_names and (base / labels / "classes.txt").is_file():
            box_class_names = read_class_names(base / labels / "classes.txt")
        records = []
        for stem, a_path, b_path in pairs:
            mask = boxes = None
            if masks:
                mask = _find_label(base / masks, stem, (".png", ".bmp", ".tif", ".tiff"))
            if labels:
                boxes = base / labels / f"{stem}.txt"
            records.append(Pair(stem, a_path, b_path, mask, boxes))
        super().__init__(records)
        self.class_names, self.box_class_names = tuple(class_names), tuple(box_class_names)
        self.mismatched_size = mismatched_size


def source_folders(a: str | None, b: str | None, ir: str | None, vi: str | None) -> tuple[str, str]:
    """The two source folders from ``a``/``b`` or their infrared–visible spelling ``ir``/``vi``
    (default ``ir``, ``vi``); a source given under both names is refused."""
    for name, alias, value, other in (("a", "ir", a, ir), ("b", "vi", b, vi)):
        if value is not None and other is not None:
            raise DatasetError(f"data.{name} and data.{alias} name the same source folder; give one of them")
    return a or ir or "ir", b or vi or "vi"


class Harvard(PairedFolderDataset):
    """The Harvard whole-brain atlas as the medical fusion collections distribute it:
    ``root/<M>-MRI/<M>/NAME.png`` with ``root/<M>-MRI/MRI/NAME.png`` for M in ``modalities``
    (CT, PET, SPECT).  Source a is the CT/PET/SPECT image (PET and SPECT in pseudo-colour: their luma
    here, their chroma kept by ``metaloss fuse``), source b the MRI, as ReFusion's medical model.
    One dataset for all modalities, as ReFusion trains one medical model; a pair's name is
    ``<M>_NAME``.  A fixed random ``val_fraction`` of each modality is held out for "val"/"test".
    """

    source = "the Harvard whole-brain atlas (https://www.med.harvard.edu/aanlib/), as paired by e.g. CDDFuse"
    layout = "  ROOT/CT-MRI/{CT,MRI}/NAME.png  ROOT/PET-MRI/{PET,MRI}/NAME.png  ROOT/SPECT-MRI/{SPECT,MRI}/NAME.png"

    def __init__(
        self,
        root: str,
        modalities: Sequence[Literal["CT", "PET", "SPECT"]] = ("CT", "PET", "SPECT"),
        val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1,
        allow_unpaired: bool = False,
        split: Split = "train",
    ):
        base = self.check_root(root)
        if not modalities:
            raise DatasetError("data.modalities is empty; name at least one of CT, PET, SPECT")
        records = []
        for modality in modalities:
            folder = base / f"{modality}-MRI"
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder}: missing (data.modalities names {modality}); expected layout:\n{self.layout}"
                )
            pairs = match_pairs(folder / modality, folder / "MRI", allow_unpaired)
            keep = set(split_names([p[0] for p in pairs], split, val_fraction))
            records += [Pair(f"{modality}_{s}", a, b) for s, a, b in pairs if s in keep]
        super().__init__(records)


def _find_label(folder: Path, stem: str, extensions: tuple[str, ...]) -> Path:
    """The label mask of ``stem`` in ``folder``: the first extension found, else the first one's path,
    whose absence the label scan reports (a task that needs no masks never reads it)."""
    for ext in extensions:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return folder / f"{stem}{extensions[0]}"


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` beside YOLO label files, one per line in id order: ``name``
    or ``id name`` (as MSRS's labels write it)."""
    names = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) == 2 and parts[0].isdigit():
            if int(parts[0]) != number:
                raise DatasetError(f"{path}:{number + 1}: class id {parts[0]} out of order (expected {number})")
            parts = parts[1:]
        names.append(parts[0].strip())
    return tuple(names)


class MSRS(PairedFolderDataset):
    """MSRS (Tang et al., PIAFusion): 9 segmentation classes, class-index PNG labels."""

    class_names = ("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
    source = "https://github.com/Linfeng-Tang/MSRS"
    layout = (
        "  ROOT/{train,test}/ir/NAME.png\n  ROOT/{train,test}/vi/NAME.png\n"
        "  ROOT/{train,test}/Segmentation_labels/NAME.png"
    )

    def __init__(self, root: str, labels: bool = True, allow_unpaired: bool = False, split: Split = "train"):
        base = self.check_root(root) / _split_dir(split)
        pairs = match_pairs(base / "ir", base / "vi", allow_unpaired)
        super().__init__(
            [
                Pair(s, i, v, _find_label(base / "Segmentation_labels", s, (".png",)) if labels else None)
                for s, i, v in pairs
            ]
        )


class FMB(PairedFolderDataset):
    """FMB (Liu et al., SegMiF): 15 label ids (0 = background/unlabelled, 1-14 classes), 255 ignored."""

    class_names = (
        "unlabelled",
        "road",
        "sidewalk",
        "building",
        "traffic_light",
        "traffic_sign",
        "vegetation",
        "sky",
        "person",
        "car",
        "truck",
        "bus",
        "motorcycle",
        "bicycle",
        "pole",
    )
    source = "https://github.com/JinyuanLiu-CV/SegMiF"
    layout = (
        "  ROOT/{train,test}/Infrared/NAME.png\n  ROOT/{train,test}/Visible/NAME.png\n"
        "  ROOT/{train,test}/Label/NAME.png"
    )

    def __init__(self, root: str, labels: bool = True, allow_unpaired: bool = False, split: Split = "train"):
        base = self.check_root(root) / _split_dir(split)
        pairs = match_pairs(base / "Infrared", base / "Visible", allow_unpaired)
        super().__init__(
            [Pair(s, i, v, _find_label(base / "Label", s, (".png",)) if labels else None) for s, i, v in pairs]
        )


class _VOCDetection(PairedFolderDataset):
    ignore_unknown_classes = False

    def read_boxes(self, path: Path) -> torch.Tensor:
        if not path.is_file():
            raise DatasetError(f"{path}: annotation file missing")
        ids = {name: i for i, name in enumerate(self.box_class_names)}
        return read_voc_boxes(path, ids, ignore_unknown=self.ignore_unknown_classes)


class LLVIP(_VOCDetection):
    """LLVIP (Jia et al.): pedestrian detection, Pascal-VOC XML boxes of class ``person``."""

    box_class_names = ("person",)
    source = "https://bupt-ai-cz.github.io/LLVIP/"
    layout = "  ROOT/infrared/{train,test}/NAME.jpg\n  ROOT/visible/{train,test}/NAME.jpg\n  ROOT/Annotations/NAME.xml"

    def __init__(self, root: str, labels: bool = True, allow_unpaired: bool = False, split: Split = "train"):
        base = self.check_root(root)
        part = _split_dir(split)
        pairs = match_pairs(base / "infrared" / part, base / "visible" / part, allow_unpaired)
        super().__init__(
            [Pair(s, i, v, boxes=base / "Annotations" / f"{s}.xml" if labels else None) for s, i, v in pairs]
        )


class M3FD(_VOCDetection):
    """M3FD (Liu et al., TarDAL): 6 detection classes, mapped by name from its VOC XML files."""

    box_class_names = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
    source = "https://github.com/JinyuanLiu-CV/TarDAL"
    layout = "  ROOT/Ir/NAME.png\n  ROOT/Vis/NAME.png\n  ROOT/Annotation/NAME.xml"

    def __init__(
        self,
        root: str,
        labels: bool = True,
        val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
        allow_unpaired: bool = False,
        split: Split = "train",
    ):
        base = self.check_root(root)
        pairs = match_pairs(base / "Ir", base / "Vis", allow_unpaired)
        keep = set(split_names([p[0] for p in pairs], split, val_fraction))
        super().__init__(
            [
                Pair(s, i, v, boxes=base / "Annotation" / f"{s}.xml" if labels else None)
                for s, i, v in pairs
                if s in keep
            ]
        )
