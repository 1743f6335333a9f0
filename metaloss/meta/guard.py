"""Finiteness checks before every optimizer step.

A NaN or an infinity in a loss or a gradient must never reach a network's parameters.  The meta-step
and the learner step call :func:`check_loss` and :func:`check_grads` after the backward pass (so every
process of a distributed run has taken part in any gradient reduction) and *before* the optimizer
step; a failed check raises :class:`NonFiniteError`, which names the network, the loss and what was
not finite.  The trainer then skips the batch or stops the run (``[guard]`` in the config).

Networks are named by their role in the engine: ``learner``, ``loss_generator``, ``objective``
(:data:`ROLES`, which are also the attribute names of a ``MetaProblem`` and the config sections that
build them in an image-fusion run).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ROLES", "NonFiniteError", "NonFiniteStop", "check_grads", "check_loss", "check_params", "is_finite"]

#: the three networks of the engine, by role
ROLES = ("learner", "loss_generator", "objective")


class NonFiniteError(FloatingPointError):
    """A loss or gradient held NaN or Inf; nothing was stepped with it.

    ``role``: learner / loss_generator / objective (:data:`ROLES`);
    ``loss``: inner / objective / outer / learner; ``kind``: "loss", "gradient" or "parameters";
    ``detail``: the value, or the first parameter with a non-finite gradient.  ``stepped``: the roles
    whose optimizer step of this batch had already been taken (the learner step precedes the
    objective's), empty when nothing changed.
    """

    def __init__(self, role: str, loss: str, kind: str, detail: str = ""):
        self.role, self.loss, self.kind, self.detail = role, loss, kind, detail
        self.stepped: tuple[str, ...] = ()
        what = f"{loss} loss" if kind == "loss" else f"{kind} of the {loss} loss" if kind == "gradient" else kind
        super().__init__(f"non-finite {what} of the {role.replace('_', ' ')}" + (f" ({detail})" if detail else ""))

    def record(self) -> dict[str, Any]:
        """The fields a log record carries."""
        return {
            "role": self.role,
            "loss": self.loss,
            "kind": self.kind,
            "detail": self.detail,
            "stepped": list(self.stepped),
        }


def is_finite(value: Tensor | float) -> bool:
    if isinstance(value, Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


def check_loss(value: Tensor | float | None, role: str, loss: str) -> None:
    """Raise :class:`NonFiniteError` when ``value`` (a loss) is NaN or infinite; None passes."""
    if value is None or is_finite(value):
        return
    shown = float(value.detach().float().flatten()[0]) if isinstance(value, Tensor) else float(value)
    raise NonFiniteError(role, loss, "loss", f"value {shown}")


def check_grads(grads: Iterable[Tensor | None], role: str, loss: str, names: Sequence[str] | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter whose gradient is not finite."""
    for i, g in enumerate(grads):
        if g is not None and not is_finite(g):
            name = names[i] if names is not None and i < len(names) else f"#{i}"
            raise NonFiniteError(role, loss, "gradient", f"parameter {name}")


def check_params(module: nn.Module | None, role: str) -> None:
    """Raise :class:`NonFiniteError` when a parameter or buffer of ``module`` is not finite."""
    if module is None:
        return
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not is_finite(t):
            raise NonFiniteError(role, "", "parameters", f"parameter {name}")


class NonFiniteStop(RuntimeError):
    """Training stopped on a non-finite loss, gradient or parameter (``guard.on_nonfinite = "stop"``, or
    too many batches skipped in a row).  ``error``: the :class:`NonFiniteError`; ``epoch``: the epoch
    in progress, whose state was not saved."""

    def __init__(self, error: NonFiniteError, where: str, epoch: int, reason: str):
        self.error, self.where, self.epoch, self.reason = error, where, epoch, reason
        super().__init__(f"training stopped: {error} at {where}; {reason}")
