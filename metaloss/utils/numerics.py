"""How far two evaluations of one computation may differ when only the order of their float additions
differs: another band split, another thread count, another number of processes.

Such evaluations are not bit-identical, but the difference has a bound that follows from the
computation, not a constant chosen until a test passes.  A float sum of ``n`` terms, added in any
order, errs by at most ``γₙ · Σ|xᵢ|`` with ``γₙ = n·u / (1 − n·u)`` and ``u`` the unit roundoff of the
format (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §4.2; a dot product of
length ``n`` likewise, §3.1), so two orders differ by at most ``2·γₙ·Σ|xᵢ|``.  Results computed from
such sums carry that error on, magnified by how sensitive the rest of the computation is: the
``amplification`` that each caller states with its reason.
"""

from __future__ import annotations

import torch

__all__ = ["adam_run_tolerance", "gamma", "reordering_tolerance", "unit_roundoff"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of rounding one real number to ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """``γₙ = n·u / (1 − n·u)``: the worst relative error (to ``Σ|xᵢ|``) of a sum or dot product of ``n``
    terms in ``dtype``, whatever the order of the additions."""
    nu = max(1, n) * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"a sum of {n} terms in {dtype} has no error bound (n·u = {nu:.3g} ≥ 1)")
    return nu / (1 - nu)


def reordering_tolerance(dtype: torch.dtype, terms: int, magnitude: float = 1.0, amplification: float = 1.0) -> float:
    """``2·γₙ·magnitude·amplification``: the largest difference between two evaluations whose sums (of at
    most ``terms`` terms) were added in different orders.

    ``magnitude``: ``Σ|xᵢ|`` of those sums in the units of the compared values (for values that are
    normalised sums — cosines, means, outputs in [0, 1] — their largest magnitude).
    ``amplification``: how much the computation after the sums can magnify an error of them (1 when the
    compared values are the sums themselves).
    """
    if magnitude < 0 or amplification < 0:
        raise ValueError(f"magnitude and amplification must be non-negative, got {magnitude}, {amplification}")
    return 2 * gamma(terms, dtype) * magnitude * amplification


def adam_run_tolerance(
    dtype: torch.dtype, terms: int, steps: int, lr: float, gradient_magnitude: float = 1.0, eps: float = 1e-8
) -> float:
    """How far the parameters of two Adam runs may end apart when only the order of their gradient sums
    differs (one process over the global batch, or ranks' partial sums all-reduced).

    A gradient sum of ``terms`` terms (batch × pixels for a convolution's weights) of magnitude
    ``gradient_magnitude`` differs by ``δ ≤ 2·γₙ·gradient_magnitude``; Adam's step ``lr·m̂/(√v̂ + eps)``
    passes δ on as at most ``lr·δ/eps`` (the worst case is a gradient whose terms cancel, so that
    ``√v̂ ≈ 0``: the biases in front of a batch norm), once per step, to first order.
    """
    return reordering_tolerance(dtype, terms, magnitude=steps * lr * gradient_magnitude, amplification=1 / eps)
