"""Semantic segmentation of the fused image (TDFusion's SegFormer task) on segmentation_models_pytorch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloss.protocols import Batch, TargetView


class SegmentationTask(nn.Module):
    """Any smp architecture/encoder, 1-channel input, trained from scratch, cross-entropy with an ignore index.

    Defaults to SegFormer with the ``mit_b0`` encoder (3.7 M parameters), as TDFusion.  Inputs whose
    sides are not multiples of the encoder's stride (32) are padded by reflection and the logits cropped
    back, so any task size works (MSRS's 240 x 320, say).

    ``drop_path``: the encoder's stochastic-depth rate (``mit_*`` encoders: 0.1 unless set).  Its random
    masks are drawn per sample from each process's own random stream, so runs on different numbers of
    processes agree exactly only with ``drop_path = 0`` (docs/distributed.md).
    """

    #: the label keys of a batch it trains on (the others are dropped)
    targets = ("mask",)

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "Segformer",
        encoder: str = "mit_b0",
        ignore_index: int = 255,
        pad_multiple: int = 32,
        drop_path: float | None = None,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("objective.num_classes is not set and the dataset does not provide it")
        try:
            import segmentation_models_pytorch as smp
        except ImportError as err:
            raise ImportError(
                "the segmentation task needs segmentation-models-pytorch: pip install 'metaloss[tdfusion]'"
            ) from err
        try:
            self.net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=1, classes=num_classes)
        except (KeyError, ValueError) as err:
            raise ValueError(f"task: cannot build smp model arch={arch!r} encoder={encoder!r}: {err}") from err
        if drop_path is not None:
            reset = getattr(self.net.encoder, "reset_drop_path", None)
            if reset is None:
                raise ValueError(f"objective.drop_path: the {encoder!r} encoder has no stochastic depth to set")
            if not 0 <= drop_path < 1:
                raise ValueError(f"objective.drop_path must be in [0, 1), got {drop_path}")
            reset(drop_path)
        self.num_classes, self.ignore_index, self.pad_multiple = num_classes, ignore_index, pad_multiple

    def forward(self, fused: Tensor) -> Tensor:
        h, w = fused.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        x = F.pad(fused, (0, pw, 0, ph), mode="replicate") if ph or pw else fused
        return self.net(x)[..., :h, :w]

    def view_targets(self, targets: Batch, view: TargetView) -> Batch:
        """The masks [B, H, W] follow the images: cropped with them, resized (nearest) to the task's size,
        repeated with the batch."""
        return {**targets, "mask": view_masks(targets["mask"], view)} if "mask" in targets else targets

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        target = batch["mask"]
        if outputs.shape[-2:] != target.shape[-2:]:
            outputs = F.interpolate(outputs, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(outputs, target, ignore_index=self.ignore_index)

    def evaluator(self) -> "MeanIoU":
        return MeanIoU(self.num_classes, self.ignore_index)


def view_masks(mask: Tensor, view: TargetView) -> Tensor:
    """Class-index masks [B, H, W] as the task's images: the crop window, nearest resize to
    ``view.size``, ``view.repeat`` copies of the batch."""
    if view.crop is not None:
        top, left, h, w = view.crop
        mask = mask[..., top : top + h, left : left + w]
    if tuple(mask.shape[-2:]) != view.size:
        mask = F.interpolate(mask[:, None].float(), size=view.size, mode="nearest")[:, 0].long()
    return torch.cat([mask] * view.repeat) if view.repeat > 1 else mask


class MeanIoU:
    """mIoU from a confusion matrix accumulated over batches (classes absent from both prediction and
    ground truth are left out of the mean)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, outputs: Any, batch: Batch) -> None:
        target = batch["mask"]
        if outputs.shape[-2:] != target.shape[-2:]:
            outputs = F.interpolate(outputs, size=target.shape[-2:], mode="bilinear", align_corners=False)
        pred = outputs.argmax(1).flatten().cpu()
        true = target.flatten().cpu()
        keep = true != self.ignore_index
        idx = true[keep] * self.num_classes + pred[keep]
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        total = c.sum()
        return {
            "mIoU": float(iou.mean()) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        }
