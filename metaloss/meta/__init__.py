"""The generic meta-learning engine: learn a loss by MAML (second order)."""

from metaloss.meta.inner import buffer_copies, inner_update, trainable_params
from metaloss.meta.outer import MaxAbsSGD, make_outer_optimizer
from metaloss.meta.forward_mode import SplitInnerLoss
from metaloss.meta.step import (
    MetaGradientMethod,
    MetaProblem,
    MetaStepResult,
    frozen,
    learner_step,
    meta_gradient,
    meta_step,
)

__all__ = [
    "MaxAbsSGD",
    "MetaGradientMethod",
    "MetaProblem",
    "MetaStepResult",
    "SplitInnerLoss",
    "buffer_copies",
    "frozen",
    "inner_update",
    "learner_step",
    "make_outer_optimizer",
    "meta_gradient",
    "meta_step",
    "trainable_params",
]
