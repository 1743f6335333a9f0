"""Paired image folders and the label formats of the fusion benchmarks.

A pair is two files with the same stem in an infrared and a visible folder (:mod:`metaloss.data.pairs`).
Images are returned as the Y (luma) channel in [0, 1] by the normalisation rule of
:mod:`metaloss.data.images`: 8-bit / 255, 16-bit / 65535, floating-point TIFF as is when already in
[0, 1], else min-max normalised; colour converted with the BT.601 weights OpenCV uses for BGR->GRAY
and YCrCb (Y = 0.299 R + 0.587 G + 0.114 B), alpha dropped.  Grayscale, RGB and RGBA files mix
freely.  The two images of a pair must have one size, unless the dataset is told to resize one of
them (``mismatched_size``).

Labels: class-index PNG masks (MSRS, FMB), Pascal-VOC XML boxes (LLVIP, M3FD) and YOLO txt boxes
(class cx cy w h, normalised).  Boxes come out as [N, 5] = class, cx, cy, w, h normalised to [0, 1].
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from metaloss.data.images import normalise, read_any
from metaloss.data.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from metaloss.data.pairs import PairingError, pair_images

#: what a dataset does with a pair whose images differ in size
MismatchedSize = Literal["error", "resize_ir", "resize_vi"]


class DatasetError(ValueError):
    """A dataset folder is missing, empty or inconsistent; the message names the path."""


def to_unit_gray(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """uint8/uint16/float H x W (x 3 RGB | x 4 RGBA) -> float32 H x W luma in [0, 1]
    (``metaloss.data.images.normalise``; ``ImageReadError`` for NaN/Inf samples)."""
    if image.ndim == 3:
        image = image[..., :3]  # drop alpha
    x = normalise(image, path)
    if x.ndim == 3:
        x = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return np.ascontiguousarray(x, dtype=np.float32)


def load_gray(path: Path) -> torch.Tensor:
    """[1, H, W] float in [0, 1]; any format ``metaloss.data.images.read_any`` decodes (float TIFF too)."""
    return torch.from_numpy(to_unit_gray(read_any(path), path))[None]


def resize_gray(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, H, W] -> [1, *size]: area averaging where it shrinks, bilinear where it enlarges."""
    h, w = size
    shrink = h * w < image.shape[-2] * image.shape[-1]
    out = cv2.resize(image[0].numpy(), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return torch.from_numpy(np.clip(out, 0.0, 1.0).reshape(h, w))[None]


def match_pairs(ir_dir: Path, vi_dir: Path, allow_unpaired: bool = False) -> list[tuple[str, Path, Path]]:
    """(stem, ir path, vi path) for every stem in both folders (``metaloss.data.pairs``); files
    without a partner are an error that lists them (or, with ``allow_unpaired``, are left out)."""
    try:
        pairing = pair_images(ir_dir, vi_dir)
    except PairingError as err:
        raise DatasetError(str(err)) from None
    for folder, found in ((ir_dir, pairing.a), (vi_dir, pairing.b)):
        if not found:
            raise DatasetError(f"{folder}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
    only_ir, only_vi = pairing.only_a, pairing.only_b
    if (only_ir or only_vi) and not allow_unpaired:
        lines = [f"  {p} has no partner in {vi_dir}" for p in only_ir[:10]]
        lines += [f"  {p} has no partner in {ir_dir}" for p in only_vi[:10]]
        more = len(only_ir) + len(only_vi) - len(lines)
        raise DatasetError(
            "unpaired images (set allow_unpaired = true to leave them out):\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    pairs = pairing.pairs
    if not pairs:
        raise DatasetError(f"no image pairs: {ir_dir} and {vi_dir} share no file names")
    return pairs


def read_mask(path: Path) -> torch.Tensor:
    """A class-index PNG (one channel, or three equal channels) -> [H, W] long."""
    image = read_image(path)
    if image.ndim == 3:
        if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])):
            raise ImageReadError(path, "a label mask must hold class indices in one channel (this is a colour image)")
        image = image[..., 0]
    return torch.from_numpy(image.astype(np.int64))


