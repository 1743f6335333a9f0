"""The meta-gradient of one tracked inner step by a Jacobian-vector product (forward-mode AD).

When the learned loss reaches the learner only through the learner's output, i.e.

    L_inner(theta, phi) = l(y, phi),   y = F_theta(x)         (y does not depend on phi)

the inner gradient is ``g = J^T u(phi)`` with ``J = dy/dtheta`` and ``u = dl/dy`` (an output-sized
tensor, the only place phi enters).  For theta' = theta - eta g and v = dL_outer/dtheta':

    dL_outer/dphi = -eta (du/dphi)^T (J v)

``J v`` is one forward-mode pass through the learner (``torch.autograd.forward_ad``), in the direction v, at the
parameters of the tracked step.  So the meta-gradient needs no second-order graph of the learner:
the inner step is an ordinary backward pass whose graph is freed at once, and only u's small graph
back to phi (the loss generator and the loss's gradient with respect to the output) is kept.  The
result equals the double-backward meta-gradient up to float rounding (tests/meta/test_forward_mode.py);
it costs less time and much less memory (docs/benchmarks.md).

It applies to the last inner step only (``inner_steps = 1``, or ``truncate = 1``: the earlier steps
are taken without graph, as truncation prescribes) and to problems that provide the split (the
``SplitInnerLoss`` protocol).  ``metaloss.meta.meta_gradient(..., method="jvp")`` uses it;
``method="auto"`` uses it where it applies and the double backward elsewhere.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from metaloss.meta.inner import buffer_copies, inner_update, trainable_params
from metaloss.meta.loss import FirstLoss
from metaloss.protocols import ParamDict

__all__ = ["SplitInnerLoss", "jvp_applies", "supports_jvp"]


@runtime_checkable
class SplitInnerLoss(Protocol):
    """A ``MetaProblem`` whose inner loss is a loss of the learner's output:
    ``inner_loss(p, batch) == inner_loss_from_output(learner_output(p, batch), batch)``, where
    ``learner_output`` depends on the learner's parameters only (not on the loss generator) and
    ``inner_loss_from_output`` on the learner only through its ``output`` argument (both losses: a
    tensor or a ``metaloss.meta.loss.Loss``)."""

    def learner_output(self, learner_params: ParamDict, batch: Any) -> Tensor: ...

    def inner_loss_from_output(self, output: Tensor, batch: Any) -> Any: ...


def supports_jvp(problem: Any) -> bool:
    """Whether ``problem`` provides the split of ``SplitInnerLoss``."""
    return callable(getattr(problem, "learner_output", None)) and callable(
        getattr(problem, "inner_loss_from_output", None)
    )


def jvp_applies(problem: Any, *, inner_steps: int, truncate: int, backend: str, inner_grad_hook: Any) -> bool:
    """Whether the forward-mode meta-gradient computes the same as the double backward here: the
    torch.func backend, a problem with the split, one tracked step (``inner_steps == 1`` or
    ``truncate == 1``) and no inner gradient hook (whose linearity it could not assume)."""
    return (
        backend == "torch.func"
        and supports_jvp(problem)
        and (inner_steps == 1 or truncate == 1)
        and inner_grad_hook is None
    )


def tracked_step(
    problem: SplitInnerLoss,
    train_batch: Any,
    *,
    inner_lr: float,
    inner_steps: int,
    train_scale: float,
    first: FirstLoss,
) -> tuple[ParamDict, ParamDict, Tensor, Tensor]:
    """The inner update without second-order graph; ``first`` records the first inner loss.

    Returns ``(theta0, theta1, u, y)``: the parameters before the tracked step (after the untracked
    ones), the updated parameters as fresh leaves that require grad, ``u = dl/dy`` with its graph to
    the loss generator, and nothing else kept alive.  (``y`` is returned detached for callers that want it.)
    """
    learner = problem.learner  # type: ignore[attr-defined]
    theta0 = {n: p.detach() for n, p in trainable_params(learner).items()}
    if inner_steps > 1:  # the untracked steps, as truncation takes them

        def untracked(p: ParamDict) -> Tensor:
            loss = first.total(problem.inner_loss(p, train_batch))  # type: ignore[attr-defined]
            return loss * train_scale if train_scale != 1.0 else loss

        theta0 = inner_update(learner, untracked, inner_lr, steps=inner_steps - 1, create_graph=False)
        theta0 = {n: p.detach() for n, p in theta0.items()}
    names = list(theta0)
    leaves = {n: p.clone().requires_grad_(True) for n, p in theta0.items()}
    y = problem.learner_output({**leaves, **buffer_copies(learner)}, train_batch)
    y_in = y.detach().requires_grad_(True)
    loss = first.total(problem.inner_loss_from_output(y_in, train_batch))
    if train_scale != 1.0:
        loss = loss * train_scale
    (u,) = torch.autograd.grad(loss, y_in, create_graph=True)
    grads = torch.autograd.grad(y, [leaves[n] for n in names], u.detach(), allow_unused=True)
    del y, leaves
    theta1 = {
        n: (theta0[n] if g is None else theta0[n] - inner_lr * g).detach().requires_grad_(True)
        for n, g in zip(names, grads, strict=True)
    }
    return theta0, theta1, u, y_in.detach()


def output_jvp(problem: SplitInnerLoss, theta0: ParamDict, tangents: ParamDict, train_batch: Any) -> Tensor:
    """``J v``: the derivative of the learner's output at ``theta0`` in the direction ``tangents``
    (forward-mode AD with dual tensors; buffers are fresh copies, so batch-norm statistics stay put)."""
    learner = problem.learner  # type: ignore[attr-defined]
    with fwAD.dual_level(), torch.no_grad(), warnings.catch_warnings():
        # torch's first make_dual loads its JVP decompositions through torch.jit.script, which warns
        # of its own deprecation on every run; nothing for a user to act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        params = {
            n: p if tangents.get(n) is None else fwAD.make_dual(p, tangents[n].to(p.dtype)) for n, p in theta0.items()
        }
        out = problem.learner_output({**params, **buffer_copies(learner)}, train_batch)
        tangent = fwAD.unpack_dual(out).tangent
    if tangent is None:  # the output does not depend on the parameters in these directions
        return torch.zeros_like(out)
    return tangent
