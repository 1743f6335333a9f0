"""Fast CPU inference of ``DualStreamRestormer`` networks: pixel-major, folded weights, row bands.

The eager forward of the Restormer fusion network moves every feature map (up to 128 channels at
full resolution: 157 MB at 480×640) through main memory a dozen times per block, runs 1×1
convolutions as skinny matrix products on data that does not fit any cache, and normalises with
LayerNorm kernels that are slow for 16 or 32 channels.  This module runs the same network, with the
same result up to float rounding (≤ 1e-5 measured, tests/deploy/test_engine.py), as follows:

* **Pixel-major layout.** A feature map is an ``[H·W, C]`` matrix (channels last): a 1×1
  convolution is one matrix product ``X Wᵀ``, LayerNorm over channels is a row operation, and
  depthwise 3×3 convolutions run on channels-last data (oneDNN).
* **Folded weights.** LayerNorm's affine ``γ, β`` is folded into the 1×1 convolution after it
  (``W diag(γ)``, bias ``W β``); the channel-attention map ``A`` (a ``C×C`` block-diagonal matrix
  once the global sums are known) is folded into the output projection (``P A``), so
  ``x + P(A v)`` is one matrix product with the residual as its bias.  GDFN's two halves are separate
  products, so that GELU and the gate run on contiguous data.
* **Row bands.** Each stage (Restormer block, cross-attention merge block, head) is run over the
  image in bands of ``band_rows`` rows (with a one-row halo for each depthwise convolution), so that a
  band's intermediate maps stay in the cache; only the stage's output and the attention values ``v``
  are written at full resolution.  Channel attention is global over the image but decomposes into
  sums over pixels (``q̂ᵢ·k̂ⱼ = Σₚ qᵢₚ kⱼₚ / (‖qᵢ‖ ‖kⱼ‖)``): the first pass over the bands accumulates
  ``Σ q kᵀ``, ``Σ q²``, ``Σ k²`` (in float64), the second applies the resulting map.

``FastRestormer(backbone)`` prepares the weights once and runs the backbone's own
``run_stages`` with stages that work as above (so the order of the stages is the network's, written
once); ``fast_forward(module, a, b)`` runs any module whose ``DualStreamRestormer`` backbones should go
this way (``RestormerFusion`` and the TDFusion / ReFusion loss generators), with the rest of the module
(sigmoid, softmax) as it is (``metaloss.nn.restormer.backbones_run_by``).  Inference only (no
autograd: weights are folded copies).  Images are processed one at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloss.nn.restormer import (
    GDFN,
    MDTA,
    BiasFreeLayerNorm,
    CrossAttentionFusion,
    DualStreamRestormer,
    RestormerBlock,
    Stages,
    WithBiasLayerNorm,
    backbones_run_by,
)

__all__ = ["DEFAULT_BAND_PIXELS", "FastRestormer", "fast_forward", "release_buffers", "supports_fast"]

#: Pixels per band (rows = this / width, at least ``MIN_BAND_ROWS``): a few MB of intermediate maps
#: per band (measured at 480×640: 8192 pixels 15–25 % slower than 16384 or 32768, which are alike).
DEFAULT_BAND_PIXELS = 16384
#: Fewest rows per band (each band recomputes a one-row halo above and below for its 3×3 convolutions).
MIN_BAND_ROWS = 16


def supports_fast(module: nn.Module) -> bool:
    """Whether ``module`` has ``DualStreamRestormer`` backbones that :func:`fast_forward` can run."""
    return any(isinstance(m, DualStreamRestormer) for m in module.modules())


# -- folded weights ---------------------------------------------------------------------------------------
def _pw(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    """A 1×1 convolution as ``(W [out, in], bias or None)``."""
    w = conv.weight.detach()[:, :, 0, 0]
    return w, None if conv.bias is None else conv.bias.detach()


def _dw(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    return conv.weight.detach(), None if conv.bias is None else conv.bias.detach()


def _stem(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    """The 3×3 stem as ``(W [out, in·9], bias or None)``, to multiply the image's 3×3 patches with."""
    if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
        raise TypeError("fast inference supports a 3×3 stem with stride 1, padding 1, one group")
    return conv.weight.detach().reshape(conv.out_channels, -1), None if conv.bias is None else conv.bias.detach()


