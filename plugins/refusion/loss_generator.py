"""ReFusion's loss proposal module P(I_a, I_b, ∇I_a, ∇I_b) → {[W_a, W_b], [V_a, V_b]}.

ReFusion's paper describes the module's inputs and outputs but its code was not available to us;
we build it from the same two-stream Restormer backbone as TDFusion's loss generator
(``metaloss.nn.restormer.DualStreamRestormer``, concat merge, PReLU head), with:

* each source's stream fed ``[I_k, |∇I_k|]`` (2 channels): the image and its Sobel gradient
  magnitude ``|∇I| = |S_x * I| + |S_y * I|`` (L1 magnitude, as the reference code bases compute
  it), from the same Sobel operator as the fusion loss (``metaloss.losses.sobel``, zero padding);
* four output maps ``[W_a, W_b, V_a, V_b]``, each pair softmax-normalised over the two sources:
  W weights the intensity term, V the gradient term of the fusion loss.  With
  ``gradient_weights=False`` only W is proposed and the gradient term keeps the max rule
  (``metaloss.losses.fusion_loss``): the variant the default pretrained model was trained with, since
  learned V weights drifted to one source and dropped the other's edges (docs/refusion.md).

Default sizes: 45,105 trainable parameters.
"""

# No ``from __future__ import annotations``: the registry builds a pydantic config from the
# constructor's signature (see metaloss.registry.config_model).

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metaloss.losses import sobel
from metaloss.nn.restormer import DualStreamRestormer, LayerNormKind

__all__ = ["PRIORS", "Prior", "ReFusionLossGenerator", "clamp_closed", "prior_scores", "sobel_magnitude"]

#: The hand-made rules a learned W can start from (``prior``), one per fusion task.
Prior = Literal["intensity", "focus", "exposure"]
PRIORS: tuple[str, ...] = ("intensity", "focus", "exposure")
#: Window of the focus measure (local mean of the Sobel magnitude); window of the local brightness
#: that the exposure rule scores, and the width of its bell.
FOCUS_WINDOW = 7
EXPOSURE_WINDOW = 31
EXPOSURE_SIGMA = 0.2


def sobel_magnitude(x: Tensor) -> Tensor:
    """L1 Sobel gradient magnitude ``|S_x * x| + |S_y * x|`` of ``[B, C, H, W]`` (per channel, as the loss)."""
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()


def prior_scores(prior: Prior, a: Tensor, b: Tensor, grad_a: Tensor, grad_b: Tensor) -> Tensor:
    """``[B, 2, H, W]`` per-source scores ``[σ_a, σ_b]`` of a hand-made rule; W = softmax(s·σ) is the rule.

    * ``intensity`` (infrared–visible, medical): σ_k = I_k, the soft max-intensity rule;
    * ``focus`` (multi-focus): σ_k = f_k / (f_a + f_b + 10⁻³), f_k the 7×7 local mean of |∇I_k|: the
      sharper source wins, scale-free (a ratio in [0, 1]), a blend where both are flat;
    * ``exposure`` (multi-exposure): σ_k = −(μ_k − 0.5)² / (2·0.2²), Mertens et al.'s well-exposedness
      of μ_k, the 31×31 local mean of I_k: scored per pixel, the rule cuts edges in half and loses
      contrast (on the MEF training pairs its target scores VIF 0.78 against the average's 1.41);
      on the local brightness it chooses the better exposed region as a whole.
    """
    if prior == "intensity":
        return torch.cat([a, b], dim=1)
    if prior == "focus":
        pad = FOCUS_WINDOW // 2
        focus = F.avg_pool2d(torch.cat([grad_a, grad_b], dim=1), FOCUS_WINDOW, 1, pad, count_include_pad=False)
        return focus / (focus.sum(dim=1, keepdim=True) + 1e-3)
    if prior == "exposure":
        pad = EXPOSURE_WINDOW // 2
        brightness = F.avg_pool2d(torch.cat([a, b], dim=1), EXPOSURE_WINDOW, 1, pad, count_include_pad=False)
        return -((brightness - 0.5) ** 2) / (2 * EXPOSURE_SIGMA**2)
    raise ValueError(f"unknown prior {prior!r}; choose from {', '.join(PRIORS)}")


