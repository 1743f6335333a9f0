"""Differentiable inner updates: theta' = theta - lr * grad L(theta), keeping the graph (second order)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from metaloss.protocols import ParamDict

Backend = Literal["torch.func", "higher"]
LossFn = Callable[[ParamDict], Tensor]
#: maps the gradients of an inner step before the step is taken (None for unused parameters)
GradHook = Callable[[Sequence[Tensor | None]], list[Tensor | None]]


def trainable_params(module: nn.Module) -> ParamDict:
    """The parameters that require grad, by name (ultralytics' fixed DFL conv, e.g., is left out)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def buffer_copies(module: nn.Module) -> ParamDict:
    """Copies of the module's buffers, so a functional forward in train mode (BatchNorm) cannot change them."""
    return {n: b.clone() for n, b in module.named_buffers()}


def inner_update(
    module: nn.Module,
    loss_fn: LossFn,
    lr: float,
    steps: int = 1,
    params: ParamDict | None = None,
    backend: Backend = "torch.func",
    truncate: int = 0,
    create_graph: bool = True,
    grad_hook: GradHook | None = None,
) -> ParamDict:
    """``steps`` SGD steps on ``loss_fn``; returns the updated parameters by name.

    ``loss_fn(p)`` must compute the loss through ``torch.func.functional_call(module, p, ...)``; ``p``
    holds the current parameters and copies of the module's buffers, so the module's own buffers
    (BatchNorm statistics) are never changed.  With ``create_graph`` the result keeps the graph to
    everything ``loss_fn`` depends on (a loss generator, the initial parameters): the meta-gradient is
    second order.  ``truncate = k > 0`` backpropagates through the last k steps only (the earlier
    steps are taken without graph).  ``backend="higher"`` takes the same steps with the ``higher``
    library's differentiable SGD.  ``grad_hook(grads)`` maps each step's gradients before the step;
    it must be differentiable where the step keeps its graph (``metaloss.distributed`` all-reduces them
    across processes, so that every process steps on the gradient of the global batch).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= truncate <= steps:
        raise ValueError(f"truncate must be in [0, steps={steps}], got {truncate}")
    if backend not in ("torch.func", "higher"):
        raise ValueError(f"unknown backend {backend!r}; choose 'torch.func' or 'higher'")
    current = dict(trainable_params(module) if params is None else params)
    if not current:
        raise ValueError(f"{type(module).__name__} has no parameter that requires grad")
    buffers = buffer_copies(module)
    names = list(current)
    step_fn = _torch_func_step if backend == "torch.func" else _higher_stepper(current, lr)
    if grad_hook is not None:
        step_fn = functools.partial(step_fn, grad_hook=grad_hook)
    first_tracked = steps - truncate if truncate else 0
    for step in range(steps):
        tracked = create_graph and step >= first_tracked
        loss = loss_fn({**current, **buffers})
        new = step_fn(loss, [current[n] for n in names], lr, tracked)
        if not tracked:
            new = [p.detach().requires_grad_(True) for p in new]
        current = dict(zip(names, new, strict=True))
    return current


def _torch_func_step(
    loss: Tensor, params: list[Tensor], lr: float, create_graph: bool, grad_hook: GradHook | None = None
) -> list[Tensor]:
    grads: Sequence[Tensor | None] = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    if grad_hook is not None:
        grads = grad_hook(grads)
    return [p if g is None else p - lr * g for p, g in zip(params, grads, strict=True)]


def _higher_stepper(initial: ParamDict, lr: float) -> Callable[..., list[Tensor]]:
    try:
        import higher
    except ImportError as err:
        raise ImportError(
            "backend='higher' needs the optional dependency 'higher': pip install 'metaloss[higher]'"
        ) from err
    placeholders = [torch.empty_like(p, requires_grad=False) for p in initial.values()]
    sgd = torch.optim.SGD(placeholders, lr=lr)
    diffopt = higher.optim.get_diff_optim(sgd, placeholders, track_higher_grads=True)

    def step(
        loss: Tensor, params: list[Tensor], lr_: float, create_graph: bool, grad_hook: GradHook | None = None
    ) -> list[Tensor]:
        diffopt._track_higher_grads = create_graph
        return list(diffopt.step(loss, params=params, grad_callback=grad_hook))

    return step
