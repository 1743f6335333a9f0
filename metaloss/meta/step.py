"""The one meta-step that every method uses.

    theta' = theta - eta * grad_theta L_inner(F_theta, G_phi; x_mtr)          k steps, graph kept
    psi'   = psi - eta_T * grad_psi L_obj(T_psi(F_theta(x_mtr).detach()))     look-ahead, no graph
    L_outer = L_out(T_psi'(F_theta'(x_mts)))                                   disjoint meta-test batch
    phi   <- outer optimizer step on grad_phi L_outer

Methods differ only in their ``MetaProblem``: what the inner, objective and outer losses are.

``horizon="optimum"`` replaces the unrolled inner steps by the inner loss's own minimiser over the
learner's outputs, where the problem knows it in closed form (``optimum_outer_loss``):

    L_outer = L_out(T_psi'(argmin_y L_inner(y, G_phi; x_mts)))                a learner that fits its loss

a first-order meta-gradient with no short-horizon bias (the unrolled step sees only how one small
learner step moves; its directions can cancel from step to step).

``horizon="output"`` takes the step in the learner's output space instead of its parameters, from the
output F it gives now (the problem's ``output_outer_loss``):

    L_outer = L_out(T_psi'(F - eta_y N grad_F L_inner(F, G_phi; x_mts))),   F = F_theta(x_mts) detached

N the number of output elements (so eta_y is a step per element): first order in the learner, and it
judges the loss by where it moves the output the network has now, not the output it could not reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from metaloss.meta import forward_mode
from metaloss.meta.guard import NonFiniteError, check_grads, check_loss
from metaloss.meta.inner import Backend, GradHook, buffer_copies, inner_update, trainable_params
from metaloss.meta.loss import FirstLoss, split_loss
from metaloss.protocols import ParamDict

#: How the meta-gradient is computed: "double_backward" (through the inner step's backward graph),
#: "jvp" (one forward-mode pass, exact for one tracked step; ``metaloss.meta.forward_mode``) or "auto"
#: (jvp where it applies, else double backward).  None: the problem's ``meta_gradient_method``
#: attribute if it has one, else "double_backward".
MetaGradientMethod = Literal["auto", "double_backward", "jvp"]
#: What the outer loss sees: the learner after ``inner_steps`` unrolled steps ("unrolled", MAML), or the
#: output that minimises the inner loss ("optimum"; the problem's ``optimum_outer_loss``), or the
#: learner's output now after one gradient step of the inner loss on the output itself ("output"; the
#: problem's ``output_outer_loss``).
Horizon = Literal["unrolled", "optimum", "output"]
#: the problem method each horizon but "unrolled" calls, and its arguments (for the error without it)
_HORIZON_HOOKS = {
    "optimum": ("optimum_outer_loss", "(objective_params, batch)"),
    "output": ("output_outer_loss", "(learner_params, objective_params, batch, step)"),
}


def resolve_method(
    problem: Any,
    method: MetaGradientMethod | None,
    *,
    inner_steps: int,
    truncate: int,
    backend: str,
    inner_grad_hook: Any,
) -> Literal["double_backward", "jvp"]:
    """The method ``meta_gradient`` uses (see ``MetaGradientMethod``)."""
    if method is None:
        method = getattr(problem, "meta_gradient_method", None) or "double_backward"
    if method not in ("auto", "double_backward", "jvp"):
        raise ValueError(f"unknown meta-gradient method {method!r}; choose 'auto', 'double_backward' or 'jvp'")
    applies = forward_mode.jvp_applies(
        problem, inner_steps=inner_steps, truncate=truncate, backend=backend, inner_grad_hook=inner_grad_hook
    )
    if method == "jvp" and not applies:
        raise ValueError(
            "method='jvp' needs the torch.func backend, a problem with learner_output/inner_loss_from_output, "
            "one tracked inner step (inner_steps = 1 or truncate = 1) and no inner gradient hook"
        )
    return "jvp" if method == "jvp" or (method == "auto" and applies) else "double_backward"


@runtime_checkable
class MetaProblem(Protocol):
    """A learner trained by a learned loss (the loss generator's), judged by an objective.

    ``learner`` (F), ``loss_generator`` (G) and ``objective`` (T, or None when the outer loss needs no
    network of its own).  The three losses take parameter dicts for ``functional_call``:

    - ``inner_loss(learner_params, batch)``: the learned loss; depends on the loss generator (graph to
      phi).  A scalar tensor, or a ``metaloss.meta.loss.Loss`` (``total`` and named ``terms``, logged).
    - ``objective_loss(objective_params, learner_params, batch)``: the objective network's own loss on
      the learner's output, which it must detach.
    - ``outer_loss(learner_params, objective_params, batch)``: the meta-objective.

    Optional, for ``horizon="optimum"``: ``optimum_outer_loss(objective_params, batch)``, the
    meta-objective at the output that minimises the inner loss (graph to phi, none to the learner).
    """

    learner: nn.Module
    loss_generator: nn.Module

    @property
    def objective(self) -> nn.Module | None: ...  # read-only here, so a problem may declare it nn.Module

    def inner_loss(self, learner_params: ParamDict, batch: Any) -> Any: ...

    def objective_loss(self, objective_params: ParamDict, learner_params: ParamDict, batch: Any) -> Tensor: ...

    def outer_loss(self, learner_params: ParamDict, objective_params: ParamDict | None, batch: Any) -> Tensor: ...


@dataclass
class MetaStepResult:
    """The losses of a meta-step: the inner loss at the learner's current parameters (the first inner
    step) and its ``inner_terms``, the objective's look-ahead loss, the outer loss, and the norm of the
    loss generator's meta-gradient."""

    inner_loss: float
    outer_loss: float
    objective_loss: float | None = None
    loss_generator_grad_norm: float = 0.0
    inner_terms: dict[str, float] = field(default_factory=dict)