def clamp_closed(x: Tensor, low: float, high: float) -> Tensor:
    """x clamped to [low, high], with gradient 1 on the closed interval: ``Tensor.clamp`` passes none at its
    bounds, where the hard rule puts every weight (0 or 1), so a correction starting at zero would never move."""
    inside = (x >= low) & (x <= high)
    return torch.where(inside, x, x.detach().clamp(low, high))


class ReFusionLossGenerator(nn.Module):
    """ReFusion's loss proposal module: ``forward(ir, vi) -> {"intensity": W, "gradient": V}``.

    W and V are ``[B, 2, H, W]``, channel 0 infrared (a), channel 1 visible (b); each pair sums to 1
    per pixel (softmax over the two sources).  ``prior_sharpness = s > 0``: W = softmax(s·[I_a, I_b] + Δ),
    a learned correction Δ (its last convolution starts at zero) around a soft max-intensity rule
    (W_a = sigmoid(s·(I_a − I_b))), so that meta-learning starts from a strong hand-made loss, not from
    0.5 everywhere; ``prior`` picks the rule per fusion task (:func:`prior_scores`: ``focus`` for
    multi-focus, ``exposure`` for multi-exposure).  ``symmetric=True``: one backbone scores each source
    against the other, ``logit_a = net(a, b)``, ``logit_b = net(b, a)``, so swapping the inputs swaps
    the weights exactly (no input-slot bias; twice the backbone's compute).  ``gradient_weights=False``:
    W only (max-rule gradient term).  ``learn_prior=True``: the rule itself is learned too, in a few
    scalars whose meta-gradients sum over every pixel (:meth:`prior_logits`): its sharpness, and the
    weights of ``extra_priors`` mixed into its scores (a learned choice of target).  The Sobel
    magnitudes of both sources are computed inside ``forward``.  ``hard_prior=True``: W_a = clamp(H_a + δ, 0, 1),
    H the hard rule itself (1 where σ_a > σ_b, 0 where σ_a < σ_b, 1/2 at ties: softmax(s·σ) as s → ∞) and
    δ = clamp((Δ_a − Δ_b)/2, −b, b) the learned correction in probability space, zero at first: meta-learning
    starts from the hand-made max rule exactly (the best fixed loss), where a correction in logit space would
    get no gradient; ``correction_bound = b`` < 1 caps how far W may leave the rule (b = 1/2: it may blend
    the two sources but never hand a pixel to the source the rule rejects).  45,105 trainable parameters at
    the default sizes.
    """

    def __init__(
        self,
        dim: Annotated[int, Field(ge=1)] = 16,
        heads: Annotated[int, Field(ge=1)] = 8,
        blocks_per_modality: Annotated[int, Field(ge=0)] = 2,
        fused_blocks: Annotated[int, Field(ge=0)] = 2,
        ffn_expansion: Annotated[float, Field(gt=0)] = 2.0,
        bias: bool = False,
        layernorm: LayerNormKind = "with_bias",
        gradient_weights: bool = True,
        prior_sharpness: Annotated[float, Field(ge=0)] = 0.0,
        prior: Prior = "intensity",
        symmetric: bool = False,
        learn_prior: bool = False,
        extra_priors: list[Prior] = [],  # noqa: B006  (read-only; pydantic needs a plain default)
        hard_prior: bool = False,
        correction_bound: Annotated[float, Field(gt=0, le=1)] = 1.0,
    ) -> None:
        super().__init__()
        if hard_prior and (prior_sharpness > 0 or learn_prior or gradient_weights):
            raise ValueError(
                "hard_prior is the rule at infinite sharpness with a correction in probability space: "
                "it takes no prior_sharpness, learn_prior or gradient_weights"
            )
        if correction_bound != 1.0 and not hard_prior:
            raise ValueError("correction_bound caps the correction of hard_prior: set hard_prior = true")
        if (learn_prior or extra_priors) and prior_sharpness <= 0:
            raise ValueError("learn_prior and extra_priors need a prior (prior_sharpness > 0)")
        if extra_priors and not learn_prior:
            raise ValueError("extra_priors enter with learned coefficients that start at 0: set learn_prior = true")
        for rule in extra_priors:
            if rule not in PRIORS:
                raise ValueError(f"unknown prior {rule!r} in extra_priors; choose from {', '.join(PRIORS)}")
        self.gradient_weights = gradient_weights
        self.prior_sharpness = prior_sharpness
        self.hard_prior = hard_prior
        self.correction_bound = correction_bound
        self.prior = prior
        self.symmetric = symmetric
        self.extra_priors = tuple(extra_priors)
        if learn_prior:  # the rule's own sharpness s·exp(ρ) and the extra rules' coefficients s·c_j
            self.prior_log_scale = nn.Parameter(torch.zeros(()))
            self.prior_mix = nn.Parameter(torch.zeros(len(extra_priors)))
        else:
            self.prior_log_scale = self.prior_mix = None
        per_source = 2 if gradient_weights else 1  # logits of W (and V) for one source
        self.backbone = DualStreamRestormer(
            in_channels=2,
            out_channels=per_source if symmetric else 2 * per_source,
            dim=dim,
            heads=heads,
            blocks_per_source=blocks_per_modality,
            fused_blocks=fused_blocks,
            ffn_expansion=ffn_expansion,
            bias=bias,
            layernorm=layernorm,
            merge="concat",
            activation="prelu",
        )

        if prior_sharpness > 0 or hard_prior:  # a correction around the prior, none at first
            self.backbone.zero_output()

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        grad_a, grad_b = sobel_magnitude(ir), sobel_magnitude(vi)
        a = torch.cat([ir, grad_a], dim=1)
        b = torch.cat([vi, grad_b], dim=1)
        if self.symmetric:  # source k's logits from (I_k, the other): G(b, a) = swap(G(a, b)) exactly
            own, other = self.backbone(torch.cat([a, b]), torch.cat([b, a])).chunk(2)
            logits = torch.stack([own, other], dim=2).flatten(1, 2)  # [W_a, W_b(, V_a, V_b)]
        else:
            logits = self.backbone(a, b)  # [B, 4, H, W] = [W_a, W_b, V_a, V_b]  ([W_a, W_b] without V)
        if self.hard_prior:  # W_a = clamp(H_a + δ, 0, 1), W_b = 1 − W_a: the hard rule first
            scores = prior_scores(self.prior, ir, vi, grad_a, grad_b)
            hard = 0.5 * (1 + torch.sign(scores[:, :1] - scores[:, 1:]))
            bound = self.correction_bound
            w_a = clamp_closed(hard + clamp_closed((logits[:, :1] - logits[:, 1:2]) / 2, -bound, bound), 0, 1)
            return {"intensity": torch.cat([w_a, 1 - w_a], dim=1)}
        if self.prior_sharpness > 0:  # W = softmax(s·[σ_a, σ_b] + learned correction): the hand-made rule first
            prior = self.prior_logits(ir, vi, grad_a, grad_b)
            logits = torch.cat([logits[:, :2] + prior, logits[:, 2:]], dim=1)
        if not self.gradient_weights:
            return {"intensity": logits.softmax(dim=1)}
        w, v = logits.split(2, dim=1)
        return {"intensity": w.softmax(dim=1), "gradient": v.softmax(dim=1)}

    def prior_logits(self, a: Tensor, b: Tensor, grad_a: Tensor, grad_b: Tensor) -> Tensor:
        """``[B, 2, H, W]`` logits of the hand-made rule: s·σ(prior), or with ``learn_prior``
        s·(exp(ρ)·σ(prior) + Σ_j c_j·σ(extra_priors[j])), ρ and c_j learned scalars starting at 0."""
        scores = prior_scores(self.prior, a, b, grad_a, grad_b)
        if self.prior_log_scale is None or self.prior_mix is None:
            return self.prior_sharpness * scores
        scores = scores * self.prior_log_scale.exp()
        for rule, coefficient in zip(self.extra_priors, self.prior_mix, strict=True):
            scores = scores + coefficient * prior_scores(rule, a, b, grad_a, grad_b)
        return self.prior_sharpness * scores
