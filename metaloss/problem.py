"""Image fusion as a ``MetaProblem``: fusion network (learner), loss generator, task network (objective).

    inner_loss     = L_f(F_theta(crop), G_phi(crop))                        on random crops
    objective_loss = L_t(T_psi(F_theta(full).detach()))                     on resized full images
    outer_loss     = L_t(T_psi'(F_theta'(full)))

The task's targets follow its images through the task's ``view_targets`` hook
(``metaloss.protocols.TargetView``); the problem itself knows no target type.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from metaloss.losses import FusionLoss, GradientTarget, IntensityNorm, WeightForm, fusion_loss
from metaloss.protocols import Batch, ParamDict, TargetView, Task

#: The keys of a batch that are not targets: the pair and its name.
PAIR_KEYS = ("name", "ir", "vi")


def random_crop_box(h: int, w: int, size: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random ``size`` crop; the whole side where it is shorter."""
    ch, cw = min(size, h), min(size, w)
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return top, left, ch, cw


def view_plain_targets(targets: Batch, view: TargetView) -> Batch:
    """The default ``view_targets``: targets without spatial layout are kept, and repeated along their
    first dimension ``view.repeat`` times.  A tensor whose last two dimensions are the images' size is
    refused when the task's images are cropped or resized: its task must say how it follows them."""
    reshaped = view.crop is not None or view.size != view.image_size
    out: Batch = {}
    for key, value in targets.items():
        if isinstance(value, Tensor):
            if reshaped and value.dim() >= 2 and tuple(value.shape[-2:]) == view.image_size:
                raise ValueError(
                    f"target {key!r} {list(value.shape)} has the images' size, which the task's view changes "
                    f"(crop {view.crop}, size {view.size}); give the task a view_targets(targets, view) method "
                    "(metaloss.protocols.Task)"
                )
            out[key] = torch.cat([value] * view.repeat) if view.repeat > 1 else value
        elif isinstance(value, list) and len(value) == view.batch_size:
            out[key] = value * view.repeat
        else:
            out[key] = value
    return out


