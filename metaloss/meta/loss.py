"""A loss with its named terms, as a ``MetaProblem``'s inner loss may return it.

``inner_loss`` returns a scalar tensor, or an object with ``total`` (the scalar that is differentiated)
and ``terms`` (a mapping of names to floats or 0-dim tensors, logged beside the loss as
``inner_<name>`` / ``learner_<name>``): :class:`Loss`, or any object with these two attributes
(``metaloss.losses.FusionLoss``).  The terms travel with the loss they belong to, so a step that
computes several losses (k inner steps) reports the terms of the loss it reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

__all__ = ["FirstLoss", "Loss", "split_loss"]


class Loss(NamedTuple):
    """``total``: the scalar loss; ``terms``: its named components, for the log."""

    total: Tensor
    terms: Mapping[str, Tensor | float] = {}


def split_loss(value: Any) -> tuple[Tensor, dict[str, float]]:
    """``(total, terms as floats)`` of a tensor (no terms) or of a :class:`Loss`-like result."""
    if isinstance(value, Tensor):
        return value, {}
    terms = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in value.terms.items()}
    return value.total, terms


class FirstLoss:
    """Records the value and terms of the first loss it sees, the one a meta-step reports (the inner loss
    at the learner's current parameters); ``total(result)`` returns the tensor to differentiate."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.terms: dict[str, float] = {}

    def total(self, result: Any) -> Tensor:
        if self.value is not None:
            return result if isinstance(result, Tensor) else result.total
        total, self.terms = split_loss(result)
        self.value = float(total.detach())
        return total
