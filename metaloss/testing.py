"""Contract checks for plugins: does a fusion network, loss generator, task or dataset do what the core expects?

Use them in a plugin's own tests (``docs/plugins.md``)::

    from metaloss import testing

    def test_contracts():
        testing.check_fusion_net(MyFusion())
        testing.check_loss_generator(MyLossGenerator())
        testing.check_task(MyTask(num_classes=3))          # on testing.synthetic_batch(): 3 mask classes
        testing.check_dataset(MyDataset(split="train"))
        testing.check_meta_gradient(MyLossGenerator(), fusion=MyFusion(), task=MyTask(num_classes=3))

    def test_entry_points():                               # after `pip install -e .`
        testing.check_distribution("metaloss-myplug")

Every check raises ``PluginContractError`` (a subclass of ``AssertionError``, so pytest reports it as a
failed assertion) whose message names the plugin, the contract and what was found, e.g.::

    PluginContractError: BrokenFusion (fusion network): forward(ir, vi) must return [B, 1, H, W] =
    [2, 1, 19, 27] for ir, vi [2, 1, 19, 27] float32 on cpu; got [2, 2, 19, 27]

Doubtful but legal findings (parameters that get no gradient, map keys that the fusion loss ignores)
are reported as ``PluginContractWarning``.  The checks work on deep copies: the objects passed in are
left as they were (parameters, buffers, device, dtype, train/eval mode).

Device: every check runs on ``device`` (default CPU) and, to catch tensors that do not follow the input
without a GPU, also runs the forward pass on PyTorch's ``meta`` device (shapes only, no data): a tensor
created on the CPU inside ``forward`` (``torch.zeros(shape)`` without ``device=``), or a constant kept
as a plain attribute instead of a buffer, is reported there.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaloss.protocols import Batch, Task

__all__ = [
    "MetaGradientReport",
    "PluginContractError",
    "PluginContractWarning",
    "ProbeTask",
    "batch_from_dataset",
    "check_dataset",
    "check_distribution",
    "check_fusion_net",
    "check_loss_generator",
    "check_meta_gradient",
    "check_plugin",
    "check_task",
    "synthetic_batch",
]

#: The label keys :func:`synthetic_batch` can make; a task may declare any other key (a batch carries
#: whatever its dataset loads) and is then checked on a batch the caller passes.
TARGETS = ("mask", "boxes")
#: Batch keys that are not labels.
_IMAGE_KEYS = ("name", "ir", "vi", "task_ir", "task_vi")
#: Map keys that ``metaloss.losses.fusion_loss`` reads.
MAP_KEYS = ("intensity", "gradient")
#: Default input sizes (B, H, W): odd sides catch networks that assume even or multiple-of-8 sizes.
FUSION_SIZES: tuple[tuple[int, int, int], ...] = ((2, 19, 27), (1, 32, 32))
#: Synthetic scenes have 3 mask classes (background, person, vehicle) and 2 box classes.
SYNTHETIC_NUM_CLASSES, SYNTHETIC_NUM_BOX_CLASSES = 3, 2


class PluginContractError(AssertionError):
    """A plugin violates a contract of ``metaloss.protocols``; the message says which and how."""


class PluginContractWarning(UserWarning):
    """Legal but suspicious plugin behaviour (e.g. parameters that never receive a gradient)."""


# -- helpers ---------------------------------------------------------------------------------------------
def _label(obj: Any, role: str) -> str:
    return f"{type(obj).__name__} ({role})"


def _fail(label: str, message: str) -> NoReturn:
    raise PluginContractError(f"{label}: {message}")


def _warn(label: str, message: str) -> None:
    warnings.warn(f"{label}: {message}", PluginContractWarning, stacklevel=3)


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _describe_input(x: Tensor) -> str:
    return f"{_shape(x)} {str(x.dtype).replace('torch.', '')} on {x.device}"


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _tensors(obj: Any) -> Iterable[Tensor]:
    """Every tensor inside nested lists, tuples and dicts."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _probe_scalar(obj: Any, seed: int = 0) -> Tensor:
    """A scalar that depends on every floating output element (fixed random weights, not all equal)."""
    total: Tensor | None = None
    g = torch.Generator().manual_seed(seed)
    for t in _tensors(obj):
        if not t.is_floating_point():
            continue
        w = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) + 0.5
        term = (t * w).sum()
        total = term if total is None else total + term
    if total is None:
        raise TypeError("the output holds no floating-point tensor")
    return total