class FusionProblem(nn.Module):
    """Holds the learner (fusion network), the loss generator and the objective (task network) and defines
    the three losses of the meta-step (``metaloss.meta.MetaProblem``)."""

    def __init__(
        self,
        learner: nn.Module,
        loss_generator: nn.Module,
        objective: nn.Module,
        *,
        alpha: float = 1.0,
        weight_form: WeightForm = "linear",
        intensity_norm: IntensityNorm = "l2",
        gradient_target: GradientTarget = "max",
        ssim_weight: float = 0.0,
        objective_weight: float = 0.0,
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
        self.learner, self.loss_generator, self.objective = learner, loss_generator, objective
        self.alpha, self.weight_form, self.intensity_norm = alpha, weight_form, intensity_norm
        self.gradient_target, self.ssim_weight = gradient_target, ssim_weight
        self.crop_size, self.task_size, self.swap_modalities = crop_size, task_size, swap_modalities
        self.task_from_crop = task_from_crop
        if objective_weight and not task_from_crop:
            raise ValueError(
                "loss.objective_weight > 0 scores the objective on the fused crop: set data.task_from_crop = true"
            )
        self.objective_weight = objective_weight
        self.device, self.dtype = torch.device(device), dtype

    # -- batches ------------------------------------------------------------------------------
    def prepare_batch(self, batch: Batch, generator: torch.Generator, augment: bool = True) -> Batch:
        """Crop for the fusion loss, resize for the task, and optionally double by swapping modalities.

        ``augment=False`` (evaluation): no crop and no swap, only the resize for the task.
        Targets (every key but ``name``, ``ir``, ``vi``) that the task does not name in its ``targets``
        attribute (default: all) are dropped; the others follow the task's images through its
        ``view_targets`` hook (default :func:`view_plain_targets`).

        In: ``ir``, ``vi`` [B,1,H,W] and targets.  Out: ``ir``/``vi`` crops, ``task_ir``/``task_vi`` (the
        crops, or the resized full images) and the targets, all on the problem's device.
        """
        wanted = getattr(self.objective, "targets", None)
        targets = {
            k: v.to(self.device) if isinstance(v, Tensor) else v
            for k, v in batch.items()
            if k not in PAIR_KEYS and (wanted is None or k in wanted)
        }
        ir, vi = batch["ir"].to(self.device, self.dtype), batch["vi"].to(self.device, self.dtype)
        h, w = ir.shape[-2:]
        crop = (0, 0, h, w)
        if self.crop_size and augment:
            crop = random_crop_box(h, w, self.crop_size, generator)
        top, left, ch, cw = crop
        out: Batch = {"ir": ir[..., top : top + ch, left : left + cw], "vi": vi[..., top : top + ch, left : left + cw]}
        if "name" in batch:
            out["name"] = batch["name"]
        if self.task_from_crop:
            out["task_ir"], out["task_vi"] = out["ir"], out["vi"]
        else:
            size = tuple(self.task_size) if self.task_size else (h, w)
            out["task_ir"], out["task_vi"] = ir, vi
            if size != (h, w):
                out["task_ir"] = F.interpolate(ir, size=size, mode="bilinear", align_corners=False)
                out["task_vi"] = F.interpolate(vi, size=size, mode="bilinear", align_corners=False)
        swap = self.swap_modalities and augment
        view = TargetView(
            image_size=(h, w),
            crop=crop if self.task_from_crop else None,
            size=tuple(out["task_ir"].shape[-2:]),
            repeat=2 if swap else 1,
            batch_size=ir.shape[0],
        )
        view_targets = getattr(self.objective, "view_targets", view_plain_targets)
        if swap:
            out = swap_modalities(out, batch_size=ir.shape[0])
        out.update(view_targets(targets, view))
        return out

    # -- the three losses -----------------------------------------------------------------------
    def inner_loss(self, learner_params: ParamDict, batch: Batch) -> FusionLoss:
        return self.inner_loss_from_output(self.learner_output(learner_params, batch), batch)

    # the split of the inner loss (metaloss.meta.forward_mode.SplitInnerLoss)
    def learner_output(self, learner_params: ParamDict, batch: Batch) -> Tensor:
        """The fused crops ``F_theta(ir, vi)``: the only way the learner enters the inner loss."""
        return functional_call(self.learner, learner_params, (batch["ir"], batch["vi"]))

    def inner_loss_from_output(self, fused: Tensor, batch: Batch) -> FusionLoss:
        """L_f of the fused crops with the loss generator's weights, and its terms (with ``objective_weight``
        gamma, + gamma times the objective's loss on the fused crop)."""
        ir, vi = batch["ir"], batch["vi"]
        if self.recompute_generator and torch.is_grad_enabled():
            maps = checkpoint(self.loss_generator, ir, vi, use_reentrant=False)
        else:
            maps = self.loss_generator(ir, vi)
        loss = fusion_loss(
            fused,
            ir,
            vi,
            maps,
            alpha=self.alpha,
            weight_form=self.weight_form,
            intensity_norm=self.intensity_norm,
            gradient_target=self.gradient_target,
            ssim_weight=self.ssim_weight,
        )
        if self.objective_weight:  # + gamma L_t(T(F)) on the same crop: the objective taken directly
            loss.objective = self._task.loss(self.objective(fused), batch)
            loss.total = loss.total + self.objective_weight * loss.objective
        return loss

    @property
    def _task(self) -> Task:
        """The objective's task methods (``nn.Module.__getattr__`` would type them as tensors)."""
        return cast(Task, self.objective)

    def objective_loss(self, objective_params: ParamDict, learner_params: ParamDict, batch: Batch) -> Tensor:
        with torch.no_grad():
            fused = functional_call(self.learner, learner_params, (batch["task_ir"], batch["task_vi"]))
        return self._task.loss(functional_call(self.objective, objective_params, (fused,)), batch)

    def outer_loss(self, learner_params: ParamDict, objective_params: ParamDict | None, batch: Batch) -> Tensor:
        inputs = (batch["task_ir"], batch["task_vi"])
        if self.recompute_outer and torch.is_grad_enabled():
            fused = checkpoint(
                lambda a, b: functional_call(self.learner, learner_params, (a, b)), *inputs, use_reentrant=False
            )
        else:
            fused = functional_call(self.learner, learner_params, inputs)
        assert objective_params is not None
        return self._task.loss(functional_call(self.objective, objective_params, (fused,)), batch)

    def optimum_outer_loss(self, objective_params: ParamDict | None, batch: Batch) -> Tensor:
        """The meta-objective at the fused image that minimises L_f (``metaloss.meta.step``'s ``horizon =
        "optimum"``): with L2 intensity, linear weights and the gradient of its own target, L_f is zero at
        T = w_a I_a + w_b I_b and nowhere below, so argmin L_f = T, a function of the loss generator alone.
        With ``objective_weight`` gamma > 0 the learner's loss is L_f + gamma L_t, whose minimiser is near T
        for small gamma only: T, the minimiser of the learned part, stands in for it."""
        self.check_horizon("optimum")
        ir, vi = batch["task_ir"], batch["task_vi"]
        weights = self.loss_generator(ir, vi)["intensity"]
        optimum = weights[:, 0:1] * ir + weights[:, 1:2] * vi
        assert objective_params is not None
        return self._task.loss(functional_call(self.objective, objective_params, (optimum,)), batch)

    def output_outer_loss(
        self, learner_params: ParamDict, objective_params: ParamDict | None, batch: Batch, step: float
    ) -> Tensor:
        """The meta-objective after one gradient step of L_f on the fused crop itself (``horizon =
        "output"``): F' = F - step * N * dL_f/dF, F the learner's output now (no graph), N its number of
        elements.  For the L2 term, N dL_f/dF = 2 (F - T), so dF'/dw_a = 2 step (I_a - I_b): the
        meta-gradient moves each weight toward the source that the objective's gradient at F prefers."""
        self.check_horizon("output")
        with torch.no_grad():
            fused = self.learner_output(learner_params, batch)
        fused.requires_grad_(True)
        with torch.enable_grad():
            inner = self.inner_loss_from_output(fused, batch).total
            (grad,) = torch.autograd.grad(inner, fused, create_graph=True)
        stepped = fused - step * fused.numel() * grad
        assert objective_params is not None
        return self._task.loss(functional_call(self.objective, objective_params, (stepped,)), batch)

    def check_horizon(self, horizon: str) -> None:
        """Raise unless this problem's loss and data suit ``meta.horizon``: "optimum" needs L_f's minimiser
        to be its intensity target (:meth:`optimum_outer_loss`), "output" the objective on the crop that the
        fusion loss sees (:meth:`output_outer_loss`); "unrolled" suits every problem."""
        if horizon == "optimum" and (
            self.intensity_norm != "l2"
            or self.weight_form != "linear"
            or self.gradient_target != "intensity"
            or self.ssim_weight
        ):
            raise ValueError(
                "meta.horizon = 'optimum' needs a loss whose minimiser is its target: loss.intensity_norm = 'l2', "
                "loss.weight_form = 'linear', loss.gradient_target = 'intensity' and loss.ssim_weight = 0"
            )
        if horizon == "output" and not self.task_from_crop:
            raise ValueError("meta.horizon = 'output' needs data.task_from_crop = true: the step is taken on the crop")

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, ir: Tensor, vi: Tensor) -> Tensor:
        self.learner.eval()
        try:
            return self.learner(ir.to(self.device, self.dtype), vi.to(self.device, self.dtype))
        finally:
            self.learner.train()


def swap_modalities(batch: Batch, batch_size: int) -> Batch:
    """Double the pairs: (ir, vi) followed by (vi, ir), for the crops and the task's images; names repeated."""
    out = dict(batch)
    for a, b in (("ir", "vi"), ("task_ir", "task_vi")):
        if a in batch:
            out[a], out[b] = torch.cat([batch[a], batch[b]]), torch.cat([batch[b], batch[a]])
    if isinstance(batch.get("name"), list) and len(batch["name"]) == batch_size:
        out["name"] = batch["name"] * 2
    return out