def read_voc_boxes(path: Path, class_ids: dict[str, int], ignore_unknown: bool = False) -> torch.Tensor:
    """Pascal-VOC XML -> [N, 5] (class, cx, cy, w, h normalised by the XML's image size).

    Classes are mapped by *name* (case-insensitive), never by position."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"{path}: not a readable Pascal-VOC XML file ({err})") from None
    size = root.find("size")
    try:
        w, h = float(size.findtext("width")), float(size.findtext("height"))  # type: ignore[union-attr,arg-type]
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{path}: <size> with <width> and <height> is missing") from None
    lookup = {k.lower(): v for k, v in class_ids.items()}
    rows = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name.lower() not in lookup:
            if ignore_unknown:
                continue
            raise DatasetError(f"{path}: unknown class {name!r}; known: {', '.join(class_ids)}")
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{path}: object {name!r} has no valid <bndbox>") from None
        x0, x1 = max(0.0, min(x0, x1)), min(w, max(x0, x1))
        y0, y1 = max(0.0, min(y0, y1)), min(h, max(y0, y1))
        if x1 > x0 and y1 > y0:
            rows.append([lookup[name.lower()], (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def read_yolo_boxes(path: Path, num_classes: int | None = None) -> torch.Tensor:
    """YOLO txt (``class cx cy w h`` per line, normalised) -> [N, 5]; a missing file means no boxes."""
    if not path.is_file():
        return torch.zeros(0, 5)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(v) for v in parts[:5]]
        except ValueError:
            values = []
        if len(parts) != 5 or len(values) != 5 or not all(0 <= v <= 1 for v in values[1:]):
            raise DatasetError(f"{path}:{number}: expected 'class cx cy w h' with coordinates in [0, 1], got {line!r}")
        if values[0] != int(values[0]) or values[0] < 0 or (num_classes is not None and values[0] >= num_classes):
            raise DatasetError(f"{path}:{number}: class {parts[0]!r} is not an index below {num_classes}")
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def check_mask_ids(mask: torch.Tensor, path: Path, num_classes: int, ignore_index: int) -> None:
    """A ``DatasetError`` naming ``path`` when a mask holds ids that are neither a class index below
    ``num_classes`` nor ``ignore_index`` (no check when the classes are unknown: 0)."""
    if not num_classes:
        return
    ids = torch.unique(mask)
    bad = ids[(ids >= num_classes) & (ids != ignore_index)].tolist()
    if bad:
        raise DatasetError(
            f"{path}: label ids {bad[:5]} out of range (classes 0..{num_classes - 1}, ignored {ignore_index})"
        )


#: The label keys of the core's datasets: class-index masks and boxes.
LABEL_KEYS = ("mask", "boxes")


@dataclass(frozen=True)
class Pair:
    """One pair's files: source a (infrared, CT/PET/SPECT, near focus, under-exposed), source b
    (visible, MRI, far focus, over-exposed) and its labels.  In a sample the two sources keep the keys
    ``"ir"`` (a) and ``"vi"`` (b) that every task and loss plugin reads."""

    name: str
    a: Path
    b: Path
    mask: Path | None = None
    boxes: Path | None = None


class PairedFolderDataset(Dataset):
    """Base class: a list of ``Pair`` records read into samples (see ``metaloss.protocols.PairedDataset``)."""

    class_names: tuple[str, ...] = ()
    box_class_names: tuple[str, ...] = ()
    ignore_index = 255
    #: a pair of two sizes: "error", or resize the infrared ("resize_ir") or visible ("resize_vi")
    #: image to the other's size (labels must then have the size of the image that is kept)
    mismatched_size: MismatchedSize = "error"
    #: where to get the data and the layout expected, for the error on a missing root
    source = ""
    layout = ""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_box_classes(self) -> int:
        return len(self.box_class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_boxes(self, path: Path) -> torch.Tensor:
        return read_yolo_boxes(path, self.num_box_classes or None)

    @property
    def label_keys(self) -> tuple[str, ...]:
        """The label keys its samples hold (``"mask"``, ``"boxes"``), for the label scan
        (:mod:`metaloss.data.scan`) to compare with what the task trains on."""
        return tuple(key for key in LABEL_KEYS if any(getattr(p, key) is not None for p in self.pairs))

    def use_labels(self, keys: Sequence[str]) -> None:
        """Read only the labels ``keys`` names: a task that needs none of them (reconstruction) runs on
        a labelled layout without reading, or needing, its label files."""
        drop = {key: None for key in LABEL_KEYS if key not in keys}
        self.pairs = [replace(p, **drop) for p in self.pairs]  # type: ignore[arg-type]

    def scan_labels(self) -> list[str]:
        """Every label file read once (parsed, no image decoded but masks), before any training: one
        line per problem (missing, unreadable, a class id out of range), each naming its file."""
        problems = []
        if any(p.boxes is not None for p in self.pairs) and not self.num_box_classes:
            problems.append(f"{self.pairs[0].boxes}: the dataset names no box classes, so the ids cannot be checked")
        for pair in self.pairs:
            for key, path in (("mask", pair.mask), ("boxes", pair.boxes)):
                if path is None:
                    continue
                try:
                    if key == "mask":
                        check_mask_ids(read_mask(path), path, self.num_classes, self.ignore_index)
                    else:
                        self.read_boxes(path)
                except (DatasetError, ImageReadError) as err:
                    problems.append(str(err))
                except OSError as err:
                    problems.append(f"{path}: cannot read ({err.strerror or err})")
        return problems

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        ir, vi = load_gray(pair.a), load_gray(pair.b)
        if ir.shape != vi.shape:
            if self.mismatched_size == "resize_ir":
                ir = resize_gray(ir, (vi.shape[1], vi.shape[2]))
            elif self.mismatched_size == "resize_vi":
                vi = resize_gray(vi, (ir.shape[1], ir.shape[2]))
            else:
                raise DatasetError(
                    f"pair {pair.name!r}: {pair.a} is {tuple(ir.shape[1:])} but {pair.b} is {tuple(vi.shape[1:])} "
                    "(register them to one size, or set mismatched_size = 'resize_ir' or 'resize_vi' in [data])"
                )
        sample: dict[str, Any] = {"name": pair.name, "ir": ir, "vi": vi}
        if pair.mask is not None:
            mask = read_mask(pair.mask)
            if tuple(mask.shape) != tuple(ir.shape[1:]):
                raise DatasetError(f"{pair.mask} is {tuple(mask.shape)} but its images are {tuple(ir.shape[1:])}")
            sample["mask"] = mask
        if pair.boxes is not None:
            sample["boxes"] = self.read_boxes(pair.boxes)
        return sample

    @classmethod
    def check_root(cls, root: str | Path) -> Path:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DatasetError(
                f"{cls.__name__}: data.root {str(root)!r} does not exist.\n"
                + (f"Get the dataset from {cls.source}\n" if cls.source else "")
                + (f"Expected layout:\n{cls.layout}" if cls.layout else "")
            )
        return path


def split_names(names: Sequence[str], split: str, val_fraction: float, seed: int = 0) -> list[str]:
    """A deterministic train/val split of ``names`` (for datasets without an official split)."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(names)))
    n_val = round(len(names) * val_fraction)
    chosen = order[:n_val] if split in ("val", "test") else order[n_val:]
    return [names[i] for i in sorted(chosen)]