def _same(a: Tensor, b: Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and bool(torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    )


def _tensor_state(module: nn.Module) -> dict[str, Tensor]:
    """Copies of the parameters, buffers and plain tensor attributes of ``module`` and its submodules."""
    state: dict[str, Tensor] = {}
    for mname, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                state[f"{mname}.{attr}" if mname else attr] = value.detach().clone()
    state.update({n: b.detach().clone() for n, b in module.named_buffers()})
    state.update({n: p.detach().clone() for n, p in module.named_parameters()})
    return state


def _changed(before: Mapping[str, Tensor], module: nn.Module) -> list[str]:
    after = _tensor_state(module)
    return [n for n, t in before.items() if n not in after or not _same(t, after[n])]


def _trainable(module: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _copy(module: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    m = copy.deepcopy(module)
    return m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)


def _images(
    size: tuple[int, int, int], dtype: torch.dtype, device: torch.device | str, seed: int
) -> tuple[Tensor, Tensor]:
    """A smooth, textured (ir, vi) pair in [0, 1] (random but with structure, so gradients are informative)."""
    b, h, w = size
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij"
    )
    out = []
    for k in range(2):
        phase = torch.rand(b, 1, 1, 1, generator=g, dtype=torch.float64) * 6.28
        base = 0.5 + 0.3 * torch.sin(7 * (xx + (k + 1) * yy) + phase)
        noise = 0.1 * torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
        out.append((base + noise).clamp(0, 1).to(device=device, dtype=dtype))
    return out[0], out[1]


_DEVICE_MISMATCH = re.compile(r"device", re.IGNORECASE)


def _meta_device_check(
    label: str, module: nn.Module, call: Callable[[nn.Module, torch.device], Any], what: str
) -> None:
    """Run ``call(module_on_meta, meta)``; a device mismatch is a contract violation, anything else is
    inconclusive (not every operator exists on the meta device) and ignored."""
    meta = torch.device("meta")
    try:
        m = copy.deepcopy(module).to(meta)
    except Exception:
        return
    try:
        out = call(m, meta)
    except Exception as err:
        text = str(err)
        if _DEVICE_MISMATCH.search(text) and "meta" in text and "cpu" in text:
            _fail(
                label,
                f"{what} uses a tensor on another device than its input (found by running it on the 'meta' "
                f"device): {_error_text(err)}.  Create tensors with device=x.device (x.new_zeros, "
                "torch.zeros_like) and register constants with register_buffer so that .to(device) moves them",
            )
        return
    for t in _tensors(out):
        if t.device != meta:
            _fail(
                label,
                f"{what} returned a tensor on {t.device} for input on the 'meta' device: outputs must follow the "
                "input's device",
            )


def _check_functional(
    label: str,
    module: nn.Module,
    args: tuple[Any, ...],
    scalar: Callable[[Any], Tensor],
    what: str,
) -> None:
    """The module works under ``torch.func.functional_call`` as the core runs it: with a parameter dict
    and copies of its buffers, in train mode.  Its output must depend on the parameters passed, and its
    own parameters, buffers and tensor attributes must not change."""
    from metaloss.meta.inner import buffer_copies

    module.train()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in _trainable(module).items()}
    before = _tensor_state(module)
    grads_before = {n: p.grad for n, p in module.named_parameters()}
    try:
        out = functional_call(module, {**params, **buffer_copies(module)}, args)
        loss = scalar(out)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    except PluginContractError:
        raise
    except Exception as err:
        _fail(label, f"{what} failed under torch.func.functional_call with a parameter dict: {_error_text(err)}")
    changed = _changed(before, module)
    if changed:
        _fail(
            label,
            f"{what} under torch.func.functional_call (parameters and buffer copies passed in, train mode) "
            f"changed the module's own state: {', '.join(changed[:5])}.  Keep running statistics in registered "
            "buffers (register_buffer) and do not assign tensors to attributes in forward",
        )
    if any(p.grad is not grads_before[n] for n, p in module.named_parameters()):
        _fail(label, f"{what} wrote .grad of the module's own parameters (call no backward() inside forward or loss)")
    names = list(params)
    used = [n for n, g in zip(names, grads, strict=True) if g is not None and bool(g.abs().sum() > 0)]
    if not used:
        _fail(
            label,
            f"{what}: the output does not depend on the parameters passed through torch.func.functional_call "
            "(does forward use p.data, .detach(), torch.no_grad(), a cached copy of the weights, or weights "
            "held outside the module?); the inner update would not change it",
        )
    bad = [n for n, g in zip(names, grads, strict=True) if g is not None and not bool(torch.isfinite(g).all())]
    if bad:
        _fail(label, f"{what}: non-finite gradient for parameter(s) {', '.join(bad[:5])}")
    unused = [n for n, g in zip(names, grads, strict=True) if g is None]
    if unused:
        _warn(label, f"parameter(s) {', '.join(unused[:8])} receive no gradient from {what} (unused?)")


def _check_image_output(
    label: str, out: Any, x: Tensor, channels: int, what: str, lo: float | None, hi: float | None, atol: float
) -> None:
    b, _, h, w = x.shape
    if not isinstance(out, Tensor):
        _fail(label, f"{what} must return a Tensor, got {type(out).__name__}")
    if tuple(out.shape) != (b, channels, h, w):
        _fail(
            label,
            f"{what} must return [B, {channels}, H, W] = {[b, channels, h, w]} for input {_describe_input(x)}; got "
            f"{_shape(out)}",
        )
    if out.dtype != x.dtype:
        _fail(
            label,
            f"{what}: output dtype {out.dtype} does not follow the input's {x.dtype} (input {_describe_input(x)})",
        )
    if out.device != x.device:
        _fail(label, f"{what}: output on {out.device} does not follow the input's device {x.device}")
    out = out.detach()
    if not bool(torch.isfinite(out).all()):
        _fail(label, f"{what} returned NaN or inf for input {_describe_input(x)}")
    mn, mx = float(out.min()), float(out.max())
    if (lo is not None and mn < lo - atol) or (hi is not None and mx > hi + atol):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        _fail(label, f"{what} values must be {rng}; got min {mn:.4g}, max {mx:.4g} for input {_describe_input(x)}")


# -- fusion networks -----------------------------------------------------------------------------------------
def check_fusion_net(
    net: nn.Module,
    *,
    sizes: Sequence[tuple[int, int, int]] = FUSION_SIZES,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    device: torch.device | str = "cpu",
    atol: float = 1e-6,
) -> None:
    """Check a fusion network F against ``metaloss.protocols.FusionNet``.

    Contracts: a ``torch.nn.Module`` with trainable parameters; ``forward(ir, vi)`` with ``ir``, ``vi``
    ``[B, 1, H, W]`` in [0, 1] of any ``(B, H, W)`` in ``sizes`` returns ``[B, 1, H, W]`` in [0, 1], finite,
    of the input's dtype (each of ``dtypes``) and device; it leaves its inputs and parameters unchanged;
    it is differentiable w.r.t. the parameters passed by ``torch.func.functional_call`` and leaves its own
    buffers alone under it; the gradient of the fusion loss w.r.t. its parameters is itself differentiable
    w.r.t. the loss weights (second order: without it the meta-gradient is zero); it works in eval mode
    under ``torch.no_grad`` (inference).
    """
    label = _label(net, "fusion network")
    if not isinstance(net, nn.Module):
        _fail(label, "must be a torch.nn.Module (functional_call, .to(device) and checkpoints need one)")
    if not _trainable(net):
        _fail(label, "has no parameter that requires grad: the fusion network is what the learned loss trains")
    for dtype in dtypes:
        m = _copy(net, device, dtype).train()
        for seed, size in enumerate(sizes):
            ir, vi = _images(size, dtype, device, seed)
            ir0, vi0, before = ir.clone(), vi.clone(), _tensor_state(m)
            what = "forward(ir, vi)"
            try:
                out = m(ir, vi)
            except Exception as err:
                _fail(label, f"{what} raised {_error_text(err)} for ir, vi {_describe_input(ir)}")
            _check_image_output(label, out, ir, 1, what, 0.0, 1.0, atol)
            if not out.requires_grad:
                _fail(
                    label,
                    f"{what}: the output does not require grad; forward must be differentiable w.r.t. the parameters "
                    "(no torch.no_grad, .detach() or .data inside)",
                )
            if not (_same(ir, ir0) and _same(vi, vi0)):
                _fail(label, f"{what} modified its inputs in place; the fusion loss compares the output with them")
            changed = [n for n in _changed(before, m) if n in dict(m.named_parameters())]
            if changed:
                _fail(label, f"{what} changed parameter(s) {', '.join(changed[:5])}")
    m = _copy(net, device)
    ir, vi = _images(sizes[0], torch.float32, device, 0)
    _check_functional(label, m, (ir, vi), _probe_scalar, "forward(ir, vi)")
    _check_second_order(label, m, ir, vi)
    m.eval()
    with torch.no_grad():
        try:
            out = m(ir, vi)
        except Exception as err:
            _fail(label, f"forward(ir, vi) in eval mode under torch.no_grad (inference) raised {_error_text(err)}")
    _check_image_output(label, out, ir, 1, "forward(ir, vi) in eval mode", 0.0, 1.0, atol)
    _meta_device_check(label, net, lambda mm, d: mm(ir.to(d), vi.to(d)), "forward(ir, vi)")


