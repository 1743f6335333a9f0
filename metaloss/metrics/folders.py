"""Evaluate folders of fused images (one folder per method) against infrared/visible folders.

Files are paired by name without extension (:mod:`metaloss.data.pairs`): ``fused/x.png`` goes with
``ir/x.jpg`` and ``vi/x.png``; two sources of one stem in a folder are refused.
Problems are reported per fused file (missing partner, unreadable file, size mismatch) and do not
stop the evaluation; source pairs with no fused image in a folder are listed as that folder's
``missing``, since its means leave them out. All fused images of one source pair (one per method)
are evaluated as one batch, so the per-source work is done once per pair.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metaloss.data.io import ImageReadError, read_gray_cddfuse, read_image
from metaloss.data.pairs import list_images, pair_images
from metaloss.metrics.api import evaluate, min_size
from metaloss.metrics.profiles import DEFAULT_PROFILE, Profile, get_profile

__all__ = [
    "FolderEvaluation",
    "ImageRecord",
    "MethodResult",
    "evaluate_folders",
    "load_image_tensor",
]

#: At most this many fused pixels (B·H·W) in one batch, to bound memory.
MAX_BATCH_PIXELS = 8_000_000
#: The ``error`` of a CSV row for a source pair that has no fused image.
NO_FUSED_IMAGE = "no fused image"


@dataclass
class ImageRecord:
    """One fused file: its metric values, or why it has none."""

    name: str
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class MethodResult:
    """All fused files of one folder (one fusion method), and the source pairs it has no fused image
    for (``missing``: infrared file names), which its means do not cover."""

    label: str
    fused_dir: Path
    records: list[ImageRecord]
    missing: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def evaluated(self) -> list[ImageRecord]:
        return [r for r in self.records if r.ok]

    def mean(self, metrics: Sequence[str]) -> dict[str, float]:
        """Mean of each metric over the evaluated images (NaN values are skipped, like MATLAB's
        ``nanmean`` in VIFB; NaN when no image has a value)."""
        out: dict[str, float] = {}
        for m in metrics:
            vals = [r.values[m] for r in self.evaluated if m in r.values and not math.isnan(r.values[m])]
            out[m] = float(np.mean(vals)) if vals else float("nan")
        return out


@dataclass
class FolderEvaluation:
    """The result of :func:`evaluate_folders`."""

    profile: Profile
    metrics: list[str]
    ir_dir: Path
    vi_dir: Path
    methods: list[MethodResult]

    @property
    def higher_is_better(self) -> dict[str, bool]:
        hib = self.profile.higher_is_better
        return {m: hib[m] for m in self.metrics}

    def means(self) -> dict[str, dict[str, float]]:
        """``{method label: {metric: mean}}``."""
        return {mr.label: mr.mean(self.metrics) for mr in self.methods}

    def best(self) -> dict[str, list[str]]:
        """``{metric: [labels of the methods with the best mean]}`` (ties all listed)."""
        means = self.means()
        out: dict[str, list[str]] = {}
        for m in self.metrics:
            vals = {lab: v[m] for lab, v in means.items() if not math.isnan(v[m])}
            if not vals:
                out[m] = []
                continue
            target = max(vals.values()) if self.higher_is_better[m] else min(vals.values())
            out[m] = [lab for lab, v in vals.items() if v == target]
        return out

    def to_dict(self) -> dict:
        """A JSON-ready summary: profile, metrics with directions, per-image values, errors, means."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "profile": self.profile.name,
            "profile_description": self.profile.description,
            "metrics": list(self.metrics),
            "higher_is_better": self.higher_is_better,
            "ir_dir": str(self.ir_dir),
            "vi_dir": str(self.vi_dir),
            "methods": {
                mr.label: {
                    "fused_dir": str(mr.fused_dir),
                    "images": {r.name: {k: clean(v) for k, v in r.values.items()} for r in mr.evaluated},
                    "errors": {r.name: r.error for r in mr.errors},
                    "missing": list(mr.missing),
                    "mean": {k: clean(v) for k, v in mr.mean(self.metrics).items()},
                    "n_images": len(mr.evaluated),
                }
                for mr in self.methods
            },
            "best": self.best(),
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per (method, image) plus a ``mean`` row per method; an ``error`` column.  A source
        pair with no fused image gets a row under its infrared file name, without values."""
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["profile", "method", "image", *self.metrics, "error"])
            for mr in self.methods:
                for r in mr.records:
                    vals = [("" if r.error else _csv_num(r.values.get(m, float("nan")))) for m in self.metrics]
                    w.writerow([self.profile.name, mr.label, r.name, *vals, r.error or ""])
                for name in mr.missing:
                    w.writerow([self.profile.name, mr.label, name, *[""] * len(self.metrics), NO_FUSED_IMAGE])
                means = mr.mean(self.metrics)
                w.writerow([self.profile.name, mr.label, "mean", *[_csv_num(means[m]) for m in self.metrics], ""])


def _csv_num(v: float) -> str:
    return "nan" if math.isnan(v) else repr(float(v))


# ---------------------------------------------------------------------------------------- files
def load_image_tensor(path: str | os.PathLike[str], profile: str | Profile = DEFAULT_PROFILE) -> Tensor:
    """Read ``path`` as ``profile``'s reference code would: ``[1, C, H, W]`` float64, 0–255.

    ``cddfuse``/``tdfusion``: CDDFuse's ``image_read_cv2(path, 'GRAY')`` (C = 1). ``vifb``, ``mefb``: the
    stored channels (grey C = 1, colour C = 3 in RGB order, alpha dropped), as MATLAB's ``imread``;
    16-bit files are reduced to 8 bits (``>> 8``) as OpenCV's 8-bit read does.
    """
    prof = get_profile(profile)
    if prof.reads == "matlab":
        arr = read_image(path)
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64)
        # channels first in memory too: the metrics work on one channel at a time
        return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()[None]
    return torch.from_numpy(read_gray_cddfuse(path)).to(torch.float64)[None, None]


def _label_dirs(dirs: Sequence[Path]) -> list[str]:
    """Short unique labels: the folder names, with parents added where they collide."""
    labels = [d.name or str(d) for d in dirs]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 8:
        depth += 1
        labels = ["/".join(d.parts[-depth:]) for d in dirs]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab if n == 0 else f"{lab}#{n + 1}")
    return out


def evaluate_folders(
    ir_dir: str | os.PathLike[str],
    vi_dir: str | os.PathLike[str],
    fused_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    profile: str | Profile = DEFAULT_PROFILE,
    metrics: Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    workers: int = 1,
) -> FolderEvaluation:
    """Evaluate every image of each fused folder against its infrared and visible partners.

    Args:
        ir_dir, vi_dir: folders of the sources.
        fused_dirs: one folder or a list of folders (one per method).
        profile, metrics: as for :func:`metaloss.metrics.evaluate`.
        labels: names of the methods (default: the folder names, made unique).
        device: where to compute ("cpu", "cuda", ...).
        progress: show a tqdm progress bar over the fused images (on stderr).
        workers: source pairs evaluated concurrently (threads: the heavy work runs in torch and
            OpenCV, which release the GIL). On a CPU with ``n`` cores, ``workers=n`` with
            ``torch.set_num_threads(1)`` uses them better than one worker with ``n`` torch threads.

    Returns:
        A :class:`FolderEvaluation` with per-image values, per-file errors, means, and per folder
        the source pairs (infrared images with a visible partner) it has no fused image for.
    """
    prof = get_profile(profile)
    specs = prof.resolve([metrics] if isinstance(metrics, str) else metrics)
    names = [s.name for s in specs]
    if isinstance(fused_dirs, (str, os.PathLike)):
        fused_dirs = [fused_dirs]
    fdirs = [Path(d) for d in fused_dirs]
    if not fdirs:
        raise ValueError("no fused folder given")
    if labels is None:
        labels = _label_dirs(fdirs)
    elif len(labels) != len(fdirs):
        raise ValueError("one label per fused folder")
    sources = pair_images(ir_dir, vi_dir)

    # Plan: fused files grouped by their (ir, vi) pair; the source pairs left without one, per folder.
    results = [MethodResult(lab, d, []) for lab, d in zip(labels, fdirs, strict=True)]
    groups: dict[tuple[Path, Path], list[tuple[int, ImageRecord, Path]]] = {}
    expected = sorted(ip for _, ip, _ in sources.pairs)
    for mi, d in enumerate(fdirs):
        covered: set[Path] = set()
        for fp in list_images(d):
            rec = ImageRecord(fp.name)
            results[mi].records.append(rec)
            ip, vp = sources.a.get(fp.stem), sources.b.get(fp.stem)
            if ip is None or vp is None:
                no_partner = [
                    f"no infrared partner in {Path(ir_dir)}" if ip is None else "",
                    f"no visible partner in {Path(vi_dir)}" if vp is None else "",
                ]
                rec.error = "; ".join(m for m in no_partner if m)
                continue
            groups.setdefault((ip, vp), []).append((mi, rec, fp))
            covered.add(ip)
        results[mi].missing = [ip.name for ip in expected if ip not in covered]

    total = sum(len(v) for v in groups.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"eval [{prof.name}]", unit="img", leave=False)

    dev = torch.device(device)
    try:
        if workers <= 1:
            for (ip, vp), items in groups.items():
                _evaluate_group(prof, names, ip, vp, items, dev)
                if bar is not None:
                    bar.update(len(items))
        else:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {
                    pool.submit(_evaluate_group, prof, names, ip, vp, items, dev): len(items)
                    for (ip, vp), items in groups.items()
                }
                for fut in as_completed(futures):
                    fut.result()
                    if bar is not None:
                        bar.update(futures[fut])
    finally:
        if bar is not None:
            bar.close()
    return FolderEvaluation(prof, names, Path(ir_dir), Path(vi_dir), results)


def _evaluate_group(
    prof: Profile,
    names: list[str],
    ip: Path,
    vp: Path,
    items: list[tuple[int, ImageRecord, Path]],
    dev: torch.device,
) -> None:
    try:
        ir = load_image_tensor(ip, prof)
        vi = load_image_tensor(vp, prof)
    except ImageReadError as exc:
        for _, rec, _ in items:
            rec.error = f"source unreadable: {exc}"
        return
    if ir.shape[-2:] != vi.shape[-2:]:
        for _, rec, _ in items:
            rec.error = (
                f"size mismatch: infrared {ip.name} is {ir.shape[-2]}x{ir.shape[-1]}, "
                f"visible {vp.name} is {vi.shape[-2]}x{vi.shape[-1]} (HxW)"
            )
        return
    h, w = ir.shape[-2:]
    need = min_size(prof, names)
    if min(h, w) < need:
        for _, rec, _ in items:
            rec.error = f"image too small ({h}x{w}; the metrics need at least {need}x{need})"
        return
    ready: list[tuple[ImageRecord, Tensor]] = []
    for _, rec, fp in items:
        try:
            f = load_image_tensor(fp, prof)
        except ImageReadError as exc:
            rec.error = str(exc)
            continue
        if f.shape[-2:] != ir.shape[-2:]:
            rec.error = f"size mismatch: fused is {f.shape[-2]}x{f.shape[-1]}, sources are {h}x{w} (HxW)"
            continue
        ready.append((rec, f))
    ir, vi = ir.to(dev), vi.to(dev)
    # Batch fused images with the same channel count, bounded in memory.
    by_c: dict[int, list[tuple[ImageRecord, Tensor]]] = {}
    for rec, f in ready:
        by_c.setdefault(f.shape[1], []).append((rec, f))
    per_batch = max(1, MAX_BATCH_PIXELS // (h * w))
    for chunk_all in by_c.values():
        for s in range(0, len(chunk_all), per_batch):
            chunk = chunk_all[s : s + per_batch]
            batch = torch.cat([f for _, f in chunk]).to(dev)
            try:
                vals = evaluate(batch, ir, vi, prof, names)
            except (ValueError, RuntimeError) as exc:
                for rec, _ in chunk:
                    rec.error = f"evaluation failed: {exc}"
                continue
            cpu = {k: v.detach().cpu().tolist() for k, v in vals.items()}
            for i, (rec, _) in enumerate(chunk):
                rec.values = {k: float(cpu[k][i]) for k in names}
