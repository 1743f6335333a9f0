"""``evaluate``: fusion metrics of batched tensors under a named profile."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaloss.metrics.profiles import DEFAULT_PROFILE, Profile, get_profile

__all__ = ["MIN_SIZE", "evaluate", "min_size"]

#: Smallest image side every metric accepts (the 4-scale VIF needs 41 pixels); each metric's own
#: is ``MetricSpec.min_size``.
MIN_SIZE = 41


def min_size(profile: str | Profile, metrics: Sequence[str] | None = None) -> int:
    """The smallest image side that all of ``metrics`` (default: the profile's) give a value for."""
    return max((s.min_size for s in get_profile(profile).resolve(metrics)), default=1)


def _as_4d(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{what} must be [B, C, H, W] (or [C, H, W] / [H, W]); got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"{what} must be real")
    return x


def evaluate(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    profile: str | Profile = DEFAULT_PROFILE,
    metrics: Sequence[str] | None = None,
    *,
    quantize: bool = False,
) -> dict[str, Tensor]:
    """Fusion metrics of a batch of fused images against their infrared and visible sources.

    Args:
        fused: ``[B, C, H, W]`` on a 0–255 scale (any real dtype). ``C`` = 1 (grey) or 3 (RGB; a
            4th alpha channel is dropped). ``cddfuse``/``tdfusion`` turn colour into grey as
            CDDFuse's ``image_read_cv2(..., 'GRAY')`` does (float32 BT.601, rounded); ``vifb``
            evaluates each colour channel and averages; ``mefb`` applies MEFB's colour rule.
        ir, vi: the sources, ``[B or 1, C, H, W]`` with the same ``H × W``; a batch of 1 is shared
            by every fused image (and its per-source statistics are computed once).
        profile: ``"cddfuse"`` (default), ``"vifb"``, ``"tdfusion"``, ``"mefb"`` or a :class:`Profile`.
        metrics: names to compute (default: all of the profile's, in its order).
        quantize: clamp the fused image to 0–255 and round it (half to even) first, as saving it
            to an 8-bit file and reading it back would. The reference numbers are computed on
            8-bit files; a float network output evaluated as is gives slightly different values.

    Returns:
        ``{name: tensor [B]}`` (float64, on the input's device), in the order requested.
    """
    prof = get_profile(profile)
    specs = prof.resolve([metrics] if isinstance(metrics, str) else metrics)
    fused = _as_4d(fused, "fused")
    ir = _as_4d(ir, "ir")
    vi = _as_4d(vi, "vi")
    b, _, h, w = fused.shape
    for name, src in (("ir", ir), ("vi", vi)):
        if src.shape[-2:] != fused.shape[-2:]:
            raise ValueError(f"size mismatch: fused is {h}x{w} but {name} is {src.shape[-2]}x{src.shape[-1]} (HxW)")
        if src.shape[0] not in (1, b):
            raise ValueError(f"{name} has batch size {src.shape[0]}; expected 1 or {b} (the fused batch)")
        if src.device != fused.device:
            raise ValueError(f"{name} is on {src.device} but fused is on {fused.device}")
    for name, x in (("fused", fused), ("ir", ir), ("vi", vi)):
        if x.shape[1] not in (1, 3, 4):
            raise ValueError(f"{name} has {x.shape[1]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    small = [s.name for s in specs if min(h, w) < s.min_size]
    if small:
        need = max(s.min_size for s in specs)
        raise ValueError(f"images must be at least {need}x{need} for {', '.join(small)}; got {h}x{w}")

    with torch.no_grad():
        f64 = fused.detach().to(torch.float64)
        if quantize:
            f64 = torch.round(f64.clamp(0.0, 255.0))
        ir64 = ir.detach().to(torch.float64)
        vi64 = vi.detach().to(torch.float64)
        prepared: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for spec in specs:
            if spec.sources not in prepared:
                prepared[spec.sources] = prof.prepare(f64, ir64, vi64, spec.sources)
        shared = ir.shape[0] == 1 and vi.shape[0] == 1
        step = _chunk_size(fused)
        parts: dict[str, list[Tensor]] = {spec.name: [] for spec in specs}
        cache: dict | None = {} if shared else None
        for start in range(0, b, step):
            sl = slice(start, min(b, start + step))
            if not shared:
                cache = {}
            # One view per chunk for every metric, so metrics can share work on the fused image too.
            chunk = {
                key: (pf[sl], pa if pa.shape[0] == 1 else pa[sl], pb if pb.shape[0] == 1 else pb[sl])
                for key, (pf, pa, pb) in prepared.items()
            }
            for spec in specs:
                parts[spec.name].append(spec.fn(*chunk[spec.sources], cache).reshape(-1))
            if cache is not None:
                _drop_fused_work(cache, [pf for pf, _, _ in prepared.values()])
    return {name: torch.cat(p) if len(p) > 1 else p[0] for name, p in parts.items()}


def _drop_fused_work(cache: dict, fused: list[Tensor]) -> None:
    """Remove the entries of ``cache`` keyed on views of the ``fused`` tensors (a chunk and its
    channels): the fused work of a chunk is shared by its metrics, not kept for the next chunk."""
    roots = {id(x) for x in fused}
    for key in [k for k, v in cache.items() if id(v[0]) in roots or id(v[0]._base) in roots]:
        del cache[key]


#: Pixels per chunk on the CPU: the working set of one ~0.3-megapixel image stays in the caches,
#: which makes the element-wise work several times faster than on a whole batch at once.
CPU_CHUNK_PIXELS = 400_000
#: Pixels per chunk on other devices (bounds memory; GPUs like big batches).
DEVICE_CHUNK_PIXELS = 16_000_000


def _chunk_size(fused: Tensor) -> int:
    per_image = fused.shape[1] * fused.shape[2] * fused.shape[3]
    budget = CPU_CHUNK_PIXELS if fused.device.type == "cpu" else DEVICE_CHUNK_PIXELS
    return max(1, budget // per_image)
