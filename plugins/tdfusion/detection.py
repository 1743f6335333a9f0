"""Object detection on the fused image (TDFusion's YOLOv8 task) with ultralytics, built from its yaml.

The network, its loss (box + cls + DFL, ultralytics' ``v8DetectionLoss``) and the mAP code (NMS,
``match_predictions``, ``ap_per_class``) are ultralytics' own; nothing is downloaded (``YOLO_OFFLINE``).
"""

from __future__ import annotations

import os
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloss.protocols import Batch, TargetView


def _ultralytics():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics  # noqa: F401
    except ImportError as err:
        raise ImportError("the detection task needs ultralytics: pip install 'metaloss[tdfusion]'") from err
    from ultralytics.cfg import DEFAULT_CFG, get_cfg
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel, get_cfg(DEFAULT_CFG)


class DetectionTask(nn.Module):
    """YOLOv8 (``yolov8n.yaml`` by default; any ultralytics detection yaml), 1-channel input, trained
    from scratch.  ``loss`` is ultralytics' detection loss divided by the batch size (ultralytics
    returns it multiplied by the batch size), so it does not grow with the batch.

    Inputs whose sides are not multiples of 32 are zero-padded at the bottom and right (as
    ultralytics' letterbox does) and the normalised boxes are rescaled to the padded frame.
    """

    #: the label keys of a batch it trains on (the others are dropped)
    targets = ("boxes",)

    #: task options filled from the dataset when unset: num_classes <- dataset.num_box_classes
    dataset_fields = {"num_classes": "num_box_classes"}

    def __init__(
        self,
        num_classes: int | None = None,
        model: str = "yolov8n.yaml",
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.7,
        pad_multiple: int = 32,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("objective.num_classes is not set and the dataset has no num_box_classes")
        DetectionModel, cfg = _ultralytics()
        try:
            self.net = DetectionModel(model, ch=1, nc=num_classes, verbose=False)
        except (FileNotFoundError, KeyError) as err:
            raise ValueError(f"objective.model: cannot build ultralytics detection model from {model!r}: {err}") from err
        self.net.args = cfg
        self.num_classes, self.pad_multiple = num_classes, pad_multiple
        self.conf_threshold, self.iou_threshold = conf_threshold, iou_threshold

    def forward(self, fused: Tensor) -> dict[str, Any]:
        h, w = fused.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        x = F.pad(fused, (0, pw, 0, ph)) if ph or pw else fused
        return {"preds": self.net(x), "size": (h, w), "padded": (h + ph, w + pw)}

    def view_targets(self, targets: Batch, view: TargetView) -> Batch:
        """The boxes [N, 6] (image index, class, cx, cy, w, h; normalised) follow the images: unchanged
        by a resize; repeated with the batch, the copies' image indices shifted by the batch size.  A crop
        would cut boxes, which is refused."""
        if "boxes" not in targets:
            return targets
        if view.crop is not None:
            raise ValueError("data.task_from_crop cannot crop detection boxes; use task_size instead")
        boxes = targets["boxes"]
        copies = []
        for k in range(view.repeat):
            shifted = boxes.clone()
            shifted[:, 0] += k * view.batch_size
            copies.append(shifted)
        return {**targets, "boxes": torch.cat(copies) if view.repeat > 1 else boxes}

    def _targets(self, outputs: dict[str, Any], batch: Batch) -> dict[str, Tensor]:
        boxes = batch["boxes"]
        (h, w), (hp, wp) = outputs["size"], outputs["padded"]
        scale = boxes.new_tensor([w / wp, h / hp, w / wp, h / hp])
        return {"batch_idx": boxes[:, 0], "cls": boxes[:, 1:2], "bboxes": boxes[:, 2:6] * scale}

    def loss(self, outputs: dict[str, Any], batch: Batch) -> Tensor:
        preds = outputs["preds"]
        batch_size = (preds["boxes"] if isinstance(preds, dict) else preds[0]).shape[0]
        total, _ = self.net.loss(self._targets(outputs, batch), preds)
        return total.sum() / batch_size

    def evaluator(self) -> "DetectionMAP":
        return DetectionMAP(self.num_classes, self.conf_threshold, self.iou_threshold)


class DetectionMAP:
    """mAP50 and mAP50-95 with ultralytics' validation code: NMS, IoU matching at 0.50:0.05:0.95,
    ``ap_per_class``.  ``update`` takes eval-mode outputs of ``DetectionTask``."""

    def __init__(self, num_classes: int, conf_threshold: float = 0.001, iou_threshold: float = 0.7):
        self.num_classes, self.conf, self.iou = num_classes, conf_threshold, iou_threshold
        self.iouv = torch.linspace(0.5, 0.95, 10)
        self.stats: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, outputs: dict[str, Any], batch: Batch) -> None:
        from ultralytics.engine.validator import BaseValidator
        from ultralytics.utils.metrics import box_iou
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import xywh2xyxy

        preds = outputs["preds"]
        preds = preds[0] if isinstance(preds, (tuple, list)) else preds
        if isinstance(preds, dict):
            raise ValueError("DetectionMAP needs eval-mode outputs: call task.eval() before the forward")
        detections = non_max_suppression(preds.detach().float().cpu(), self.conf, self.iou, nc=self.num_classes)
        h, w = outputs["size"]
        boxes = batch["boxes"].detach().float().cpu()
        matcher = types.SimpleNamespace(iouv=self.iouv)
        for i, det in enumerate(detections):
            gt = boxes[boxes[:, 0] == i]
            target_cls = gt[:, 1]
            gt_xyxy = xywh2xyxy(gt[:, 2:6] * torch.tensor([w, h, w, h]))
            if len(det) == 0:
                correct = torch.zeros(0, len(self.iouv), dtype=torch.bool)
            elif len(gt) == 0:
                correct = torch.zeros(len(det), len(self.iouv), dtype=torch.bool)
            else:
                iou = box_iou(gt_xyxy, det[:, :4])
                correct = BaseValidator.match_predictions(matcher, det[:, 5], target_cls, iou)
            self.stats.append((correct.numpy(), det[:, 4].numpy(), det[:, 5].numpy(), target_cls.numpy()))

    def compute(self) -> dict[str, float]:
        from ultralytics.utils.metrics import ap_per_class

        tp, conf, pred_cls, target_cls = (
            np.concatenate([s[i] for s in self.stats]) if self.stats else np.zeros(0) for i in range(4)
        )
        if len(target_cls) == 0 or len(tp) == 0:  # nothing to find, or nothing found
            return {"mAP50": 0.0, "mAP50-95": 0.0}
        ap = ap_per_class(tp, conf, pred_cls, target_cls)[5]
        return {"mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean())}
