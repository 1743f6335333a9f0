"""The meta-objective: detect the source images' edges in the fused image.

    E       = edge_map(I_ir, I_vi, source, threshold)                    targets, from the sources
    logits  = T_psi(I_f)                                                   a small CNN, from scratch
    L_t     = class-balanced BCE(logits, E):  beta = |E=0| / |E|  per batch,
              pixels of E=1 weighted beta, pixels of E=0 weighted 1 - beta (HED's balancing)

A fused image that keeps the edges of both sources lets T find them; through the meta-step this
rewards loss weights that preserve edges.  The task needs no labels (``targets = ()``): the targets are
computed from the source images of each batch (``task_ir``, ``task_vi``).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metaloss.protocols import Batch
from metaloss_edges.edges import Source, edge_map


class EdgeTask(nn.Module):
    """Edge detection on the fused image: ``forward(fused [B, 1, H, W]) -> logits [B, 1, H, W]``.

    ``depth`` 3x3 convolutions of ``width`` channels (the i-th dilated by 2**i, so the receptive field
    grows quickly) and a 1x1 head; about 5 k parameters at the defaults.  The loss is class-balanced
    binary cross-entropy against ``edge_map`` of the sources; the evaluator reports precision, recall,
    F1 (with a ``tolerance``-pixel match, as edge benchmarks do) and IoU of the edge maps.
    """

    #: no label keys: the edge targets come from the source images in the batch
    targets: tuple[str, ...] = ()

    def __init__(
        self,
        source: Source = "both",
        threshold: Annotated[float, Field(gt=0)] = 0.5,
        width: Annotated[int, Field(ge=1)] = 16,
        depth: Annotated[int, Field(ge=1, le=6)] = 3,
        balanced: bool = True,
        tolerance: Annotated[int, Field(ge=0)] = 1,
    ):
        super().__init__()
        if source not in ("both", "infrared", "visible"):
            raise ValueError(f"task.source must be 'both', 'infrared' or 'visible', got {source!r}")
        self.source, self.threshold, self.balanced, self.tolerance = source, threshold, balanced, tolerance
        layers: list[nn.Module] = []
        channels = 1
        for i in range(depth):
            dilation = 2**i
            layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(nn.Conv2d(channels, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)

    def edge_targets(self, batch: Batch) -> Tensor:
        return edge_map(batch["task_ir"], batch["task_vi"], self.source, self.threshold)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        target = self.edge_targets(batch).to(outputs.dtype)
        if outputs.shape != target.shape:
            raise ValueError(f"edge logits {list(outputs.shape)} do not match the edge targets {list(target.shape)}")
        weight = None
        if self.balanced:
            beta = 1 - target.mean()  # the share of non-edge pixels
            weight = torch.where(target > 0, beta, 1 - beta).detach()
        return F.binary_cross_entropy_with_logits(outputs, target, weight=weight)

    def evaluator(self) -> "EdgeScores":
        return EdgeScores(self, tolerance=self.tolerance)


class EdgeScores:
    """Edge-map scores accumulated over all evaluated pixels.

    A predicted edge pixel (probability > 0.5) is correct when a target edge lies within ``tolerance``
    pixels (Chebyshev distance), and a target edge is found when a predicted edge does:
    precision = correct / predicted, recall = found / targets, F1 = 2PR / (P + R);
    IoU = |predicted AND target| / |predicted OR target| without tolerance.
    """

    def __init__(self, task: EdgeTask, tolerance: int = 1):
        self.task, self.tolerance = task, tolerance
        self.counts = {"predicted": 0, "correct": 0, "targets": 0, "found": 0, "intersection": 0, "union": 0}

    def _dilate(self, x: Tensor) -> Tensor:
        if not self.tolerance:
            return x
        k = 2 * self.tolerance + 1
        return F.max_pool2d(x, k, stride=1, padding=self.tolerance)

    def update(self, outputs: Tensor, batch: Batch) -> None:
        pred = (outputs.detach() > 0).float()  # sigmoid(logit) > 0.5
        target = self.task.edge_targets(batch).float()
        c = self.counts
        c["predicted"] += int(pred.sum())
        c["correct"] += int((pred * self._dilate(target)).sum())
        c["targets"] += int(target.sum())
        c["found"] += int((target * self._dilate(pred)).sum())
        c["intersection"] += int((pred * target).sum())
        c["union"] += int(((pred + target) > 0).sum())

    def compute(self) -> dict[str, float]:
        c = self.counts
        precision = c["correct"] / c["predicted"] if c["predicted"] else 0.0
        recall = c["found"] / c["targets"] if c["targets"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        iou = c["intersection"] / c["union"] if c["union"] else 1.0
        return {"precision": precision, "recall": recall, "F1": f1, "IoU": iou}