def _fold_norm(norm: nn.Module, conv: nn.Conv2d, rows: slice | None = None) -> dict[str, Any]:
    """``conv(norm(x))`` as ``normalise(x) Wᵀ + b`` with the norm's affine folded into ``W``, ``b``."""
    w, b = _pw(conv)
    if rows is not None:
        w, b = w[rows], None if b is None else b[rows]
    if isinstance(norm, WithBiasLayerNorm):
        gamma, beta, center = norm.weight.detach(), norm.bias.detach(), True
    elif isinstance(norm, BiasFreeLayerNorm):
        gamma, beta, center = norm.weight.detach(), None, False
    else:
        raise TypeError(f"fast inference supports the Restormer LayerNorms, not {type(norm).__name__}")
    bias = None if beta is None else w @ beta
    if b is not None:
        bias = b if bias is None else bias + b
    return {"lin": _Lin(w * gamma[None], bias), "eps": norm.eps, "center": center}


class _Prepared:
    """The folded weights of one ``DualStreamRestormer``, by module (stems, blocks, the merge block)."""

    def __init__(self, net: DualStreamRestormer) -> None:
        self.stems = {id(e.stem): _stem(e.stem) for e in (net.encoder1, net.encoder2)}
        self.blocks = {id(b): self._block(b) for b in (*net.encoder1.blocks, *net.encoder2.blocks, *net.decoder)}
        self.merge = None if net.merge is None else self._cross(net.merge)
        self.stage_count = len(self.blocks) + (self.merge is not None) + 1  # blocks, merge, head
        stem = max(w.shape[0] for w, _ in self.stems.values())
        decoder = [self.blocks[id(b)]["proj"][0].shape[0] for b in net.decoder]
        self.max_channels = max([2 * stem] + decoder)  # widest full-size map

    @staticmethod
    def _block(blk: nn.Module) -> dict[str, Any]:
        if not isinstance(blk, RestormerBlock) or not isinstance(blk.attn, MDTA) or not isinstance(blk.ffn, GDFN):
            raise TypeError(f"fast inference supports RestormerBlock(MDTA, GDFN), not {type(blk).__name__}")
        hidden = blk.ffn.project_out.in_channels
        dw, dwb = _dw(blk.ffn.dwconv)
        pout, pout_b = _pw(blk.ffn.project_out)
        proj, proj_b = _pw(blk.attn.project_out)
        qdw, qdwb = _dw(blk.attn.qkv_dwconv)
        return {
            "qkv": _fold_norm(blk.norm1, blk.attn.qkv),
            "qkv_dw": (qdw, qdwb),
            "heads": blk.attn.heads,
            "temperature": blk.attn.temperature.detach().reshape(-1),
            "proj": (proj, proj_b),
            "in1": _fold_norm(blk.norm2, blk.ffn.project_in, slice(0, hidden)),
            "in2": _fold_norm(blk.norm2, blk.ffn.project_in, slice(hidden, 2 * hidden)),
            "dw1": (dw[:hidden], None if dwb is None else dwb[:hidden]),
            "dw2": (dw[hidden:], None if dwb is None else dwb[hidden:]),
            "out": _Lin(pout, pout_b),
        }

    @staticmethod
    def _cross(m: CrossAttentionFusion) -> dict[str, Any]:
        hidden = m.value1_in.out_channels
        gw, gb = _dw(m.gate_dwconv)
        g_in, g_in_b = _pw(m.gate_in)
        o1, o1b = _pw(m.project_out1)
        o2, o2b = _pw(m.project_out2)
        out_b = o1b if o2b is None else o2b if o1b is None else o1b + o2b
        return {
            "heads": m.heads,
            "qkv": [(_Lin(*_pw(m.qkv1)), _dw(m.qkv1_dwconv)), (_Lin(*_pw(m.qkv2)), _dw(m.qkv2_dwconv))],
            "temperature": [m.temperature1.detach().reshape(-1), m.temperature2.detach().reshape(-1)],
            "mid": [_pw(m.project_mid1), _pw(m.project_mid2)],
            "gate_in": [
                _Lin(g_in[:hidden], None if g_in_b is None else g_in_b[:hidden]),
                _Lin(g_in[hidden:], None if g_in_b is None else g_in_b[hidden:]),
            ],
            "gate_dw": [
                (gw[:hidden], None if gb is None else gb[:hidden]),
                (gw[hidden:], None if gb is None else gb[hidden:]),
            ],
            "value_in": [_Lin(*_pw(m.value1_in)), _Lin(*_pw(m.value2_in))],
            "value_dw": [_dw(m.value1_dwconv), _dw(m.value2_dwconv)],
            "out": [_Lin(o1, out_b), _Lin(o2, None)],
        }


