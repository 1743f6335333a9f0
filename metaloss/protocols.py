"""The contracts between the core and its plugins.

Every plugin is a ``torch.nn.Module`` (or a ``torch.utils.data.Dataset``) that also satisfies one
of the protocols below.  Images are float tensors in ``[0, 1]``, shape ``[B, 1, H, W]`` (the Y
channel; colour is handled outside the networks, see ``metaloss.data.color``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

#: Parameters (and buffers) of a module by qualified name, as ``torch.func.functional_call`` takes them.
ParamDict = dict[str, Tensor]
#: One collated batch: ``name``, ``ir``/``vi`` crops for the fusion loss, ``task_ir``/``task_vi`` for the
#: task loss, and the task's targets: every other key (the core's datasets give ``mask`` [B,H,W] long and
#: ``boxes`` [N,6] = image index, class, cx, cy, w, h; a third-party dataset may give any other).
Batch = dict[str, Any]


@dataclass(frozen=True)
class TargetView:
    """How ``FusionProblem.prepare_batch`` turned a batch's images into the images the task sees, for the
    task's ``view_targets`` hook to do the same to its targets.

    ``image_size``: (H, W) of the batch's images; ``crop``: the (top, left, height, width) window of them
    that the task sees (``data.task_from_crop``), or None; ``size``: (H, W) of the task's images (the
    crop's size, or the full images resized to ``data.task_size``); ``repeat``: the batch is repeated
    this many times along its first dimension (2 with the modality swap), ``batch_size`` samples each.
    """

    image_size: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    size: tuple[int, int]
    repeat: int
    batch_size: int


@runtime_checkable
class FusionNet(Protocol):
    """F_θ: ``forward(ir, vi) -> fused``, all ``[B, 1, H, W]`` in ``[0, 1]``; any H, W."""

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor: ...


@runtime_checkable
class LossGenerator(Protocol):
    """G_φ: ``forward(ir, vi) -> maps`` of the learnable fusion loss.

    ``maps["intensity"]``: ``[B, 2, H, W]``, the per-pixel weights (w_a, w_b) of the intensity term.
    ``maps["gradient"]`` (optional): ``[B, 2, H, W]``, per-source weights (v_a, v_b) of the gradient
    term; without it the gradient term uses the max rule.  See ``metaloss.losses.fusion_loss``.
    """

    def forward(self, ir: Tensor, vi: Tensor) -> Mapping[str, Tensor]: ...


@runtime_checkable
class TaskEvaluator(Protocol):
    """Accumulates a task metric over batches (mIoU, mAP50, ...)."""

    def update(self, outputs: Any, batch: Batch) -> None: ...

    def compute(self) -> dict[str, float]: ...


@runtime_checkable
class Task(Protocol):
    """T_ψ, the meta-objective network: ``forward(fused) -> outputs``; ``loss(outputs, batch) -> scalar``.

    ``targets`` (optional) names the label keys of a batch it uses (``("mask",)``, ``("boxes",)``,
    any key its dataset provides, or ``()`` for an unlabelled objective); the others are dropped before
    the batch reaches it.

    ``view_targets(targets, view) -> targets`` (optional) crops, resizes and repeats its targets as
    ``view`` (a :class:`TargetView`) says the images were; the tensors come on the problem's device.
    Without it targets are taken to have no spatial layout: kept as they are, and repeated along their
    first dimension (lists: concatenated) ``view.repeat`` times; a target whose last two dimensions are
    the images' size is refused when the task's images are cropped or resized.

    A task without parameters (a fixed measure of the fused image) is trained by nothing and takes no
    look-ahead step.

    ``loss`` must be differentiable with respect to ``outputs`` (the outer loss reaches the fusion
    network, and through its inner update the loss generator, only through it).
    """

    def forward(self, fused: Tensor) -> Any: ...

    def loss(self, outputs: Any, batch: Batch) -> Tensor: ...

    def evaluator(self) -> TaskEvaluator: ...


@runtime_checkable
class PairedDataset(Protocol):
    """A dataset of registered image pairs.

    ``__getitem__`` returns ``{"name": str, "ir": [1,H,W], "vi": [1,H,W]}`` (float, [0, 1]) plus,
    when labelled, ``"mask"`` ([H, W] long, class indices, ``ignore_index`` for unlabelled pixels)
    or ``"boxes"`` ([N, 5] = class, cx, cy, w, h normalised to [0, 1]).
    ``num_classes``/``class_names`` describe the mask classes (background included) and
    ``num_box_classes``/``box_class_names`` the box classes (0 classes when unlabelled).
    """

    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...