@dataclass
class LearnerStepResult:
    """The losses of a learner step: the learned loss and its terms, and the objective's own loss."""

    learner_loss: float
    objective_loss: float | None = None
    learner_terms: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def frozen(module: nn.Module | None) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from requiring grad (no graph is built through them)."""
    if module is None:
        yield
        return
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def meta_gradient(
    problem: MetaProblem,
    train_batch: Any,
    test_batch: Any,
    *,
    inner_lr: float,
    inner_steps: int = 1,
    truncate: int = 0,
    backend: Backend = "torch.func",
    lookahead_lr: float | None = None,
    inner_grad_hook: GradHook | None = None,
    train_scale: float = 1.0,
    test_scale: float = 1.0,
    method: MetaGradientMethod | None = None,
    horizon: Horizon = "unrolled",
    output_lr: float = 0.01,
) -> tuple[list[Tensor], MetaStepResult]:
    """grad_phi L_outer for the loss generator's trainable parameters (their order), and the losses.

    Data parallelism (``metaloss.distributed``): the losses on the meta-train batch (inner loss and
    the objective's look-ahead loss) are multiplied by ``train_scale``, the outer loss by
    ``test_scale`` (this process's shares of the global batches) before they are differentiated, and
    ``inner_grad_hook`` maps the gradients of every inner step and of the look-ahead before the step,
    differentiably (an all-reduce sum across processes).  Scaling the losses, not the gradients, keeps
    the result exact when the networks' forward passes themselves communicate (synchronised
    batch norm).  The losses reported are the unscaled ones of this process's batches.

    ``method``: see ``MetaGradientMethod``; both methods give the same gradient up to float rounding.
    ``horizon``: see ``Horizon``; with "optimum" or "output" the learner takes no step (``inner_*``,
    ``truncate``, ``backend`` and ``method`` do not apply) and the reported inner loss is the learner's,
    without a graph.  ``output_lr``: eta_y of the "output" horizon.
    """
    gen_params = [p for p in problem.loss_generator.parameters() if p.requires_grad]
    if not gen_params:
        raise ValueError("the loss generator has no parameter that requires grad")
    if horizon not in ("unrolled", "optimum", "output"):
        raise ValueError(f"unknown horizon {horizon!r}; choose 'unrolled', 'optimum' or 'output'")
    if horizon in _HORIZON_HOOKS and not hasattr(problem, _HORIZON_HOOKS[horizon][0]):
        name, signature = _HORIZON_HOOKS[horizon]
        raise ValueError(
            f"horizon {horizon!r} needs a problem with {name}{signature}; {type(problem).__name__} has none"
        )
    first = FirstLoss()  # the reported inner loss and its terms: the first step's

    def inner_fn(p: ParamDict) -> Tensor:
        loss = first.total(problem.inner_loss(p, train_batch))
        return loss * train_scale if train_scale != 1.0 else loss

    how = (
        horizon
        if horizon != "unrolled"
        else resolve_method(
            problem,
            method,
            inner_steps=inner_steps,
            truncate=truncate,
            backend=backend,
            inner_grad_hook=inner_grad_hook,
        )
    )
    learner_new: ParamDict = {}
    if how in ("optimum", "output"):  # the learner as it is now; its buffers stay as they are
        learner_new = {**trainable_params(problem.learner), **buffer_copies(problem.learner)}
        with torch.no_grad():  # its loss now, for the log
            inner_fn(learner_new)
    elif how == "jvp":
        theta0, learner_new, u, _ = forward_mode.tracked_step(
            problem,  # type: ignore[arg-type]
            train_batch,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            train_scale=train_scale,
            first=first,
        )
        tracked = dict(learner_new)
    else:
        learner_new = inner_update(
            problem.learner,
            inner_fn,
            inner_lr,
            steps=inner_steps,
            backend=backend,
            truncate=truncate,
            grad_hook=inner_grad_hook,
        )
    if how in ("double_backward", "jvp"):
        learner_new.update(buffer_copies(problem.learner))

    objective_params: ParamDict | None = None
    objective_value = None
    if problem.objective is not None:
        objective_params = {n: p.detach() for n, p in trainable_params(problem.objective).items()}
        if lookahead_lr and objective_params:  # a fixed objective takes no look-ahead step
            # with buffer copies: the learner's batch-norm statistics must not drift in a meta-step
            learner_now = {n: p.detach() for n, p in problem.learner.named_parameters()}
            learner_now.update(buffer_copies(problem.learner))
            with frozen(problem.loss_generator):
                values: list[float] = []

                def objective_fn(q: ParamDict) -> Tensor:
                    loss = problem.objective_loss(q, learner_now, train_batch)
                    values.append(float(loss.detach()))
                    return loss * train_scale if train_scale != 1.0 else loss

                updated = inner_update(
                    problem.objective, objective_fn, lookahead_lr, create_graph=False, grad_hook=inner_grad_hook
                )
            objective_params = {n: p.detach() for n, p in updated.items()}
            objective_value = values[0]
        objective_params.update(buffer_copies(problem.objective))

    if how == "optimum":
        outer = problem.optimum_outer_loss(objective_params, test_batch)  # type: ignore[attr-defined]
    elif how == "output":
        outer = problem.output_outer_loss(learner_new, objective_params, test_batch, output_lr)  # type: ignore[attr-defined]
    else:
        outer = problem.outer_loss(learner_new, objective_params, test_batch)
    scaled_outer = outer * test_scale if test_scale != 1.0 else outer
    if how == "jvp":  # dL/dphi = -eta (du/dphi)^T J v, v = dL/dtheta' (metaloss.meta.forward_mode)
        names = list(tracked)
        v = torch.autograd.grad(scaled_outer, [tracked[n] for n in names], allow_unused=True)
        del scaled_outer, learner_new, tracked
        jv = forward_mode.output_jvp(problem, theta0, dict(zip(names, v, strict=True)), train_batch)  # type: ignore[arg-type]
        del v
        raw = torch.autograd.grad(u, gen_params, jv.mul_(-inner_lr), allow_unused=True)
    else:
        raw = torch.autograd.grad(scaled_outer, gen_params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(gen_params, raw, strict=True)]
    norm = _norm(grads)
    assert first.value is not None
    return grads, MetaStepResult(
        inner_loss=first.value,
        outer_loss=float(outer.detach()),
        objective_loss=objective_value,
        loss_generator_grad_norm=norm,
        inner_terms=first.terms,
    )


def _norm(grads: list[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def meta_step(
    problem: MetaProblem,
    train_batch: Any,
    test_batch: Any,
    outer_optimizer: torch.optim.Optimizer,
    *,
    inner_lr: float,
    inner_steps: int = 1,
    truncate: int = 0,
    backend: Backend = "torch.func",
    lookahead_lr: float | None = None,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
    inner_grad_hook: GradHook | None = None,
    train_scale: float = 1.0,
    test_scale: float = 1.0,
    method: MetaGradientMethod | None = None,
    horizon: Horizon = "unrolled",
    output_lr: float = 0.01,
) -> MetaStepResult:
    """One meta-step: compute the meta-gradient and step the loss generator's optimizer.

    ``grad_hook`` sees the gradients before the step and may change them in place (e.g. to all-reduce
    them across processes; ``loss_generator_grad_norm`` is then the norm of the changed gradients).
    ``inner_grad_hook``, ``train_scale``, ``test_scale``, ``method``, ``horizon`` and ``output_lr``: see
    ``meta_gradient``.
    Only the loss generator's parameters change; the learner's and objective's parameters and buffers
    don't.  A NaN or Inf in a loss or in the gradients raises ``metaloss.meta.guard.NonFiniteError``
    before the step, leaving the loss generator and its optimizer untouched.
    """
    grads, result = meta_gradient(
        problem,
        train_batch,
        test_batch,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        truncate=truncate,
        backend=backend,
        lookahead_lr=lookahead_lr,
        inner_grad_hook=inner_grad_hook,
        train_scale=train_scale,
        test_scale=test_scale,
        method=method,
        horizon=horizon,
        output_lr=output_lr,
    )
    if grad_hook is not None:
        grad_hook(grads)
        result.loss_generator_grad_norm = _norm(grads)
    # finiteness before the step (after grad_hook, so all processes of a distributed run agree)
    check_loss(result.inner_loss, "learner", "inner")
    check_loss(result.objective_loss, "objective", "objective")
    check_loss(result.outer_loss, "loss_generator", "outer")
    gen_named = [(n, p) for n, p in problem.loss_generator.named_parameters() if p.requires_grad]
    check_grads(grads, "loss_generator", "outer", [n for n, _ in gen_named])
    gen_params = [p for _, p in gen_named]
    outer_optimizer.zero_grad(set_to_none=True)
    for p, g in zip(gen_params, grads, strict=True):
        p.grad = g
    outer_optimizer.step()
    return result


def learner_step(
    problem: MetaProblem,
    batch: Any,
    learner_optimizer: torch.optim.Optimizer,
    objective_optimizer: torch.optim.Optimizer | None = None,
    grad_clip: float | None = None,
    *,
    loss_scale: float = 1.0,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
    autocast: torch.dtype | None = None,
) -> LearnerStepResult:
    """One step of the learner on the current learned loss (loss generator frozen), then one of the
    objective network on its own loss with the learner's output detached.  Returns both losses.

    Each of the two optimizer steps is taken only when its loss and gradients are finite; otherwise
    ``NonFiniteError`` is raised and that network's parameters, optimizer state and buffers (batch-norm
    statistics) are as before the batch.  When only the objective's loss or gradient is non-finite,
    the learner has already stepped: the error's ``stepped`` is then ``("learner",)``.

    Each loss is multiplied by ``loss_scale`` before its backward pass and ``grad_hook`` sees each
    network's gradients (``p.grad``, in place) before the checks, clipping and step: data-parallel
    training scales by the rank's share of the global batch and sums the gradients over the ranks.
    The losses returned are unscaled.

    ``autocast`` (e.g. ``torch.bfloat16``): the two forward passes run under ``torch.autocast`` on the
    learner's device type, their backward passes outside it; parameters, gradients and optimizer
    states keep their own dtype.  (``meta_step`` has no such switch: the meta-gradient is a small
    difference of second-order terms that bfloat16's 8-bit mantissa would drown.)
    """
    learner_params = trainable_params(problem.learner)
    learner_optimizer.zero_grad(set_to_none=True)
    saved = _buffer_snapshot(problem.learner)
    with frozen(problem.loss_generator), _autocast(problem.learner, autocast):
        loss, terms = split_loss(problem.inner_loss(learner_params, batch))
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    if grad_hook is not None:
        grad_hook([p.grad for p in learner_params.values() if p.grad is not None])
    try:
        check_loss(loss, "learner", "learner")
        check_grads([p.grad for p in learner_params.values()], "learner", "learner", list(learner_params))
    except NonFiniteError:
        _restore(saved)
        learner_optimizer.zero_grad(set_to_none=True)
        raise
    if grad_clip:
        nn.utils.clip_grad_norm_(learner_params.values(), grad_clip)
    learner_optimizer.step()
    objective_value = None
    if problem.objective is not None and objective_optimizer is not None:
        objective_params = trainable_params(problem.objective)
        objective_optimizer.zero_grad(set_to_none=True)
        saved = _buffer_snapshot(problem.objective)
        learner_now = {n: p.detach() for n, p in problem.learner.named_parameters()}
        with _autocast(problem.learner, autocast):
            objective = problem.objective_loss(objective_params, learner_now, batch)
        (objective * loss_scale if loss_scale != 1.0 else objective).backward()
        if grad_hook is not None:
            grad_hook([p.grad for p in objective_params.values() if p.grad is not None])
        try:
            check_loss(objective, "objective", "objective")
            check_grads([p.grad for p in objective_params.values()], "objective", "objective", list(objective_params))
        except NonFiniteError as err:
            _restore(saved)
            objective_optimizer.zero_grad(set_to_none=True)
            err.stepped = ("learner",)
            raise
        if grad_clip:
            nn.utils.clip_grad_norm_(objective_params.values(), grad_clip)
        objective_optimizer.step()
        objective_value = float(objective.detach())
    return LearnerStepResult(float(loss.detach()), objective_value, terms)


def _autocast(module: nn.Module, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on the device type of ``module``'s parameters; None: no autocast."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(module.parameters()).device.type, dtype=dtype)


def _buffer_snapshot(module: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Copies of ``module``'s buffers (batch-norm statistics), to undo a forward pass of a skipped step."""
    return [(b, b.detach().clone()) for b in module.buffers()]


def _restore(saved: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for buffer, copy in saved:
            buffer.copy_(copy)
