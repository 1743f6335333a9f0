"""The generic meta-learning engine: learn a loss by MAML (second order).

It imports nothing from the application: a ``MetaProblem`` brings the three networks (roles
``learner``, ``loss_generator``, ``objective``) and their losses; the trainer's settings and data
parallelism come in as small protocols (``Schedule``, ``Optimization``, ``NonFinitePolicy``,
``DataParallel``).
"""

from metaloss.meta.forward_mode import SplitInnerLoss
from metaloss.meta.inner import buffer_copies, inner_update, trainable_params
from metaloss.meta.loss import Loss
from metaloss.meta.outer import MaxAbsSGD, make_outer_optimizer
from metaloss.meta.parallel import DataParallel, SingleProcess
from metaloss.meta.step import (
    LearnerStepResult,
    MetaGradientMethod,
    MetaProblem,
    MetaStepResult,
    frozen,
    learner_step,
    meta_gradient,
    meta_step,
)
from metaloss.meta.trainer import AlternatingTrainer, NonFinitePolicy, Optimization, Schedule, TrainerHooks

__all__ = [
    "AlternatingTrainer",
    "DataParallel",
    "LearnerStepResult",
    "Loss",
    "MaxAbsSGD",
    "MetaGradientMethod",
    "MetaProblem",
    "MetaStepResult",
    "NonFinitePolicy",
    "Optimization",
    "Schedule",
    "SingleProcess",
    "SplitInnerLoss",
    "TrainerHooks",
    "buffer_copies",
    "frozen",
    "inner_update",
    "learner_step",
    "make_outer_optimizer",
    "meta_gradient",
    "meta_step",
    "trainable_params",
]