def _check_second_order(label: str, net: nn.Module, ir: Tensor, vi: Tensor) -> None:
    from metaloss.losses import fusion_loss

    params = {n: p.detach().clone().requires_grad_(True) for n, p in _trainable(net).items()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    logits = torch.zeros(ir.shape[0], 2, *ir.shape[-2:], dtype=ir.dtype, device=ir.device, requires_grad=True)
    try:
        fused = functional_call(net, {**params, **buffers}, (ir, vi))
        loss = fusion_loss(fused, ir, vi, {"intensity": torch.softmax(logits, dim=1)}).total
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
        inner = sum((g * g).sum() for g in grads if g is not None)
        if not isinstance(inner, Tensor) or not inner.requires_grad:
            dlogits = None
        else:
            (dlogits,) = torch.autograd.grad(inner, [logits], allow_unused=True)
    except Exception as err:
        _fail(
            label,
            f"second-order gradient through forward failed: {_error_text(err)}.  The meta-step differentiates the "
            "inner update (grad of the fusion loss w.r.t. the parameters, create_graph=True); every operator "
            "on the path needs a double backward",
        )
    if dlogits is None or not bool(dlogits.abs().sum() > 0):
        _fail(
            label,
            "the gradient of the fusion loss w.r.t. the parameters does not depend on the loss weights "
            "(second order): the loss generator would get exactly zero meta-gradient.  Is there a detach() or "
            "an operator without double backward on the path?",
        )


# -- loss generators -----------------------------------------------------------------------------------------
def check_loss_generator(
    generator: nn.Module,
    *,
    sizes: Sequence[tuple[int, int, int]] = FUSION_SIZES,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    device: torch.device | str = "cpu",
    trainable: bool = True,
    sums_to_one: bool = False,
    atol: float = 1e-5,
) -> None:
    """Check a loss generator G against ``metaloss.protocols.LossGenerator``.

    Contracts: a ``torch.nn.Module``; with ``trainable`` (default) it has parameters that require grad
    (``trainable=False`` for a fixed baseline, run with ``meta.meta_steps = 0``); ``forward(ir, vi)``
    returns a mapping with ``"intensity"`` and optionally ``"gradient"``, each ``[B, 2, H, W]`` (channel 0
    weights the infrared source, channel 1 the visible one), finite, >= 0, of the input's dtype and
    device (``sums_to_one``: the two channels also sum to 1 per pixel); differentiable w.r.t. its
    parameters; inputs left unchanged; ``metaloss.losses.fusion_loss`` accepts the maps.
    """
    from metaloss.losses import fusion_loss

    label = _label(generator, "loss generator")
    if not isinstance(generator, nn.Module):
        _fail(label, "must be a torch.nn.Module (its parameters are what the meta-step trains)")
    has_params = bool(_trainable(generator))
    if trainable and not has_params:
        _fail(
            label,
            "has no parameter that requires grad, so the meta phase has nothing to learn; pass trainable=False "
            "for a fixed baseline (and run it with meta.meta_steps = 0)",
        )
    for dtype in dtypes:
        m = _copy(generator, device, dtype).train()
        for seed, size in enumerate(sizes):
            ir, vi = _images(size, dtype, device, seed)
            ir0, vi0 = ir.clone(), vi.clone()
            maps = _call_generator(label, m, ir, vi)
            for key in MAP_KEYS:
                if key in maps:
                    what = f"forward(ir, vi)[{key!r}]"
                    _check_image_output(label, maps[key], ir, 2, what, 0.0, None, atol)
                    if sums_to_one:
                        err = float((maps[key].detach().sum(1) - 1).abs().max())
                        if err > 1e-4:
                            _fail(
                                label,
                                f"{what}: the two channels must sum to 1 per pixel (sums_to_one=True); off by up to "
                                f"{err:.3g}",
                            )
                    if has_params and trainable and not maps[key].requires_grad:
                        _fail(
                            label,
                            f"{what} does not require grad: the maps must be differentiable w.r.t. the generator's "
                            "parameters (no torch.no_grad, .detach() or .data)",
                        )
            if not (_same(ir, ir0) and _same(vi, vi0)):
                _fail(label, "forward(ir, vi) modified its inputs in place; the fusion loss reads them afterwards")
            try:
                total = fusion_loss((ir + vi) / 2, ir, vi, maps).total
            except Exception as err:
                _fail(label, f"metaloss.losses.fusion_loss rejects the maps: {_error_text(err)}")
            if not bool(torch.isfinite(total)):
                _fail(label, "the fusion loss with these maps is not finite")
    m = _copy(generator, device)
    ir, vi = _images(sizes[0], torch.float32, device, 0)
    if has_params:
        _check_functional(
            label, m, (ir, vi), lambda out: _probe_scalar({k: out[k] for k in MAP_KEYS if k in out}), "forward(ir, vi)"
        )
    _meta_device_check(label, generator, lambda mm, d: dict(mm(ir.to(d), vi.to(d))), "forward(ir, vi)")


def _call_generator(label: str, m: nn.Module, ir: Tensor, vi: Tensor) -> Mapping[str, Tensor]:
    try:
        maps = m(ir, vi)
    except Exception as err:
        _fail(label, f"forward(ir, vi) raised {_error_text(err)} for ir, vi {_describe_input(ir)}")
    if not isinstance(maps, Mapping):
        _fail(
            label,
            "forward(ir, vi) must return a mapping "
            "{'intensity': [B, 2, H, W], 'gradient' (optional): [B, 2, H, W]}, "
            f"got {type(maps).__name__}",
        )
    if "intensity" not in maps:
        _fail(
            label,
            f"forward(ir, vi) must return the key 'intensity' (the intensity-term weights); got keys {sorted(maps)}",
        )
    extra = sorted(set(maps) - set(MAP_KEYS))
    if extra:
        _warn(label, f"map key(s) {extra} are ignored by metaloss.losses.fusion_loss (it reads {list(MAP_KEYS)})")
    return maps


# -- batches -----------------------------------------------------------------------------------------------------
def _task_batch(
    batch: Batch, targets: Sequence[str] | None, device: torch.device | str, dtype: torch.dtype | None
) -> Batch:
    """A collated batch as the problem prepares it: ``ir``/``vi`` and ``task_ir``/``task_vi`` (the same
    images here), targets filtered by ``targets`` (None: all) and moved to ``device``."""
    out: Batch = {}
    for key, value in batch.items():
        if targets is not None and key not in _IMAGE_KEYS and key not in targets:
            continue
        if isinstance(value, Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point() and key != "boxes":
                value = value.to(dtype)
        out[key] = value
    out.setdefault("task_ir", out["ir"])
    out.setdefault("task_vi", out["vi"])
    return out


def synthetic_batch(
    size: tuple[int, int, int] = (2, 32, 32),
    *,
    targets: Sequence[str] | None = TARGETS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """A ready batch of ``size = (B, H, W)`` synthetic scenes (``metaloss.data.synthetic``), as the core
    passes it to a task: ``ir``, ``vi``, ``task_ir``, ``task_vi`` [B, 1, H, W] in [0, 1], ``name`` (list),
    and the targets named in ``targets``: ``mask`` [B, H, W] long with 3 classes (0 background, 1 person,
    2 vehicle), ``boxes`` [N, 6] = image index, class (0 person, 1 vehicle), cx, cy, w, h normalised."""
    from metaloss.data.collate import collate_pairs
    from metaloss.data.synthetic import SyntheticScenes

    b, h, w = size
    ds = SyntheticScenes(num_images=b, height=h, width=w, seed=seed, split="train")
    return _task_batch(collate_pairs([ds[i] for i in range(b)]), targets, device, dtype)


def batch_from_dataset(
    dataset: Any,
    indices: Sequence[int] = (0, 1),
    *,
    targets: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> Batch:
    """A ready batch (like ``synthetic_batch``) from items of your own dataset (same-size items)."""
    from metaloss.data.collate import collate_pairs

    return _task_batch(collate_pairs([dataset[i] for i in indices]), targets, device, None)


# -- tasks ----------------------------------------------------------------------------------------------------------
def check_task(
    task: nn.Module,
    batch: Batch | None = None,
    *,
    device: torch.device | str = "cpu",
    size: tuple[int, int, int] = (2, 32, 32),
) -> None:
    """Check a task T against ``metaloss.protocols.Task`` on ``batch`` (default: ``synthetic_batch(size)``,
    whose masks have 3 classes and boxes 2 classes, so build the task with matching ``num_classes``).

    Contracts: a ``torch.nn.Module`` with trainable parameters (it is trained in the loop); ``targets``
    a tuple of label keys (``()`` for an unlabelled objective; keys other than ``"mask"``/``"boxes"`` need a
    ``batch`` that carries them); ``forward(fused)``
    with ``fused`` [B, 1, H, W] in [0, 1] returns anything whose tensors follow the input's device;
    ``loss(outputs, batch)`` returns a finite 0-dim floating tensor, differentiable w.r.t. ``fused`` (the
    only path from the meta-objective back to the loss generator) and w.r.t. the task's parameters;
    ``forward`` works under ``torch.func.functional_call`` and leaves the module's buffers alone there;
    ``evaluator()`` returns a fresh object with ``update(outputs, batch)`` and ``compute() -> dict[str, float]``
    (called in eval mode under ``torch.no_grad``).
    """
    label = _label(task, "task")
    if not isinstance(task, nn.Module):
        _fail(label, "must be a torch.nn.Module (it is trained in the loop and run with functional_call)")
    if not _trainable(task):
        _fail(
            label,
            "has no parameter that requires grad: the task network is trained in the loop (and looked ahead in each "
            "meta-step)",
        )
    targets = getattr(task, "targets", None)
    if targets is None:
        _warn(
            label,
            "has no `targets` attribute, so every label key of a batch reaches it; declare e.g. "
            "targets = ('mask',), or "
            "() for an unlabelled objective",
        )
    else:
        if (
            isinstance(targets, str)
            or not isinstance(targets, (tuple, list))
            or not all(isinstance(t, str) for t in targets)
        ):
            _fail(label, f"`targets` must be a tuple of label keys, e.g. ('mask',) or (); got {targets!r}")
        unknown = [t for t in targets if t not in TARGETS]
        if unknown and batch is None:
            _fail(
                label,
                f"`targets` names label key(s) {unknown} that synthetic batches do not have (only {list(TARGETS)}); "
                "pass check_task(..., batch=...) with them",
            )
        missing = [t for t in unknown if batch is not None and t not in batch]
        if missing:
            _fail(label, f"`targets` names label key(s) {missing} that the batch given does not carry")
    fields = getattr(type(task), "dataset_fields", {})
    if not isinstance(fields, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        _fail(label, f"`dataset_fields` must map option names to dataset attribute names, got {fields!r}")
    m = _copy(task, device).train()
    plugin = cast(Task, m)  # its task methods (nn.Module.__getattr__ would type them as tensors)
    if batch is None:
        batch = synthetic_batch(size, targets=targets, device=device)
    else:
        batch = _task_batch(batch, targets, device, None)
    base = (batch["task_ir"] + batch["task_vi"]) / 2
    fused = base.detach().clone().requires_grad_(True)
    try:
        outputs = m(fused)
    except Exception as err:
        _fail(label, f"forward(fused) raised {_error_text(err)} for fused {_describe_input(fused)}")
    for t in _tensors(outputs):
        if t.device != fused.device:
            _fail(label, f"forward(fused) returned a tensor on {t.device} for input on {fused.device}")
    try:
        loss = plugin.loss(outputs, batch)
    except Exception as err:
        _fail(label, f"loss(outputs, batch) raised {_error_text(err)} (batch keys {sorted(batch)})")
    if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.is_floating_point():
        desc = f"Tensor {_shape(loss)} {loss.dtype}" if isinstance(loss, Tensor) else type(loss).__name__
        _fail(label, f"loss(outputs, batch) must return a 0-dim floating tensor (a scalar); got {desc}")
    if loss.device != fused.device:
        _fail(label, f"loss(outputs, batch) is on {loss.device}, not the input's device {fused.device}")
    if not bool(torch.isfinite(loss)):
        _fail(label, f"loss(outputs, batch) is not finite ({float(loss)})")
    if not loss.requires_grad:
        _fail(
            label,
            "loss(outputs, batch) does not require grad: it must be differentiable w.r.t. the outputs (no .item(), "
            ".detach(), numpy or torch.no_grad on the path)",
        )
    params = list(_trainable(m).values())
    try:
        grads = torch.autograd.grad(loss, [fused, *params], allow_unused=True)
    except Exception as err:
        _fail(label, f"backward of loss(forward(fused), batch) failed: {_error_text(err)}")
    gf = grads[0]
    if gf is None or not bool(gf.abs().sum() > 0):
        _fail(
            label,
            "loss(forward(fused), batch) is not differentiable w.r.t. the fused image (its gradient is "
            f"{'None' if gf is None else 'zero'}): the meta-objective reaches the fusion network, and through "
            "its inner update the loss generator, only through it",
        )
    if not bool(torch.isfinite(gf).all()):
        _fail(label, "the gradient of the loss w.r.t. the fused image is not finite")
    if all(g is None or not bool(g.abs().sum() > 0) for g in grads[1:]):
        _fail(label, "loss(forward(fused), batch) does not depend on the task's parameters: it could not be trained")
    if any(p.grad is not None for p in m.parameters()):
        _fail(label, "forward or loss called backward() and wrote .grad; the core takes gradients itself")
    _check_functional(label, m, (base,), lambda out: plugin.loss(out, batch), "loss(forward(fused), batch)")
    _check_evaluator(label, m, base, batch)
    _meta_device_check(label, task, lambda mm, d: mm(base.to(d)), "forward(fused)")


def _check_evaluator(label: str, task: nn.Module, fused: Tensor, batch: Batch) -> None:
    from metaloss.protocols import TaskEvaluator

    plugin = cast(Task, task)  # its task methods (nn.Module.__getattr__ would type them as tensors)
    try:
        ev = plugin.evaluator()
    except Exception as err:
        _fail(label, f"evaluator() raised {_error_text(err)}")
    if not isinstance(ev, TaskEvaluator):
        _fail(
            label,
            f"evaluator() must return an object with update(outputs, batch) and compute(); got {type(ev).__name__}",
        )
    if plugin.evaluator() is ev:
        _fail(label, "evaluator() must return a fresh evaluator each call (each evaluation starts from zero)")
    task.eval()
    try:
        with torch.no_grad():
            for i in range(fused.shape[0]):  # the core evaluates one image at a time
                one = {k: _select(v, i, fused.shape[0]) for k, v in batch.items()}
                ev.update(task(fused[i : i + 1]), one)
            result = ev.compute()
    except Exception as err:
        _fail(label, f"the evaluator failed (eval mode, torch.no_grad, batches of 1): {_error_text(err)}")
    finally:
        task.train()
    if not isinstance(result, Mapping) or not result:
        _fail(label, f"evaluator().compute() must return a non-empty dict[str, float]; got {result!r}")
    for k, v in result.items():
        if not isinstance(k, str) or not isinstance(v, numbers.Real) or isinstance(v, bool):
            _fail(
                label,
                f"evaluator().compute() must return dict[str, float] (plain Python numbers); got {k!r}: "
                f"{type(v).__name__}",
            )
        if not math.isfinite(float(v)):
            _fail(label, f"evaluator().compute()[{k!r}] is not finite ({v})")


def _select(value: Any, i: int, n: int) -> Any:
    """Image ``i`` of a batch value (boxes re-indexed to image 0)."""
    if isinstance(value, Tensor) and value.ndim == 2 and value.shape[-1] == 6:  # boxes
        rows = value[value[:, 0] == i].clone()
        rows[:, 0] = 0
        return rows
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[i : i + 1]
    if isinstance(value, list) and len(value) == n:
        return value[i : i + 1]
    return value


# -- datasets -------------------------------------------------------------------------------------------------------
def check_dataset(dataset: Any, *, indices: Sequence[int] | None = None, deterministic: bool = True) -> None:
    """Check a dataset against ``metaloss.protocols.PairedDataset`` on ``indices`` (default: the first two
    and the last item).

    Contracts: ``len(dataset) >= 1``; ``dataset[len(dataset)]`` raises ``IndexError``; ``num_classes``
    (int >= 0) and ``class_names`` (that many strings); each item a dict with ``name`` (str), ``ir`` and
    ``vi`` float tensors [1, H, W] in [0, 1], finite, the same size, not requiring grad; optional
    ``mask`` [H, W] int64 with values in [0, num_classes) or ``ignore_index`` (default 255); optional
    ``boxes`` [N, 5] float = class in [0, num_box_classes), cx, cy, w, h in [0, 1] (then
    ``num_box_classes`` is required); with ``deterministic``, the same index gives the same item (a resumed
    run must see the same data); items of equal size batch with ``metaloss.data.collate.collate_pairs``.
    """
    from metaloss.data.collate import collate_pairs

    label = _label(dataset, "dataset")
    try:
        n = len(dataset)
    except Exception as err:
        _fail(label, f"len(dataset) failed: {_error_text(err)}")
    if not isinstance(n, int) or n < 1:
        _fail(label, f"len(dataset) must be an int >= 1, got {n!r}")
    num_classes = getattr(dataset, "num_classes", None)
    names = getattr(dataset, "class_names", None)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        _fail(
            label,
            f"`num_classes` must be an int >= 0 (0 when unlabelled; background counts as a class), got {num_classes!r}",
        )
    if not isinstance(names, (tuple, list)) or len(names) != num_classes or not all(isinstance(s, str) for s in names):
        _fail(label, f"`class_names` must be {num_classes} strings (num_classes = {num_classes}), got {names!r}")
    try:
        dataset[n]
    except IndexError:
        pass
    except Exception as err:
        _fail(label, f"dataset[len(dataset)] must raise IndexError, raised {_error_text(err)}")
    else:
        _fail(
            label,
            "dataset[len(dataset)] must raise IndexError (out-of-range indices must not wrap around or return data)",
        )
    ignore = getattr(dataset, "ignore_index", 255)
    picks = list(indices) if indices is not None else sorted({0, min(1, n - 1), n - 1})
    items = []
    for i in picks:
        try:
            item = dataset[i]
        except Exception as err:
            _fail(label, f"dataset[{i}] raised {_error_text(err)}")
        where = f"dataset[{i}]"
        if not isinstance(item, Mapping):
            _fail(
                label,
                f"{where} must be a dict with 'name', 'ir', 'vi' (+ 'mask' or 'boxes'); got {type(item).__name__}",
            )
        missing = [k for k in ("name", "ir", "vi") if k not in item]
        if missing:
            _fail(label, f"{where} lacks key(s) {missing}; got {sorted(item)}")
        if not isinstance(item["name"], str):
            _fail(
                label,
                f"{where}['name'] must be a str (fused images are saved under it), got {type(item['name']).__name__}",
            )
        for key in ("ir", "vi"):
            t = item[key]
            if not isinstance(t, Tensor) or not t.is_floating_point():
                _fail(
                    label,
                    f"{where}[{key!r}] must be a floating tensor [1, H, W], got "
                    f"{type(t).__name__ if not isinstance(t, Tensor) else t.dtype}",
                )
            if t.ndim != 3 or t.shape[0] != 1:
                _fail(label, f"{where}[{key!r}] must be [1, H, W] (the Y channel), got {_shape(t)}")
            if t.requires_grad:
                _fail(label, f"{where}[{key!r}] requires grad; dataset tensors must be plain data")
            if not bool(torch.isfinite(t).all()):
                _fail(label, f"{where}[{key!r}] holds NaN or inf")
            mn, mx = float(t.min()), float(t.max())
            if mn < 0 or mx > 1:
                _fail(
                    label,
                    f"{where}[{key!r}] values must be in [0, 1] (divide 8-bit images by 255); got min {mn:.4g}, max "
                    f"{mx:.4g}",
                )
        if item["ir"].shape != item["vi"].shape:
            _fail(
                label,
                f"{where}: 'ir' {_shape(item['ir'])} and 'vi' {_shape(item['vi'])} must have the same size (registered "
                "pairs)",
            )
        h, w = item["ir"].shape[-2:]
        if "mask" in item:
            mask = item["mask"]
            if not isinstance(mask, Tensor) or mask.dtype != torch.long:
                _fail(
                    label,
                    f"{where}['mask'] must be an int64 (long) tensor [H, W] of class indices, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}",
                )
            if tuple(mask.shape) != (h, w):
                _fail(label, f"{where}['mask'] must be [H, W] = {[h, w]} like the images, got {_shape(mask)}")
            bad = mask[(mask != ignore) & ((mask < 0) | (mask >= num_classes))]
            if bad.numel():
                _fail(
                    label,
                    f"{where}['mask'] has value(s) {sorted(set(bad.tolist()))[:5]} outside [0, "
                    f"num_classes={num_classes}) and ignore_index={ignore}",
                )
        if "boxes" in item:
            boxes = item["boxes"]
            nb = getattr(dataset, "num_box_classes", None)
            if not isinstance(nb, int) or nb < 1:
                _fail(
                    label,
                    f"items carry 'boxes' but `num_box_classes` is {nb!r} "
                    "(must be an int >= 1, with `box_class_names`)",
                )
            if not isinstance(boxes, Tensor) or not boxes.is_floating_point() or boxes.ndim != 2 or boxes.shape[1] != 5:
                _fail(
                    label,
                    f"{where}['boxes'] must be a float tensor [N, 5] = class, cx, cy, w, h; got "
                    f"{_shape(boxes) if isinstance(boxes, Tensor) else type(boxes).__name__}",
                )
            if boxes.numel():
                cls = boxes[:, 0]
                if bool(((cls != cls.round()) | (cls < 0) | (cls >= nb)).any()):
                    _fail(
                        label,
                        f"{where}['boxes'] class column must hold integers in [0, num_box_classes={nb}), got "
                        f"{cls.tolist()[:5]}",
                    )
                coords = boxes[:, 1:]
                if bool(((coords < 0) | (coords > 1)).any()):
                    _fail(label, f"{where}['boxes'] cx, cy, w, h must be normalised to [0, 1]")
        if deterministic:
            again = dataset[i]
            diff = [
                k
                for k, v in item.items()
                if isinstance(v, Tensor) and not (isinstance(again.get(k), Tensor) and _same(v, again[k]))
            ]
            if diff:
                _fail(
                    label,
                    f"dataset[{i}] differs between two calls ({diff}): items must be deterministic "
                    "(augmentation is the "
                    "core's job; a resumed run must see the same data); pass deterministic=False to skip",
                )
        items.append(item)
    same = [it for it in items if it["ir"].shape == items[0]["ir"].shape and it.keys() == items[0].keys()]
    if len(same) > 1:
        try:
            collate_pairs(same[:2])
        except Exception as err:
            _fail(label, f"two items of the same size do not batch with collate_pairs: {_error_text(err)}")


# -- the meta-gradient --------------------------------------------------------------------------------------------
class ProbeTask(nn.Module):
    """A tiny objective for ``check_meta_gradient`` when you have no task: reconstruct both sources from
    the fused image with two 3x3 convolutions; loss = MSE; evaluator: PSNR of the reconstruction."""

    targets: tuple[str, ...] = ()

    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, 2, 3, padding=1))

    def forward(self, fused: Tensor) -> Tensor:
        return torch.sigmoid(self.net(fused))

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return (outputs - torch.cat([batch["task_ir"], batch["task_vi"]], dim=1)).square().mean()

    def evaluator(self) -> _ProbePSNR:
        return _ProbePSNR()


class _ProbePSNR:
    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, outputs: Tensor, batch: Batch) -> None:
        mse = (outputs - torch.cat([batch["task_ir"], batch["task_vi"]], dim=1)).square().flatten(1).mean(1)
        self.values.extend((10 * torch.log10(1 / mse.clamp_min(1e-12))).tolist())

    def compute(self) -> dict[str, float]:
        return {"psnr": sum(self.values) / len(self.values)} if self.values else {"psnr": 0.0}


@dataclass
class MetaGradientReport:
    """What ``check_meta_gradient`` measured."""

    norm: float
    outer_loss: float
    inner_loss: float
    parameter_norms: dict[str, float] = field(default_factory=dict)
    zero: list[str] = field(default_factory=list)
    directional_derivative: float | None = None
    finite_difference: float | None = None


def _small_fusion() -> nn.Module:
    from metaloss.models.dense import DenseFusion

    return DenseFusion(width=8, growth=8, layers=2)


def check_meta_gradient(
    generator: nn.Module,
    fusion: nn.Module | None = None,
    task: nn.Module | None = None,
    *,
    batch: tuple[Batch, Batch] | None = None,
    size: tuple[int, int, int] = (2, 32, 32),
    inner_lr: float = 1e-2,
    inner_steps: int = 1,
    lookahead_lr: float | None = 1e-3,
    device: torch.device | str = "cpu",
    seed: int = 0,
    gradcheck: bool = False,
    rtol: float = 1e-3,
) -> MetaGradientReport:
    """One meta-step's gradient for ``generator`` through ``metaloss.meta.meta_gradient`` on a tiny batch.

    ``fusion`` defaults to a small ``DenseFusion``, ``task`` to ``ProbeTask`` (reconstruction); ``batch`` is
    a (meta-train, meta-test) pair of ready batches (default: two disjoint ``synthetic_batch(size)``, 3 mask
    classes).  Contracts: the gradient w.r.t. the generator's parameters is finite and not all zero (the
    generator reaches the outer loss through the inner update); the fusion network's and task's
    parameters, buffers and ``.grad`` are left unchanged.  Parameters that get exactly zero gradient are
    reported as a warning.  With ``gradcheck`` the directional derivative along a random direction is
    compared with a central finite difference of the outer loss, in float64 (to ``rtol``).
    """
    from metaloss.meta.step import meta_gradient
    from metaloss.problem import FusionProblem

    label = _label(generator, "loss generator")
    if not _trainable(generator):
        _fail(label, "has no parameter that requires grad, so there is no meta-gradient to check")
    dtype = torch.float64 if gradcheck else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fusion = _small_fusion() if fusion is None else fusion
        task = ProbeTask() if task is None else task
    gen, fus, tsk = (_copy(x, device, dtype) for x in (generator, fusion, task))
    targets = getattr(tsk, "targets", None)
    if batch is None:
        train = synthetic_batch(size, targets=targets, seed=seed, device=device, dtype=dtype or torch.float32)
        test = synthetic_batch(size, targets=targets, seed=seed + 1000, device=device, dtype=dtype or torch.float32)
    else:
        train, test = (_task_batch(b, targets, device, dtype) for b in batch)
    problem = FusionProblem(fus, gen, tsk, crop_size=0, swap_modalities=False, device=device)
    before = {"fusion network": (fus, _tensor_state(fus)), "task": (tsk, _tensor_state(tsk))}
    kwargs: dict[str, Any] = {"inner_lr": inner_lr, "inner_steps": inner_steps, "lookahead_lr": lookahead_lr}
    try:
        grads, result = meta_gradient(problem, train, test, **kwargs)
    except Exception as err:
        _fail(
            label,
            f"metaloss.meta.meta_gradient failed with fusion {type(fus).__name__} and task {type(tsk).__name__}: "
            f"{_error_text(err)}",
        )
    for role, (module, state) in before.items():
        changed = _changed(state, module)
        if changed:
            _fail(
                label,
                f"the meta-step changed the {role}'s state ({', '.join(changed[:5])}); only the generator may change",
            )
        if any(p.grad is not None for p in module.parameters()):
            _fail(
                label,
                f"the meta-step left .grad on the {role}'s parameters (does the generator share parameters with it?)",
            )
    names = [n for n, p in gen.named_parameters() if p.requires_grad]
    bad = [n for n, g in zip(names, grads, strict=True) if not bool(torch.isfinite(g).all())]
    if bad:
        _fail(label, f"the meta-gradient is not finite for parameter(s) {', '.join(bad[:5])}")
    norms = {n: float(torch.linalg.vector_norm(g)) for n, g in zip(names, grads, strict=True)}
    if not result.loss_generator_grad_norm > 0:
        _fail(
            label,
            "the meta-gradient is exactly zero: the generator's maps do not reach the outer loss.  They must "
            "enter the fusion loss differentiably (no detach), the fusion network must have a second-order "
            "gradient, and the task loss must depend on the fused image",
        )
    zero = [n for n, v in norms.items() if v == 0]
    if zero:
        _warn(
            label,
            f"parameter(s) {', '.join(zero[:8])} get exactly zero meta-gradient (unused, or cut off from the maps?)",
        )
    report = MetaGradientReport(
        norm=result.loss_generator_grad_norm,
        outer_loss=result.outer_loss,
        inner_loss=result.inner_loss,
        parameter_norms=norms,
        zero=zero,
    )
    if gradcheck:
        report.directional_derivative, report.finite_difference = _finite_difference(
            problem, grads, train, test, kwargs, seed
        )
        a, b = report.directional_derivative, report.finite_difference
        if not abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-10:
            _fail(
                label,
                f"the meta-gradient disagrees with a finite difference of the outer loss: directional derivative "
                f"{a:.6g} vs {b:.6g} (rtol {rtol}); an operator with a wrong or missing double backward is on the path",
            )
    return report


def _finite_difference(
    problem: Any, grads: list[Tensor], train: Batch, test: Batch, kwargs: dict[str, Any], seed: int
) -> tuple[float, float]:
    from metaloss.meta.step import meta_gradient

    params = [p for p in problem.loss_generator.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for p in params]
    scale = float(torch.sqrt(sum((d * d).sum() for d in direction)))  # type: ignore[arg-type]
    direction = [d / scale for d in direction]
    analytic = float(sum((gr * d).sum() for gr, d in zip(grads, direction, strict=True)))
    eps = 1e-5
    values = []
    with torch.no_grad():
        originals = [p.detach().clone() for p in params]
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, d in zip(params, originals, direction, strict=True):
                    p.copy_(p0 + sign * eps * d)
            values.append(meta_gradient(problem, train, test, **kwargs)[1].outer_loss)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, originals, strict=True):
                p.copy_(p0)
    return analytic, (values[0] - values[1]) / (2 * eps)


# -- registered plugins ---------------------------------------------------------------------------------------------
def _instantiate(group: str, name: str, obj: Any, options: Mapping[str, Any]) -> Any:
    """Build ``obj`` as the experiment builder does (``metaloss.checkpoint.build_with``): options validated
    by its config model; datasets get ``split="train"``; task options left None are filled from a
    synthetic dataset (``dataset_fields``).  Each step that fails is reported as what the plugin must fix."""
    import pydantic
    import tomli_w

    from metaloss import registry
    from metaloss.checkpoint import build_with

    label = (
        f"{registry.GROUPS[group]} plugin {name!r} "
        f"({getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)})"
    )
    try:
        model = registry.config_model(obj)
    except Exception as err:
        _fail(
            label,
            "no config model can be built from its signature (annotate with types pydantic understands, or give it a "
            f"`Config` model): {_error_text(err)}",
        )
    try:
        validated = model.model_validate(dict(options))
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in err.errors())
        _fail(
            label,
            f"options {dict(options)} do not validate: {problems}.  Give required options as "
            f"options={{'{group}:{name}': {{...}}}}, or skip=['{group}:{name}']",
        )
    try:
        tomli_w.dumps({k: v for k, v in validated.model_dump(mode="json").items() if v is not None})
    except Exception as err:
        _fail(
            label,
            f"its resolved options cannot be written to TOML (the run directory's config.toml): {_error_text(err)}",
        )
    dataset: Any = None
    if group == "tasks":
        from metaloss.data.synthetic import SyntheticScenes

        dataset = SyntheticScenes
    injected = {"split": "train"} if group == "datasets" else {}
    try:
        return build_with(obj, options, dataset=dataset, **injected)
    except Exception as err:
        _fail(label, f"building it with options {dict(options)} raised {_error_text(err)}")