# -- band-level operations (2-D [pixels, channels] matrices of one band) ------------------------------------
def _mkldnn_linear_ok(w: Tensor) -> bool:
    return (
        w.device.type == "cpu"
        and w.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class _Lin:
    """``x Wᵀ + b (+ residual)``: oneDNN's linear with a pre-packed weight on float32 CPU tensors
    (15–45 % faster than ``addmm`` for these skinny products, the residual add fused), ``addmm``
    elsewhere."""

    def __init__(self, w: Tensor, b: Tensor | None, rows_hint: int = DEFAULT_BAND_PIXELS, mkldnn: bool = True) -> None:
        self.w, self.b = w.contiguous(), b
        self.packed: Tensor | None = None
        if mkldnn and _mkldnn_linear_ok(self.w):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, rows_hint)
            except (RuntimeError, AttributeError):  # pragma: no cover - builds without oneDNN's linear
                self.packed = None

    def __call__(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.packed is not None:
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.b, "add")
        if residual is not None:
            out = torch.addmm(residual, x, self.w.t())
            return out if self.b is None else out.add_(self.b)
        return x @ self.w.t() if self.b is None else torch.addmm(self.b, x, self.w.t())


_MEAN_VECTORS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _mean_vector(x: Tensor) -> Tensor:
    """The ``[C, 1]`` column of ``1/C`` (cached): ``x @ it`` is the row mean."""
    key = (x.shape[1], x.dtype, x.device)
    v = _MEAN_VECTORS.get(key)
    if v is None:
        v = _MEAN_VECTORS[key] = x.new_full((x.shape[1], 1), 1.0 / x.shape[1])
    return v


def _normalise(x: Tensor, f: dict[str, Any]) -> Tensor:
    """The Restormer LayerNorm over the channels of each row, without its affine (folded into the
    next product): row mean and variance by matrix-vector products, faster than a LayerNorm kernel
    for 16 or 32 channels."""
    ones = _mean_vector(x)
    d = x - x @ ones
    rstd = torch.rsqrt(torch.square(d) @ ones + f["eps"])
    return d.mul_(rstd) if f["center"] else x * rstd


def _depthwise(x: Tensor, rows: int, width: int, wb: tuple[Tensor, Tensor | None]) -> Tensor:
    """3×3 depthwise convolution of a ``[rows·width, C]`` band (channels-last; zero padding)."""
    c = x.shape[1]
    img = x.view(1, rows, width, c).permute(0, 3, 1, 2)
    y = F.conv2d(img, wb[0], wb[1], 1, 1, 1, c)
    return y.permute(0, 2, 3, 1).reshape(rows * width, c)


