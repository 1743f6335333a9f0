"""Image fusion as a ``MetaProblem``: fusion network F (learner), loss generator G, task network T.

    inner_loss     = L_f(F_theta(crop), G_phi(crop))                        on random crops
    objective_loss = L_t(T_psi(F_theta(full).detach()))                     on resized full images
    outer_loss     = L_t(T_psi'(F_theta'(full)))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from metaloss.losses import GradientTarget, IntensityNorm, WeightForm, fusion_loss
from metaloss.protocols import Batch, ParamDict


#: The label keys a batch may carry; a task lists those it needs in ``targets``.
TARGETS = ("mask", "boxes")


def random_crop_box(h: int, w: int, size: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random ``size`` crop; the whole side where it is shorter."""
    ch, cw = min(size, h), min(size, w)
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return top, left, ch, cw


class FusionProblem(nn.Module):
    """Holds F, G and T and defines the three losses of the meta-step (``metaloss.meta.MetaProblem``)."""

    def __init__(
        self,
        fusion: nn.Module,
        generator: nn.Module,
        task: nn.Module,
        *,
        alpha: float = 1.0,
        weight_form: WeightForm = "linear",
        intensity_norm: IntensityNorm = "l2",
        gradient_target: GradientTarget = "max",
        crop_size: int = 256,
        task_size: tuple[int, int] | None = None,
        task_from_crop: bool = False,
        swap_modalities: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        recompute_generator: bool = False,
        recompute_outer: bool = False,
        meta_gradient_method: str | None = None,
    ):
        super().__init__()
        # memory switches ([performance] in a config): activations of the generator's forward / of
        # the learner's outer forward are not kept for the backward pass but recomputed in it
        # (torch.utils.checkpoint); the gradients are the same up to float rounding
        self.recompute_generator, self.recompute_outer = recompute_generator, recompute_outer
        #: read by metaloss.meta.meta_gradient when it is given no method ("auto", "double_backward", "jvp")
        self.meta_gradient_method = meta_gradient_method
        self.learner, self.generator, self.objective = fusion, generator, task
        self.alpha, self.weight_form, self.intensity_norm = alpha, weight_form, intensity_norm
        self.gradient_target = gradient_target
        self.crop_size, self.task_size, self.swap_modalities = crop_size, task_size, swap_modalities
        self.task_from_crop = task_from_crop
        self.device, self.dtype = torch.device(device), dtype
        self.terms: dict[str, float] = {}

    # -- batches ------------------------------------------------------------------------------
    def prepare_batch(self, batch: Batch, generator: torch.Generator, augment: bool = True) -> Batch:
        """Crop for the fusion loss, resize for the task, and optionally double by swapping modalities.

        ``augment=False`` (evaluation): no crop and no swap, only the resize for the task.
        Targets the task does not name in its ``targets`` attribute (default: all) are dropped.

        In: ``ir``, ``vi`` [B,1,H,W] (+ ``mask`` [B,H,W], ``boxes`` [N,6]).  Out: ``ir``/``vi`` crops,
        ``task_ir``/``task_vi`` resized full images and the targets, all on the problem's device.
        """
        targets = getattr(self.objective, "targets", TARGETS)
        batch = {k: v for k, v in batch.items() if k not in TARGETS or k in targets}
        ir, vi = batch["ir"].to(self.device, self.dtype), batch["vi"].to(self.device, self.dtype)
        h, w = ir.shape[-2:]
        out: Batch = {k: v for k, v in batch.items() if k not in ("ir", "vi")}
        crop = (0, 0, h, w)
        if self.crop_size and augment:
            crop = random_crop_box(h, w, self.crop_size, generator)
        top, left, ch, cw = crop
        out["ir"], out["vi"] = ir[..., top : top + ch, left : left + cw], vi[..., top : top + ch, left : left + cw]
        if self.task_from_crop:
            if "boxes" in batch:
                raise ValueError("data.task_from_crop cannot crop detection boxes; use task_size instead")
            out["task_ir"], out["task_vi"] = out["ir"], out["vi"]
            if "mask" in batch:
                out["mask"] = batch["mask"].to(self.device)[..., top : top + ch, left : left + cw]
        else:
            out.update(self._task_view(batch, ir, vi))
        if self.swap_modalities and augment:
            out = swap_modalities(out, batch_size=ir.shape[0])
        return out

    def _task_view(self, batch: Batch, ir: Tensor, vi: Tensor) -> Batch:
        """The full images resized to ``task_size`` (and the masks, nearest), for the task."""
        h, w = ir.shape[-2:]
        size = tuple(self.task_size) if self.task_size else (h, w)
        out: Batch = {"task_ir": ir, "task_vi": vi}
        if size != (h, w):
            out["task_ir"] = F.interpolate(ir, size=size, mode="bilinear", align_corners=False)
            out["task_vi"] = F.interpolate(vi, size=size, mode="bilinear", align_corners=False)
        if "mask" in batch:
            mask = batch["mask"].to(self.device)
            if tuple(mask.shape[-2:]) != size:
                mask = F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()
            out["mask"] = mask
        if "boxes" in batch:
            out["boxes"] = batch["boxes"].to(self.device)
        return out

    # -- the three losses -----------------------------------------------------------------------
    def inner_loss(self, learner_params: ParamDict, batch: Batch) -> Tensor:
        return self.inner_loss_from_output(self.learner_output(learner_params, batch), batch)

    # the split of the inner loss (metaloss.meta.forward_mode.SplitInnerLoss)
    def learner_output(self, learner_params: ParamDict, batch: Batch) -> Tensor:
        """The fused crops ``F_theta(ir, vi)``: the only way the learner enters the inner loss."""
        return functional_call(self.learner, learner_params, (batch["ir"], batch["vi"]))

    def inner_loss_from_output(self, fused: Tensor, batch: Batch) -> Tensor:
        """L_f of the fused crops with the generator's weights."""
        ir, vi = batch["ir"], batch["vi"]
        if self.recompute_generator and torch.is_grad_enabled():
            maps = checkpoint(self.generator, ir, vi, use_reentrant=False)
        else:
            maps = self.generator(ir, vi)
        loss = fusion_loss(fused, ir, vi, maps, alpha=self.alpha, weight_form=self.weight_form, intensity_norm=self.intensity_norm,
                           gradient_target=self.gradient_target)
        self.terms = loss.terms()
        return loss.total

    def objective_loss(self, objective_params: ParamDict, learner_params: ParamDict, batch: Batch) -> Tensor:
        with torch.no_grad():
            fused = functional_call(self.learner, learner_params, (batch["task_ir"], batch["task_vi"]))
        return self.objective.loss(functional_call(self.objective, objective_params, (fused,)), batch)

    def outer_loss(self, learner_params: ParamDict, objective_params: ParamDict | None, batch: Batch) -> Tensor:
        inputs = (batch["task_ir"], batch["task_vi"])
        if self.recompute_outer and torch.is_grad_enabled():
            fused = checkpoint(
                lambda a, b: functional_call(self.learner, learner_params, (a, b)), *inputs, use_reentrant=False
            )
        else:
            fused = functional_call(self.learner, learner_params, inputs)
        assert objective_params is not None
        return self.objective.loss(functional_call(self.objective, objective_params, (fused,)), batch)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, ir: Tensor, vi: Tensor) -> Tensor:
        self.learner.eval()
        try:
            return self.learner(ir.to(self.device, self.dtype), vi.to(self.device, self.dtype))
        finally:
            self.learner.train()


def swap_modalities(batch: Batch, batch_size: int) -> Batch:
    """Double the batch: (ir, vi) followed by (vi, ir); targets repeated (box image indices shifted)."""
    out = dict(batch)
    for a, b in (("ir", "vi"), ("task_ir", "task_vi")):
        if a in batch:
            out[a], out[b] = torch.cat([batch[a], batch[b]]), torch.cat([batch[b], batch[a]])
    if "mask" in batch:
        out["mask"] = torch.cat([batch["mask"], batch["mask"]])
    if "boxes" in batch:
        shifted = batch["boxes"].clone()
        shifted[:, 0] += batch_size
        out["boxes"] = torch.cat([batch["boxes"], shifted])
    for key, value in batch.items():
        if isinstance(value, list) and len(value) == batch_size:
            out[key] = value + value
    return out


def describe(module: nn.Module) -> dict[str, Any]:
    return {"class": type(module).__name__, "parameters": sum(p.numel() for p in module.parameters())}
