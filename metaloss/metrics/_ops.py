"""Tensor building blocks shared by the metric profiles.

Every function works on tensors whose last two dimensions are an image (``[..., H, W]``) and
broadcasts over the leading dimensions, so a source image with batch size 1 can be paired with a
batch of fused images without being copied. Computations are done in the dtype given (the
profiles pass float64: several reference formulas subtract large nearly equal numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# MATLAB's rgb2gray weights: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
_NTSC = torch.linalg.inv(
    torch.tensor([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]], dtype=torch.float64)
)[0].tolist()


#: Use OpenCV's filters for CPU tensors (the pure-torch code, used on other devices, otherwise).
USE_OPENCV = True


def _cv2_ok(x: Tensor) -> bool:
    return USE_OPENCV and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def reduce_mean(x: Tensor) -> Tensor:
    """Mean over the last two (image) dimensions."""
    return x.mean(dim=(-2, -1))


def reduce_sum(x: Tensor) -> Tensor:
    """Sum over the last two (image) dimensions."""
    return x.sum(dim=(-2, -1))


def round_half_away(x: Tensor) -> Tensor:
    """MATLAB's ``round`` (and integer conversion): halves go away from zero."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def round_half_away_nonneg(x: Tensor) -> Tensor:
    """MATLAB's ``round`` for non-negative ``x``, exactly: floor, plus 1 where the fraction ≥ ½."""
    fl = torch.floor(x)
    return fl.add_((torch.sub(x, fl) >= 0.5).to(x.dtype))


def rgb_to_gray_bt601_f32(rgb: Tensor) -> Tensor:
    """OpenCV's float32 ``COLOR_BGR2GRAY`` on an RGB tensor ``[..., 3, H, W]`` → ``[..., 1, H, W]``.

    0.299 R + 0.587 G + 0.114 B with float32 weights, evaluated as OpenCV's vectorised code does
    (``g·wg``, then fused multiply-adds of B and then R; emulated exactly in float64), so that the
    rounding that follows in CDDFuse's grey read gives the same grey levels, ties included.
    """
    w_r, w_g, w_b = (float(torch.tensor(v, dtype=torch.float32)) for v in (0.299, 0.587, 0.114))
    x = rgb.to(torch.float32).to(torch.float64)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    t = (g * w_g).to(torch.float32).to(torch.float64)
    t = (b * w_b + t).to(torch.float32).to(torch.float64)  # exact products and sums in float64
    t = (r * w_r + t).to(torch.float32)
    return t.to(rgb.dtype)


def rgb_to_gray_matlab(rgb: Tensor, *, uint8: bool) -> Tensor:
    """MATLAB's ``rgb2gray`` on ``[..., 3, H, W]`` → ``[..., 1, H, W]``; with ``uint8=True`` the result
    is rounded (half away from zero) and saturated to 0–255 as MATLAB does for ``uint8`` images."""
    y = rgb[..., 0:1, :, :] * _NTSC[0] + rgb[..., 1:2, :, :] * _NTSC[1] + rgb[..., 2:3, :, :] * _NTSC[2]
    if uint8:
        y = round_half_away(y).clamp(0, 255)
    return y


# --------------------------------------------------------------------------------------- filtering
def correlate_sep_valid(x: Tensor, kv: Sequence[float], kh: Sequence[float] | None = None) -> Tensor:
    """Separable correlation, 'valid' output: ``out[y, x] = sum_ij kv[i] kh[j] in[y+i, x+j]``.

    On the CPU (float32/float64) this runs OpenCV's SIMD ``sepFilter2D`` image by image, several
    times faster than any composition of torch operators; elsewhere (GPU) it accumulates shifted
    slices in place. Both accumulate in the tensor's dtype.
    """
    kh = kv if kh is None else kh
    h, w = x.shape[-2], x.shape[-1]
    nv, nh = len(kv), len(kh)
    if h < nv or w < nh:
        raise ValueError(f"image {h}×{w} is smaller than the {nv}×{nh} window")
    if _cv2_ok(x) and nv % 2 == 1 and nh % 2 == 1:
        return _correlate_sep_valid_cv2(x, kv, kh)
    ho = h - nv + 1
    acc = x[..., 0:ho, :] * kv[0]
    for i in range(1, nv):
        if kv[i] != 0.0:
            acc.add_(x[..., i : i + ho, :], alpha=kv[i])
    wo = w - nh + 1
    out = acc[..., 0:wo] * kh[0]
    for j in range(1, nh):
        if kh[j] != 0.0:
            out.add_(acc[..., j : j + wo], alpha=kh[j])
    return out