def _gated(gate: Tensor, value: Tensor) -> Tensor:
    """``GELU(gate) ⊙ value``, in place in ``gate`` (a band's own map)."""
    return torch.ops.aten.gelu_(gate).mul_(value)


def _bands(height: int, width: int, band_pixels: int, workers: int = 1) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``band_pixels`` pixels (at least ``MIN_BAND_ROWS`` rows); with several
    workers, a multiple of ``workers`` bands of near-equal height, so that no worker waits at the
    end of a pass while another finishes a band."""
    rows = max(MIN_BAND_ROWS, -(-band_pixels // max(1, width)))
    if workers > 1:
        count = -(-height // rows)
        count = -(-count // workers) * workers
        rows = max(1, -(-height // count))
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def _column_squares(x: Tensor) -> Tensor:
    """``Σ_rows x²`` per column (one pass over ``[q | k]``)."""
    return torch.square(x).sum(0)


class _Sums:
    """Σ q kᵀ, Σ q², Σ k² over the bands, and the resulting global attention map.  A band's sums are
    float32, stored by band index; the bands' are added in float64 in band order (the same result
    whichever worker computed which band)."""

    def __init__(self, channels: int, bands: int) -> None:
        self.channels = channels
        self.grams: list[Tensor | None] = [None] * bands
        self.squares: list[Tensor | None] = [None] * bands

    def add(self, band: int, q: Tensor, k: Tensor, squares: Tensor) -> None:
        """Band ``band``'s ``q``, ``k`` (``[pixels, C]``) and their column sums of squares ``[Σq² | Σk²]``."""
        self.grams[band] = q.t() @ k
        self.squares[band] = squares

    def folded(self, temperature: Tensor, heads: int, proj: Tensor) -> Tensor:
        """``P A``: the output projection times the block-diagonal attention map (softmax per head)."""
        c = self.channels
        grams = [g for g in self.grams if g is not None]
        band_squares = [s for s in self.squares if s is not None]
        assert len(grams) == len(band_squares) == len(self.grams), "every band adds its sums before folding"
        gram = torch.stack(grams).double().sum(0)
        squares = torch.stack(band_squares).double().sum(0)
        eps = 1e-12  # F.normalize's
        norms = squares.sqrt().clamp_min(eps)
        logits = gram / (norms[:c, None] * norms[None, c:])
        h = c // heads
        blocks = logits.reshape(heads, h, heads, h).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [heads, h, h]
        attn = torch.softmax(blocks.to(temperature.dtype) * temperature[:, None, None], dim=-1)
        return proj @ torch.block_diag(*attn)


# -- band workers -----------------------------------------------------------------------------------------
_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()


def _forget_executors_in_child() -> None:
    """A forked child has none of its parent's worker threads: it starts its own pools."""
    global _EXECUTORS_LOCK
    _EXECUTORS.clear()
    _EXECUTORS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executors_in_child)


