"""MEFB's information-theoretic metrics: FMI, NMI, Qncie and TE (xingchenzhang/MEFB,
``metrics/metricsFMI.m``, ``metricsNMI.m``, ``metricsQncie.m``, ``metricsTE.m``).

The kernels (:func:`fmi`, :func:`nmi`, :func:`qncie`, :func:`tsallis_entropy`) compute one channel:
tensors ``[..., H, W]`` on 0–255 (sources broadcast against the fused image) → the leading shape.
:data:`SPECS` wraps them in MEFB's colour rule: each channel k of ``A``, ``B``, ``F``, averaged; a
colour F with two grey sources is cut to its first channel. A grey F with colour sources makes
all four MATLAB functions fail (``edge`` refuses a 3-D array; the histograms index past the grey
F); here the sources are then converted with ``rgb2gray``, rounded as for MATLAB's uint8 images.

NMI, Qncie and TE first map each image with Z. Liu's ``normalize1`` (min–max to 0–255, rounded)
and count the 256 × 256 joint histogram of a source (rows) and F (columns).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloss.metrics._ops import (
    Cache,
    batched_histogram,
    cached,
    entropy_from_counts,
    sobel_same,
)
from metaloss.metrics.profiles import MetricSpec, _mefb_rule
from metaloss.metrics.vifb import _normalize1

__all__ = ["SPECS", "fmi", "nmi", "qncie", "tsallis_entropy"]

#: Cvejić's constant q of the Tsallis entropy in ``metricsTE``.
TSALLIS_Q = 1.85


# ------------------------------------------------------------------------- normalize1 histograms
def _levels(x: Tensor) -> Tensor:
    """``normalize1(x)`` as integer grey levels, flattened: ``[..., H·W]``."""
    return _normalize1(x).to(torch.int64).flatten(-2)


def _joint_counts(sources: tuple[Tensor, ...], f: Tensor, cache: Cache | None) -> list[Tensor]:
    """Joint histogram counts of ``normalize1(s)`` (rows) and ``normalize1(f)`` (columns) for each
    source s: ``[..., 256, 256]`` int64 (MATLAB's ``h(im1+1, im2+1)`` before ``h/sum(h(:))``).

    Cached under ``f`` (tagged with the source): NMI, Qncie and TE count the same histograms of a
    fused image, which :func:`metaloss.metrics.evaluate` gives them as one tensor object."""

    def count(s: Tensor) -> Tensor:
        s_rows = cached(cache, "mefb-normalize1-rows", s, lambda: _levels(s) * 256)
        f_cols = cached(cache, "mefb-normalize1-cols", f, lambda: _levels(f))
        lead = torch.broadcast_shapes(s_rows.shape[:-1], f_cols.shape[:-1])
        n = s_rows.shape[-1]
        idx = (s_rows + f_cols).expand(lead + (n,)).reshape(-1, n)
        return batched_histogram(idx, 256 * 256).reshape(lead + (256, 256))

    return [cached(cache, f"mefb-joint-{id(s)}", f, lambda s=s: count(s)) for s in sources]


def _entropies_bits(joint: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(H(rows), H(columns), H(rows, columns))`` of joint counts, in bits."""
    return (
        entropy_from_counts(joint.sum(dim=-1), log="2"),
        entropy_from_counts(joint.sum(dim=-2), log="2"),
        entropy_from_counts(joint.flatten(-2), log="2"),
    )


def _mi_bits(joint: Tensor) -> Tensor:
    """``mutual_info``'s MI = H_x + H_y − H_xy (bits)."""
    h_s, h_f, h_sf = _entropies_bits(joint)
    return h_s + h_f - h_sf


def nmi(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsNMI`` (Hossny's revised MI): 2·(MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))), 0–2."""
    total: Tensor | float = 0.0
    for joint in _joint_counts((a, b), f, cache):
        h_s, h_f, h_sf = _entropies_bits(joint)
        total = total + (h_s + h_f - h_sf) / (h_s + h_f)
    return 2.0 * total  # type: ignore[return-value]


def qncie(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsQncie`` (Wang's nonlinear correlation information entropy), 0–1.

    NCC(X, Y) = MI(X, Y)/log2(256) (bits); r = eigenvalues of the 3 × 3 matrix R with unit diagonal
    and NCC(A,B), NCC(A,F), NCC(B,F) off it; Qncie = 1 + Σ r·log2(r/3)/(3·log2 256).
    """
    # NCC(A, B) depends on the sources alone: cached under A, tagged with B
    ncc_ab = cached(cache, f"mefb-ncc-with-{id(b)}", a, lambda: _mi_bits(_joint_counts((a,), b, cache)[0]) / 8.0)
    ncc_af, ncc_bf = (_mi_bits(joint) / 8.0 for joint in _joint_counts((a, b), f, cache))
    ncc_ab, ncc_af, ncc_bf = torch.broadcast_tensors(ncc_ab, ncc_af, ncc_bf)
    one = torch.ones_like(ncc_ab)
    r_matrix = torch.stack(
        [
            torch.stack([one, ncc_ab, ncc_af], -1),
            torch.stack([ncc_ab, one, ncc_bf], -1),
            torch.stack([ncc_af, ncc_bf, one], -1),
        ],
        -2,
    )
    r = torch.linalg.eigvalsh(r_matrix)
    return 1.0 + (r * torch.log2(r / 3.0)).sum(dim=-1) / (3.0 * 8.0)


def _tsallis(joint: Tensor, q: float) -> Tensor:
    """``tsallis(im1, im2, q)`` of joint counts (rows im1), reproducing its index mix-up.

    With h the normalised histogram, the MATLAB code multiplies ``im1_marg(i)·im2_marg(j)`` where
    ``im1_marg = sum(h)`` is the marginal of the columns (im2) and ``im2_marg`` that of the rows: the
    term of h(i, j) is h(i, j)^q / (P_col(i)·P_row(j))^(q−1), summed where the product is non-zero.
    Result: (1 − Σ)/(1 − q).
    """
    h = joint.to(torch.float64)
    h = h / h.sum(dim=(-2, -1), keepdim=True)
    p_rows = h.sum(dim=-1)
    p_cols = h.sum(dim=-2)
    buff = p_cols.unsqueeze(-1) * p_rows.unsqueeze(-2)
    used = (h > 0) & (buff > 0)
    terms = torch.where(used, h.pow(q) * buff.pow(1.0 - q), torch.zeros_like(h))
    return (1.0 - terms.sum(dim=(-2, -1))) / (1.0 - q)


def tsallis_entropy(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsTE`` (Cvejić): tsallis(A, F, q) + tsallis(B, F, q), q = 1.85 (see :func:`_tsallis`)."""
    joint_af, joint_bf = _joint_counts((a, b), f, cache)
    return _tsallis(joint_af, TSALLIS_Q) + _tsallis(joint_bf, TSALLIS_Q)


# ----------------------------------------------------------------------------------------- FMI
#: 100·eps tolerance of MATLAB's edge thinning, in the units of :func:`_sobel_edges` (Sobel
#: responses 8 times MATLAB's ``fspecial('sobel')/8``).
_THIN_TOL = 8.0 * 100.0 * 2.0**-52


def _sobel_edges(x: Tensor) -> Tensor:
    """MATLAB's ``edge(x)`` (Sobel, automatic threshold, thinning) → bool ``[..., H, W]``.

    g = Sobel responses (``imfilter(x, fspecial('sobel')'/8, 'replicate')`` and its transpose,
    here 8 times larger, which scales b = gx² + gy² and its threshold by 64 exactly); cutoff =
    4·mean(b). An edge pixel has b > cutoff and is a local maximum of b across its dominant
    gradient direction: |gx| ≥ |gy| − tol with b(r,c−1) ≤ b(r,c) > b(r,c+1), or |gy| ≥ |gx| − tol
    with b(r−1,c) ≤ b(r,c) > b(r+1,c); a neighbour outside the image does not count (−∞ here).
    """
    gx, gy = sobel_same(x, "replicate")
    ax, ay = gx.abs_(), gy.abs_()
    mag = ax * ax + ay * ay
    cutoff = 4.0 * mag.sum(dim=(-2, -1), keepdim=True) / float(mag.shape[-2] * mag.shape[-1])
    lead = tuple(mag.shape[:-2])
    padded = F.pad(mag.reshape((-1, 1) + tuple(mag.shape[-2:])), (1, 1, 1, 1), value=-math.inf)
    padded = padded.reshape(lead + tuple(padded.shape[-2:]))
    inner = padded[..., 1:-1, :]
    across_x = (ax >= ay - _THIN_TOL) & (inner[..., :, :-2] <= mag) & (mag > inner[..., :, 2:])
    inner = padded[..., :, 1:-1]
    across_y = (ay >= ax - _THIN_TOL) & (inner[..., :-2, :] <= mag) & (mag > inner[..., 2:, :])
    return (mag > cutoff) & (across_x | across_y)


def _window_codes(edges: Tensor) -> Tensor:
    """The 3 × 3 binary windows of an edge map as 9-bit codes ``[..., H−2, W−2]`` (int64): bit
    r + 3c is the window's pixel (r, c), i.e. bit i is element i+1 of MATLAB's ``sub(:)``."""
    h, w = edges.shape[-2] - 2, edges.shape[-1] - 2
    e = edges.to(torch.int16)
    code = e[..., 0:h, 0:w].clone()
    for c in range(3):
        for r in range(3):
            if r or c:
                code.bitwise_or_(e[..., r : r + h, c : c + w] << (r + 3 * c))
    return code.to(torch.int64)


@functools.lru_cache(maxsize=4)
def _fmi_table(device: str) -> Tensor:
    """FMI of every pair of 3 × 3 binary windows: ``[512 · 512]`` float64, entry ``p·512 + q`` the
    value ``fmi_af`` of ``metricsFMI`` for a source window with code p and a fused window q.

    Per window: 1 if the windows are equal; otherwise each is min–max normalised (a constant one
    becomes all ones) and divided by its sum, giving pdfs over the 9 pixel positions with CDFs; c is
    the Pearson correlation of the two pdfs. The joint pdf mixes the independent one with Fréchet's
    upper bound min(F_f, F_a) (c ≥ 0, weight φ = c/corr_up) or lower bound max(F_f + F_a − 1, 0)
    (c < 0, weight θ = c/corr_lo), corr = Σ_ij(bound − F_f·F_a)/(σ_f σ_a) with σ the pdfs'
    standard deviations over positions 1–9 (weight 0 where a σ is 0, or c = 0 for φ). MI =
    H_a + H_f − H_joint (bits; a negative joint value p adds −p·log2|p|, the real part of MATLAB's
    complex logarithm); FMI = 2·MI/(H_a + H_f), 0 where MI = 0.
    """
    codes = torch.arange(512)
    bits = ((codes.unsqueeze(1) >> torch.arange(9)) & 1).to(torch.float64)
    count = bits.sum(dim=1, keepdim=True)
    sub = torch.where((count == 0) | (count == 9), torch.ones_like(bits), bits)
    pdf = sub / sub.sum(dim=1, keepdim=True)
    cdf = pdf.cumsum(dim=1)
    # MATLAB's mean(pdf) = sum/9 with the sum taken in order, as the last CDF value: for the uniform
    # pdf 1.0000000000000002/9 ≠ 1/9, so two different constant windows (both uniform) get c = 1
    # and FMI 1, where an exact mean would give c = 0 and FMI 0.
    dev = pdf - cdf[:, -1:] / 9.0
    pos = torch.arange(1, 10, dtype=torch.float64)
    mean_pos = (pdf * pos).sum(dim=1)
    sd = torch.sqrt((pdf * pos * pos).sum(dim=1) - mean_pos * mean_pos)
    ent = -(pdf * torch.log2(pdf + (pdf == 0).to(pdf.dtype))).sum(dim=1)

    # fused window q along dim 1 (index i of the MATLAB loops), source window p along dim 0 (j)
    f_pdf, f_cdf, f_dev, f_sd, f_ent = pdf[None, :, :, None], cdf[None, :, :, None], dev[None], sd[None], ent[None]
    rows = []
    for start in range(0, 512, 32):
        p = slice(start, start + 32)
        a_pdf, a_cdf, a_dev = pdf[p, None, None, :], cdf[p, None, None, :], dev[p, None]
        a_sd, a_ent = sd[p, None], ent[p, None]
        num = (a_dev * f_dev).sum(dim=-1)
        norm = torch.sqrt((a_dev * a_dev).sum(dim=-1) * (f_dev * f_dev).sum(dim=-1))
        c = torch.where(num == 0, torch.zeros_like(num), num / norm)
        upper = 0.5 * (f_cdf + a_cdf - (f_cdf - a_cdf).abs())
        lower = 0.5 * (f_cdf + a_cdf - 1.0 + (f_cdf + a_cdf - 1.0).abs())
        positive = c >= 0
        bound = torch.where(positive[..., None, None], upper, lower)
        cov = (bound - f_cdf * a_cdf).sum(dim=(-2, -1))
        sd_prod = f_sd * a_sd
        no_weight = (sd_prod == 0) | (c == 0)  # θ = c/… is 0 at c = 0 too
        weight = torch.where(no_weight, torch.zeros_like(c), c / (cov / sd_prod))
        # probability of each cell (i, j) under the bound: its CDF differenced in both directions
        cell = torch.diff(
            torch.diff(bound, dim=-2, prepend=torch.zeros_like(bound[..., :1, :])),
            dim=-1,
            prepend=torch.zeros_like(bound[..., :, :1]),
        )
        w = weight[..., None, None]
        jpdf = w * cell + (1.0 - w) * f_pdf * a_pdf
        mag = jpdf.abs()
        joint_ent = -(jpdf * torch.log2(mag + (mag == 0).to(mag.dtype))).sum(dim=(-2, -1))
        mi = a_ent + f_ent - joint_ent
        val = torch.where(mi == 0, torch.zeros_like(mi), 2.0 * mi / (a_ent + f_ent))
        rows.append(torch.where(codes[p, None] == codes[None, :], torch.ones_like(val), val))
    return torch.cat(rows).reshape(-1).to(device)


def _fmi_codes(x: Tensor) -> Tensor:
    """9-bit codes of the 3 × 3 windows of ``edge(x)``."""
    return _window_codes(_sobel_edges(x))


def fmi(f: Tensor, a: Tensor, b: Tensor, cache: Cache | None = None) -> Tensor:
    """``metricsFMI`` (Haghighat's fast FMI on ``edge`` features, 3 × 3 windows), about 0–1 (a window
    pair's value can exceed 1 by up to 0.1 where the mixed joint pdf goes negative): the mean over
    the (H−2)(W−2) windows of (FMI(A,F) + FMI(B,F))/2, FMI of a window pair from :func:`_fmi_table`.

    MATLAB normalises F's window in place while computing FMI(A,F), so FMI(B,F) may see an all-zero
    F window as all ones; both are constant, normalise to the same uniform pdf and have the same
    table entries (1 against a constant window, see :func:`_fmi_table`), so that changes nothing.
    """
    table = _fmi_table(str(f.device))
    row_a = cached(cache, "mefb-fmi-rows", a, lambda: _fmi_codes(a) << 9)  # code·512: the table row
    row_b = cached(cache, "mefb-fmi-rows", b, lambda: _fmi_codes(b) << 9)
    code_f = _fmi_codes(f)
    both = table[row_a + code_f].add_(table[row_b + code_f])
    return both.mean(dim=(-2, -1)) / 2.0


# -------------------------------------------------------------------------------------- specs
SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "FMI",
        _mefb_rule(fmi),
        True,
        "feature MI of Sobel edge maps, 3×3 windows, mean of FMI(A,F) and FMI(B,F), about 0–1",
        min_size=3,
    ),
    MetricSpec(
        "NMI",
        _mefb_rule(nmi),
        True,
        "normalised MI, 2·Σ_S MI(S,F)/(H(S)+H(F)) over normalize1'd 256-level images (bits/bits), 0–2",
        min_size=2,
    ),
    MetricSpec(
        "Qncie", _mefb_rule(qncie), True, "nonlinear correlation information entropy of A, B, F (NCC = MI/8 bits), 0–1"
    ),
    MetricSpec(
        "TE",
        _mefb_rule(tsallis_entropy),
        True,
        "Tsallis entropy (q = 1.85) of A with F plus B with F, MEFB's marginal indexing (dimensionless)",
    ),
)
