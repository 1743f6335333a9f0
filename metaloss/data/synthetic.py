"""Synthetic infrared/visible scenes with known objects: deterministic by (seed, split, index).

Infrared: warm objects (people as upright ellipses, vehicles as rounded boxes) on a cooler, smoothly
varying background.  Visible: a textured scene (gratings and blotches, a few structures) in which the
objects carry almost no contrast.  So the objects are found mainly in the infrared image and the
texture mainly in the visible one, which is what a task-driven fusion loss should discover.
Each sample also has the objects' segmentation mask (0 background, 1 person, 2 vehicle) and boxes.

With ``complementary=True`` each modality holds labels the other lacks, as in real scenes (and as
TDFusion argues a task-driven loss should exploit): the visible-only structures become a labelled
class ("marking", mask 3, box class 2) with a clear contrast, and an object occludes the visible
texture behind it with a flat patch near the local mean (its interior has neither texture nor
contrast in the visible image).  The task then needs infrared on the objects and visible on the
markings.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

import cv2
import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")


class SyntheticScenes(Dataset):
    """``num_images`` pairs of ``height`` x ``width``; ``objects`` = (min, max) objects per scene."""

    class_names: tuple[str, ...] = ("background", "person", "vehicle")
    box_class_names: tuple[str, ...] = ("person", "vehicle")
    num_classes = 3
    num_box_classes = 2
    ignore_index = 255
    #: every scene has both (rendered, nothing to scan)
    label_keys = ("mask", "boxes")

    def __init__(
        self,
        num_images: Annotated[int, Field(ge=1)] = 64,
        height: Annotated[int, Field(ge=16)] = 96,
        width: Annotated[int, Field(ge=16)] = 128,
        objects: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = (1, 4),
        seed: int = 0,
        split: Literal["train", "val", "test"] = "train",
        complementary: bool = False,
    ):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if height < 16 or width < 16:
            raise ValueError(f"height and width must be >= 16, got {height}x{width}")
        if not 0 <= objects[0] <= objects[1]:
            raise ValueError(f"objects must be (min, max) with 0 <= min <= max, got {objects}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.num_images, self.height, self.width = num_images, height, width
        self.objects, self.seed, self.split = objects, seed, split
        self.complementary = complementary
        if complementary:
            self.class_names = (*SyntheticScenes.class_names, "marking")
            self.box_class_names = (*SyntheticScenes.box_class_names, "marking")
            self.num_classes, self.num_box_classes = 4, 3

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        ir, vi, mask, boxes = render_scene(self._rng(index), self.height, self.width, self.objects, self.complementary)
        return {
            "name": f"{self.split}_{index:05d}.png",
            "ir": torch.from_numpy(ir)[None],
            "vi": torch.from_numpy(vi)[None],
            "mask": torch.from_numpy(mask).long(),
            "boxes": torch.from_numpy(boxes),
        }


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise blurred to a correlation length of ``scale`` pixels."""
    noise = rng.standard_normal((h, w)).astype(np.float32)
    k = max(3, int(scale * 3) | 1)
    blurred: np.ndarray = cv2.GaussianBlur(noise, (k, k), scale, borderType=cv2.BORDER_REFLECT)
    return (blurred - blurred.mean()) / (blurred.std() + 1e-6)


def render_scene(
    rng: np.random.Generator, h: int, w: int, objects: tuple[int, int], complementary: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ir, vi) float32 [H, W] in [0, 1], mask uint8 [H, W], boxes float32 [N, 5] (class, cx, cy, w, h).

    ``complementary``: labelled visible-only markings and objects occluding the visible texture
    (see the module docstring)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Infrared background: cool, a gentle ramp plus soft blotches.
    ramp = rng.uniform(-0.1, 0.1) * (yy / h) + rng.uniform(-0.1, 0.1) * (xx / w)
    ir = 0.3 + ramp + 0.05 * _smooth_noise(rng, h, w, max(h, w) / 8)
    # Visible: textured scene, gratings at random orientations plus blotches and a few bright structures.
    vi = 0.5 + 0.12 * _smooth_noise(rng, h, w, max(h, w) / 10)
    for _ in range(3):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
        phase = rng.uniform(0, 2 * np.pi)
        vi += rng.uniform(0.04, 0.09) * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    mask = np.zeros((h, w), np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 4))):  # structures seen only in the visible image
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(6, max(7, w // 3))), y0 + int(rng.integers(6, max(7, h // 3)))
        if not complementary:
            vi[y0:y1, x0:x1] += rng.uniform(-0.2, 0.2)
            continue
        x1, y1 = min(x1, w), min(y1, h)
        vi[y0:y1, x0:x1] += rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.25)
        mask[y0:y1, x0:x1] = 3
        boxes.append([2, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        cls = int(rng.integers(1, 3))
        if cls == 1:  # person: upright ellipse
            bh, bw = rng.uniform(0.25, 0.45) * h, 0.0
            bw = bh * rng.uniform(0.3, 0.45)
        else:  # vehicle: wide rounded box
            bw = rng.uniform(0.2, 0.35) * w
            bh = bw * rng.uniform(0.4, 0.6)
        cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
        if cls == 1:
            inside = ((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1
        else:
            dx = np.maximum(np.abs(xx - cx) - bw / 2 * 0.7, 0) / (bw / 2 * 0.3)
            dy = np.maximum(np.abs(yy - cy) - bh / 2 * 0.7, 0) / (bh / 2 * 0.3)
            inside = dx**2 + dy**2 <= 1
        if not inside.any():
            continue
        warmth = rng.uniform(0.7, 0.9)
        ir = np.where(inside, warmth + 0.04 * _smooth_noise(rng, h, w, 2.0), ir)
        if complementary:  # occludes the visible texture: a flat patch near the local mean
            local = float(vi[inside].mean())
            vi = np.where(inside, local + rng.uniform(-0.03, 0.03), vi)
        else:
            vi = np.where(inside, vi + rng.uniform(-0.03, 0.03), vi)  # nearly invisible in the visible image
        mask[inside] = cls
        ys, xs = np.nonzero(inside)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        boxes.append([cls - 1, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    ir = ir + 0.01 * rng.standard_normal((h, w))
    vi = vi + 0.01 * rng.standard_normal((h, w))
    return (
        np.clip(ir, 0, 1).astype(np.float32),
        np.clip(vi, 0, 1).astype(np.float32),
        mask,
        np.asarray(boxes, np.float32).reshape(-1, 5),
    )