def _band_executor(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads that each run PyTorch ops on one intra-op thread (kept for the
    process).  Bands are independent within a pass, so running them side by side scales better than
    splitting each small op across threads (2 cores, 480×640: 0.95 s per pair against 1.1 s)."""
    with _EXECUTORS_LOCK:
        executor = _EXECUTORS.get(workers)
        if executor is None:
            caller_threads = torch.get_num_threads()
            started = threading.Barrier(workers + 1)

            def start() -> None:
                torch.get_num_threads()  # the thread's lazy first-use setup (which would reset the count later)
                torch.set_num_threads(1)  # this thread's OpenMP/MKL setting ...
                started.wait()

            executor = ThreadPoolExecutor(workers, thread_name_prefix="metaloss-band")
            for _ in range(workers):
                executor.submit(start)
            started.wait()  # every worker holds a task, so each started its own thread
            torch.set_num_threads(caller_threads)  # ... and the default for new threads back as it was
            _EXECUTORS[workers] = executor
        return executor


def _run_band(job: tuple[Callable[[int, int, int], None], int, int, int]) -> None:
    fn, i, r0, r1 = job
    with torch.inference_mode():  # thread-local: the maps written in place are inference tensors
        fn(i, r0, r1)


# -- stages -----------------------------------------------------------------------------------------------
class _SlabCache:
    """Free slabs kept from one image to the next, so that a folder of pairs reuses the same memory
    rather than leaving freed slabs in the heap to be split by other allocations (with the ``keep``
    allocator that fragmentation raised the peak of a two-pair `metaloss fuse` run by ~0.3 GB).
    Only slabs of the latest size are kept; :func:`release_buffers` empties it."""

    def __init__(self) -> None:
        self.free: list[Tensor] = []
        self.lock = threading.Lock()

    def take(self, numel: int, like: Tensor) -> Tensor:
        with self.lock:
            for i, t in enumerate(self.free):
                if t.numel() == numel and t.dtype == like.dtype and t.device == like.device:
                    return self.free.pop(i)
            if self.free and self.free[0].numel() != numel:
                self.free.clear()  # another image size: free the old slabs before allocating
        return like.new_empty(numel)

    def put(self, slabs: list[Tensor]) -> None:
        with self.lock:
            self.free.extend(slabs)


_SLAB_CACHE = _SlabCache()


def release_buffers() -> None:
    """Free the full-size buffers the fast engine keeps between images."""
    with _SLAB_CACHE.lock:
        _SLAB_CACHE.free.clear()


class _Pool:
    """Full-resolution maps served from a few reused slabs, so that the heap neither grows with
    freed maps of the first widths nor fragments.  A slab holds ``slab_numel`` elements (the
    widest map); a map is one of the equal pieces that a slab is cut into (one piece for a map of
    more than half a slab), and a slab whose pieces are all free again serves any width.  With
    Restormer's widths (C in the encoders, 2C after the merge) an image needs three slabs where
    per-width buffers need five."""

    def __init__(self, slab_numel: int) -> None:
        self.slab_numel = slab_numel
        self.slabs: list[Tensor] = []  # handed back to _SLAB_CACHE by close()
        self.pieces: list[
            list[Tensor | None] | None
        ] = []  # per slab: None = whole and free, else its pieces (None = in use)
        self.owner: dict[int, tuple[int, int]] = {}  # data_ptr of a piece in use -> (slab, piece)

    def take(self, like: Tensor, rows: int, channels: int) -> Tensor:
        numel = rows * channels
        if numel > self.slab_numel:
            return like.new_empty(rows, channels)
        n = self.slab_numel // numel
        for s, pieces in enumerate(self.pieces):  # a free piece of this size in a cut slab
            slab = self.slabs[s]
            if pieces is not None and slab.dtype == like.dtype and slab.device == like.device:
                for i, p in enumerate(pieces):
                    if p is not None and p.numel() == numel:
                        pieces[i] = None
                        self.owner[p.data_ptr()] = (s, i)
                        return p.view(rows, channels)
        s = self._whole_free(like)
        first = self.slabs[s][:numel]
        cut: list[Tensor | None] = [None] + [self.slabs[s][i * numel : (i + 1) * numel] for i in range(1, n)]
        self.pieces[s] = cut
        self.owner[first.data_ptr()] = (s, 0)
        return first.view(rows, channels)

    def _whole_free(self, like: Tensor) -> int:
        for s, pieces in enumerate(self.pieces):
            if pieces is None and self.slabs[s].dtype == like.dtype and self.slabs[s].device == like.device:
                return s
        self.slabs.append(_SLAB_CACHE.take(self.slab_numel, like))
        self.pieces.append(None)
        return len(self.slabs) - 1

    def close(self) -> None:
        """Hand every slab to the cache for the next image (the maps taken from them must be dead)."""
        _SLAB_CACHE.put(self.slabs)
        self.slabs, self.pieces, self.owner = [], [], {}

    def give(self, *tensors: Tensor) -> None:
        """Return maps taken from the pool; other tensors are dropped (freed when unreferenced)."""
        for t in tensors:
            if t.data_ptr() in self.owner:
                s, i = self.owner.pop(t.data_ptr())
                pieces = self.pieces[s]
                assert pieces is not None, "a slab with an owned piece is cut"
                pieces[i] = t.reshape(-1)
                if all(p is not None for p in pieces):
                    self.pieces[s] = None


class _Runner:
    def __init__(self, height: int, width: int, band_pixels: int, max_channels: int, workers: int = 1) -> None:
        self.h, self.w = height, width
        self.bands = list(_bands(height, width, band_pixels))
        self.pool = _Pool(height * width * max_channels)
        self.executor = None
        # side by side only with at least two bands per worker; else each op uses the intra-op threads
        if workers > 1 and len(self.bands) >= 2 * workers:
            self.bands = list(_bands(height, width, band_pixels, workers))
            self.executor = _band_executor(workers)

    def each_band(self, fn: Callable[[int, int, int], None]) -> None:
        """``fn(i, r0, r1)`` for every band ``i`` (rows ``r0:r1``), on the band workers if there are any.
        ``fn`` writes only its own band's rows of shared maps."""
        if self.executor is None:
            for i, (r0, r1) in enumerate(self.bands):
                fn(i, r0, r1)
        else:
            for _ in self.executor.map(_run_band, [(fn, i, r0, r1) for i, (r0, r1) in enumerate(self.bands)]):
                pass  # re-raises a worker's exception

    def halo(self, r0: int, r1: int, radius: int) -> tuple[int, int, slice]:
        a0, a1 = max(0, r0 - radius), min(self.h, r1 + radius)
        return a0, a1, slice((r0 - a0) * self.w, (r1 - a0) * self.w)

    def rows(self, x: Tensor, a0: int, a1: int) -> Tensor:
        return x[a0 * self.w : a1 * self.w]

    def qkv(
        self, x: Tensor, r0: int, r1: int, lin: Callable[[Tensor], Tensor], dw: tuple[Tensor, Tensor | None]
    ) -> Tensor:
        """``DW(PW(x))`` on band rows r0:r1 (computed on the band plus a one-row halo)."""
        a0, a1, crop = self.halo(r0, r1, 1)
        t = lin(self.rows(x, a0, a1))
        return _depthwise(t, a1 - a0, self.w, dw)[crop]

    def block(self, x: Tensor, p: dict[str, Any]) -> Tensor:
        c = x.shape[1]
        sums = _Sums(c, len(self.bands))
        v_all = self.pool.take(x, *x.shape)

        def attention_sums(i: int, r0: int, r1: int) -> None:
            qkv = self.qkv(x, r0, r1, lambda t: p["qkv"]["lin"](_normalise(t, p["qkv"])), p["qkv_dw"])
            sums.add(i, qkv[:, :c], qkv[:, c : 2 * c], _column_squares(qkv[:, : 2 * c]))
            v_all[r0 * self.w : r1 * self.w] = qkv[:, 2 * c :]

        self.each_band(attention_sums)
        m = _Lin(sums.folded(p["temperature"], p["heads"], p["proj"][0]).to(x.dtype), p["proj"][1])
        out = self.pool.take(x, *x.shape)

        def attend_and_feed_forward(i: int, r0: int, r1: int) -> None:
            a0, a1, crop = self.halo(r0, r1, 1)
            x1 = m(self.rows(v_all, a0, a1), self.rows(x, a0, a1))
            t = _normalise(x1, p["in1"])  # in1 and in2 share the norm
            g = _depthwise(p["in1"]["lin"](t), a1 - a0, self.w, p["dw1"])[crop]
            h = _depthwise(p["in2"]["lin"](t), a1 - a0, self.w, p["dw2"])[crop]
            del t
            y = _gated(g, h)
            del g, h
            out[r0 * self.w : r1 * self.w] = p["out"](y, x1[crop])

        self.each_band(attend_and_feed_forward)
        self.pool.give(v_all)
        return out

    def cross(self, x1: Tensor, x2: Tensor, p: dict[str, Any]) -> Tensor:
        c = x1.shape[1]
        xs = (x1, x2)
        sums = [_Sums(c, len(self.bands)), _Sums(c, len(self.bands))]
        vs = [self.pool.take(x1, *x1.shape), self.pool.take(x1, *x1.shape)]

        def attention_sums(i: int, r0: int, r1: int) -> None:
            qkv = [self.qkv(x, r0, r1, lin, dw) for x, (lin, dw) in zip(xs, p["qkv"], strict=True)]
            # stream 1 attends with stream 2's queries and vice versa
            sq = [_column_squares(t[:, : 2 * c]) for t in qkv]
            sums[0].add(i, qkv[1][:, :c], qkv[0][:, c : 2 * c], torch.cat([sq[1][:c], sq[0][c:]]))
            sums[1].add(i, qkv[0][:, :c], qkv[1][:, c : 2 * c], torch.cat([sq[0][:c], sq[1][c:]]))
            for v, t in zip(vs, qkv, strict=True):
                v[r0 * self.w : r1 * self.w] = t[:, 2 * c :]

        self.each_band(attention_sums)
        ms = [
            _Lin(s.folded(t, p["heads"], mid[0]).to(x1.dtype), mid[1])
            for s, t, mid in zip(sums, p["temperature"], p["mid"], strict=True)
        ]
        out = self.pool.take(x1, x1.shape[0], 2 * c)

        def attend_and_gate(i: int, r0: int, r1: int) -> None:
            a0, a1, crop = self.halo(r0, r1, 1)
            ys = [m(self.rows(v, a0, a1), self.rows(x, a0, a1)) for v, m, x in zip(vs, ms, xs, strict=True)]
            z = torch.cat(ys, dim=1)
            gated = []
            for k in range(2):
                gate = _depthwise(p["gate_in"][k](z), a1 - a0, self.w, p["gate_dw"][k])[crop]
                value = _depthwise(p["value_in"][k](ys[k]), a1 - a0, self.w, p["value_dw"][k])[crop]
                gated.append(_gated(gate, value))
            # z + O₁ y₁ + O₂ y₂ as two products, each adding onto the other's result (no 4C-wide concatenation)
            out[r0 * self.w : r1 * self.w] = p["out"][0](gated[0], p["out"][1](gated[1], z[crop]))

        self.each_band(attend_and_gate)
        self.pool.give(*vs)
        return out

    def head(self, x: Tensor, net: DualStreamRestormer) -> Tensor:
        """The network's head (conv3×3 → activation → conv3×3) over bands with a two-row halo; ``[out, H, W]``."""
        c = x.shape[1]
        out = x.new_empty(net.head_out.out_channels, self.h, self.w)

        def head_band(i: int, r0: int, r1: int) -> None:
            a0, a1, _ = self.halo(r0, r1, 2)
            img = self.rows(x, a0, a1).view(1, a1 - a0, self.w, c).permute(0, 3, 1, 2)
            y = net.head(img)
            out[:, r0:r1] = y[0, :, r0 - a0 : r1 - a0]

        self.each_band(head_band)
        return out

    def stem(self, x: Tensor, wb: tuple[Tensor, Tensor | None]) -> Tensor:
        """The 3×3 stem on a ``[1, in, H, W]`` image → ``[H·W, C]``, as one product of the image's
        3×3 patches (``[H·W, 9·in]``) with the flattened kernel: 3–4× faster than the convolution
        with one input channel, and the result is already pixel-major."""
        patches = F.unfold(x, 3, padding=1)[0].t()  # [H·W, in·9]
        weight, bias = wb
        return patches @ weight.t() if bias is None else torch.addmm(bias, patches, weight.t())


class _FastStages(Stages):
    """The stages of one image in the pixel-major layout: each map between stages is ``[H·W, C]``
    (a stem's input is the ``[1, in, H, W]`` image, the head's output ``[out, H, W]``); a stage hands
    its inputs back to the pool once its output is written."""

    def __init__(self, run: _Runner, p: _Prepared, step: Callable[[], None]) -> None:
        self.run, self.p, self.step = run, p, step

    def stem(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        return self.run.stem(x, self.p.stems[id(conv)])

    def block(self, block: RestormerBlock, x: Tensor) -> Tensor:
        y = self.run.block(x, self.p.blocks[id(block)])
        self.run.pool.give(x)
        self.step()
        return y

    def merge(self, merge: CrossAttentionFusion | None, x1: Tensor, x2: Tensor) -> Tensor:
        if merge is None:
            z = torch.cat([x1, x2], dim=1)  # the channels of both: dim 1 in this layout too
        else:
            assert self.p.merge is not None
            z = self.run.cross(x1, x2, self.p.merge)
            self.step()
        self.run.pool.give(x1, x2)
        return z

    def head(self, net: DualStreamRestormer, z: Tensor) -> Tensor:
        out = self.run.head(z, net)
        self.run.pool.close()  # z, from a slab, is dead once run_stages returns
        self.step()
        return out


class FastRestormer:
    """A ``DualStreamRestormer`` prepared for fast inference: ``fast(a, b)`` equals ``net(a, b)`` up
    to float rounding.  The folded weights are taken when it is built: build it again after the
    network's weights change.  ``workers`` threads run the bands of each pass side by side, each op on
    one thread (default: ``torch.get_num_threads()`` at the call; 1 runs the bands in turn, each op on
    the intra-op threads)."""

    def __init__(
        self,
        net: DualStreamRestormer,
        band_pixels: int = DEFAULT_BAND_PIXELS,
        on_stage: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.net, self.band_pixels, self.on_stage, self.workers = net, band_pixels, on_stage, workers
        with torch.no_grad():
            self.p = _Prepared(net)

    def stages(self) -> int:
        """Stages per image (blocks, merge block, head): the steps ``on_stage(i, n)`` counts."""
        return self.p.stage_count

    @torch.inference_mode()
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        self._done, self._total = 0, self.stages() * a.shape[0]
        outs = [self._one(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0])]
        return torch.stack(outs)

    def _step(self) -> None:
        self._done += 1
        if self.on_stage is not None:
            self.on_stage(self._done, self._total)

    def _one(self, a: Tensor, b: Tensor) -> Tensor:
        h, w = a.shape[-2:]
        workers = torch.get_num_threads() if self.workers is None else self.workers
        run = _Runner(h, w, self.band_pixels, self.p.max_channels, workers)
        return self.net.run_stages(a, b, _FastStages(run, self.p, self._step))


def fast_forward(
    module: nn.Module,
    a: Tensor,
    b: Tensor,
    band_pixels: int = DEFAULT_BAND_PIXELS,
    on_stage: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Any:
    """``module(a, b)`` with every ``DualStreamRestormer`` in it run by :class:`FastRestormer`
    (inference only; the rest of ``module`` runs as it is).  ``on_stage(i, n)`` after each stage;
    ``workers`` as for :class:`FastRestormer`.  ``TypeError`` for a module without such a backbone."""
    if not supports_fast(module):
        raise TypeError(f"{type(module).__name__} has no DualStreamRestormer for fast inference")
    with (
        torch.inference_mode(),
        backbones_run_by(lambda net, x, y: FastRestormer(net, band_pixels, on_stage, workers)(x, y)),
    ):
        return module(a, b)