def _correlate_sep_valid_cv2(x: Tensor, kv: Sequence[float], kh: Sequence[float]) -> Tensor:
    h, w = x.shape[-2], x.shape[-1]
    pv, ph = len(kv) // 2, len(kh) // 2
    kv_np = np.asarray(kv, dtype=np.float64)
    kh_np = np.asarray(kh, dtype=np.float64)
    arr = _as_numpy_stack(x)
    full = np.empty_like(arr)
    for i in range(arr.shape[0]):
        cv2.sepFilter2D(arr[i], -1, kh_np, kv_np, dst=full[i], borderType=cv2.BORDER_CONSTANT)
    out = torch.from_numpy(full)[:, pv : h - pv, ph : w - ph]  # a view: no copy of the interior
    return out.reshape(tuple(x.shape[:-2]) + tuple(out.shape[1:])) if x.ndim != 3 else out


def correlate_sep_same_zero(x: Tensor, kv: Sequence[float], kh: Sequence[float]) -> Tensor:
    """Separable correlation, same size as ``x``, zero padding (MATLAB ``filter2(k, x, 'same')``);
    odd kernel lengths."""
    if _cv2_ok(x):
        arr = _as_numpy_stack(x)
        out = np.empty_like(arr)
        kv_np = np.asarray(kv, dtype=np.float64)
        kh_np = np.asarray(kh, dtype=np.float64)
        for i in range(arr.shape[0]):
            cv2.sepFilter2D(arr[i], -1, kh_np, kv_np, dst=out[i], borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(out).reshape(x.shape)
    return correlate_sep_valid(pad2d(x, len(kv) // 2, "zeros"), kv, kh)


def pad2d(x: Tensor, p: int, mode: str) -> Tensor:
    """Pad the last two dimensions by ``p`` on each side; mode 'zeros' or 'replicate'."""
    if p == 0:
        return x
    lead = x.shape[:-2]
    x4 = x.reshape((-1, 1) + tuple(x.shape[-2:]))
    if mode == "zeros":
        y = F.pad(x4, (p, p, p, p))
    elif mode == "replicate":
        y = F.pad(x4, (p, p, p, p), mode="replicate")
    else:
        raise ValueError(mode)
    return y.reshape(lead + tuple(y.shape[-2:]))


def sobel_same(x: Tensor, padding: str = "zeros") -> tuple[Tensor, Tensor]:
    """Sobel responses by correlation, same size as ``x``.

    Returns ``(gx, gy)`` with ``gx`` the correlation with ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` and
    ``gy`` the correlation with ``[[-1,-2,-1],[0,0,0],[1,2,1]]`` (rows grow downwards). MATLAB's
    ``conv2(img, h, 'same')`` and SciPy's ``convolve2d`` flip the kernel, which only changes signs.
    ``padding``: 'zeros' or 'replicate'. On the CPU this is OpenCV's ``Sobel`` (same kernels and
    arithmetic in the tensor's dtype; exact on integer images).
    """
    if _cv2_ok(x):
        border = cv2.BORDER_CONSTANT if padding == "zeros" else cv2.BORDER_REPLICATE
        if padding not in ("zeros", "replicate"):
            raise ValueError(padding)
        h, w = x.shape[-2], x.shape[-1]
        arr = _as_numpy_stack(x)
        gx = np.empty_like(arr)
        gy = np.empty_like(arr)
        depth = cv2.CV_64F if arr.dtype == np.float64 else cv2.CV_32F
        for i in range(arr.shape[0]):
            cv2.Sobel(arr[i], depth, 1, 0, dst=gx[i], ksize=3, borderType=border)
            cv2.Sobel(arr[i], depth, 0, 1, dst=gy[i], ksize=3, borderType=border)
        lead = tuple(x.shape[:-2])
        return torch.from_numpy(gx).reshape(lead + (h, w)), torch.from_numpy(gy).reshape(lead + (h, w))
    p = pad2d(x, 1, padding)
    d = p[..., :, 2:] - p[..., :, :-2]  # [.., H+2, W]
    s = p[..., :, :-2] + 2.0 * p[..., :, 1:-1] + p[..., :, 2:]  # [.., H+2, W]
    return d[..., :-2, :] + 2.0 * d[..., 1:-1, :] + d[..., 2:, :], s[..., 2:, :] - s[..., :-2, :]


def _as_numpy_stack(x: Tensor) -> np.ndarray:
    src = x.detach().reshape(-1, x.shape[-2], x.shape[-1])
    if not src.is_contiguous():
        src = src.contiguous()
    return src.numpy()


def uniform_filter_valid(x: Tensor, size: int) -> Tensor:
    """SciPy's ``uniform_filter(x, size)`` on the windows that lie inside the image.

    SciPy filters axis 0 then axis 1; each pass is a running mean accumulated in double and stored
    in the array's dtype, so for float32 input both passes round to float32. Reproduced here: each
    pass sums in float64 (exact for the integer images the metrics see), divides by ``size`` and
    rounds to the input's dtype.
    """
    h, w = x.shape[-2], x.shape[-1]
    if h < size or w < size:
        raise ValueError(f"image {h}×{w} is smaller than the {size}×{size} window")
    p = size // 2
    if _cv2_ok(x) and size % 2 == 1:
        arr = _as_numpy_stack(x)
        out = np.empty((arr.shape[0], h - 2 * p, w), dtype=arr.dtype)
        for i in range(arr.shape[0]):
            v = cv2.boxFilter(arr[i], cv2.CV_64F, (1, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
            v = (v[p : h - p] / size).astype(arr.dtype)
            hh = cv2.boxFilter(v, cv2.CV_64F, (size, 1), normalize=False, borderType=cv2.BORDER_CONSTANT)
            np.divide(hh, size, out=out[i], casting="same_kind")
        res = torch.from_numpy(out)[:, :, p : w - p]
        return res.reshape(tuple(x.shape[:-2]) + tuple(res.shape[1:])) if x.ndim != 3 else res
    ones = [1.0] * size
    v = (correlate_sep_valid(x.to(torch.float64), ones, [1.0]) / size).to(x.dtype)
    return (correlate_sep_valid(v.to(torch.float64), [1.0], ones) / size).to(x.dtype)


def gaussian_1d(n: int, sigma: float, normalise: bool = True) -> list[float]:
    """Samples ``exp(-x²/2σ²)`` at ``x = -(n-1)/2 … (n-1)/2``; the outer product of the normalised
    vector with itself is MATLAB's ``fspecial('gaussian', n, σ)`` (whose corner values never fall
    below the eps·max cut-off for the windows used here)."""
    c = (n - 1) / 2.0
    g = [math.exp(-((i - c) ** 2) / (2.0 * sigma * sigma)) for i in range(n)]
    if normalise:
        s = sum(g)
        g = [v / s for v in g]
    return g


# ------------------------------------------------------------------------------------- histograms
def batched_histogram(idx: Tensor, bins: int) -> Tensor:
    """Counts of integer labels ``idx`` (``[B, N]``, values in ``[0, bins)``) per row → ``[B, bins]``."""
    b = idx.shape[0]
    # int32 indices: torch.bincount is an order of magnitude faster on them than on int64.
    dt = torch.int32 if b * bins < 2**31 else torch.int64
    offs = torch.arange(b, device=idx.device, dtype=dt).unsqueeze(1) * bins
    return torch.bincount((idx.to(dt) + offs).reshape(-1), minlength=b * bins).reshape(b, bins)


def entropy_from_counts(counts: Tensor, log: str = "e") -> Tensor:
    """Shannon entropy of histogram rows (``[..., K]``), 0·log 0 = 0; ``log`` is 'e' or '2'."""
    p = counts.to(torch.float64) / counts.sum(dim=-1, keepdim=True).to(torch.float64)
    lp = torch.log(p + (p == 0).to(p.dtype))  # log 1 = 0 where p = 0
    if log == "2":
        lp = lp / math.log(2.0)
    return -(p * lp).sum(dim=-1)


def _xlogx_sum(c: Tensor, dims: tuple[int, ...]) -> Tensor:
    c = c.to(torch.float64)
    return (c * torch.log(c + (c == 0).to(c.dtype))).sum(dim=dims)


def mutual_information_labels(x: Tensor, y: Tensor, kx: int, ky: int) -> Tensor:
    """Mutual information (nats) of integer label images ``x`` and ``y`` (``[B, N]``, values in
    ``[0, kx)`` and ``[0, ky)``) from their joint histogram; clipped at 0 like scikit-learn.

    Uses counts: MI = (Σ n_ij log n_ij − Σ n_i log n_i − Σ n_j log n_j)/N + log N.
    """
    joint = batched_histogram(x * ky + y, kx * ky).reshape(-1, kx, ky)
    n = float(x.shape[1])
    mi = (_xlogx_sum(joint, (1, 2)) - _xlogx_sum(joint.sum(dim=2), (1,)) - _xlogx_sum(joint.sum(dim=1), (1,))) / n
    return (mi + math.log(n)).clamp_min(0.0)


# ------------------------------------------------------------------------------------------ cache
Cache = dict


def cached(cache: Cache | None, tag: str, src: Tensor, fn):  # type: ignore[no-untyped-def]
    """``fn()``, memoised in ``cache`` under ``(tag, src)``.

    :func:`metaloss.metrics.evaluate` evaluates a batch in chunks (small working sets run much
    faster on the CPU) and passes one cache for all chunks when the sources are shared, so work
    that depends on a source alone (its gradients, local statistics, filtered versions) is done
    once. The cache keeps a reference to ``src``, so its ``id`` cannot be reused while cached.
    """
    if cache is None:
        return fn()
    key = (tag, id(src))
    hit = cache.get(key)
    if hit is not None and hit[0] is src:
        return hit[1]
    val = fn()
    cache[key] = (src, val)
    return val