def check_plugin(group: str, name: str, options: Mapping[str, Any] | None = None) -> Any:
    """Load the plugin registered as ``name`` in ``group`` (``"fusion"``, ``"loss_generators"``, ``"tasks"``,
    ``"datasets"``), build it from ``options`` (default: its defaults) and run the matching check.
    Returns the built object."""
    from metaloss import registry

    short = registry.short_group(group)
    obj = _instantiate(short, name, registry.load(group, name), options or {})
    _check_built(short, obj)
    return obj


def _check_built(group: str, obj: Any) -> None:
    if group == "fusion":
        check_fusion_net(obj)
    elif group == "loss_generators":
        check_loss_generator(obj, trainable=bool(_trainable(obj)))
    elif group == "tasks":
        check_task(obj)
    else:
        check_dataset(obj)


def check_distribution(
    distribution: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """Check every plugin that the installed distribution ``distribution`` registers (its entry points in
    the ``metaloss.*`` groups), each built with ``options["group:name"]`` (e.g. ``{"tasks:edges":
    {"width": 4}}``) or its defaults, then the meta-gradient of each of its trainable loss generators
    through its first fusion network and task (or the defaults of ``check_meta_gradient``).  Plugins named
    in ``skip`` (``"group:name"``) are left out.  Returns the ``"group:name"`` checked.

    Also checks that no other package registers the same name (a bare name two distributions register
    is refused by configs, see ``metaloss.registry``)."""
    from metaloss import registry

    try:
        dist = md.distribution(distribution)
    except md.PackageNotFoundError:
        raise PluginContractError(
            f"distribution {distribution!r} is not installed (pip install -e <its folder>)"
        ) from None
    skipped = set(skip)
    by_value = {ep.value for ep in dist.entry_points}
    built: dict[str, list[Any]] = {}
    checked = []
    for short, full in registry.GROUPS.items():
        for ep in sorted((e for e in dist.entry_points if e.group == full), key=lambda e: e.name):
            label = f"{full} plugin {ep.name!r} of {distribution}"
            try:
                obj = ep.load()
            except Exception as err:
                _fail(label, f"entry point {ep.value!r} does not import: {_error_text(err)}")
            others = [
                e
                for e in registry.registrations(short).get(ep.name, [])
                if e.value != ep.value and e.value not in by_value
            ]
            if others:
                by = ", ".join(f"{e.value} of {registry.distribution_name(e)}" for e in others)
                _fail(
                    label,
                    f"the name is also registered by {by}, so a config must say "
                    f"{registry.qualified_name(distribution, ep.name)!r}; pick another entry-point name",
                )
            key = f"{short}:{ep.name}"
            if key in skipped:
                continue
            instance = _instantiate(short, ep.name, obj, (options or {}).get(key, {}))
            _check_built(short, instance)
            built.setdefault(short, []).append(instance)
            checked.append(key)
    if not checked:
        raise PluginContractError(
            f"distribution {distribution!r} registers no entry point in the groups "
            f"{', '.join(registry.GROUPS.values())}"
        )
    fusion = (built.get("fusion") or [None])[0]
    task = (built.get("tasks") or [None])[0]
    for gen in built.get("loss_generators", []):
        if _trainable(gen):
            check_meta_gradient(gen, fusion=fusion, task=task)
    return checked
