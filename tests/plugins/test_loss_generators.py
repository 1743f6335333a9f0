"""Loss generators of the TDFusion and ReFusion plugins: sizes, normalisation, meta-gradients."""

import pytest
import torch
from torch.func import functional_call

from metaloss.losses import sobel
from metaloss.models.restormer import RestormerFusion
from metaloss.protocols import LossGenerator
from metaloss.registry import available, load

tdfusion = pytest.importorskip("metaloss_tdfusion.loss_generator")
refusion = pytest.importorskip("metaloss_refusion.loss_generator")
TDFusionLossGenerator = tdfusion.TDFusionLossGenerator
SigmoidLossGenerator = tdfusion.SigmoidLossGenerator
ReFusionLossGenerator = refusion.ReFusionLossGenerator
sobel_magnitude = refusion.sobel_magnitude
convert_reference_lpn = tdfusion.convert_reference_state_dict

SMALL = dict(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def images(size: tuple[int, int] = (17, 23), batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 1, *size, generator=g), torch.rand(batch, 1, *size, generator=g)


def test_parameter_counts() -> None:
    assert n_params(TDFusionLossGenerator()) == 44_529
    assert n_params(SigmoidLossGenerator()) == 44_529
    # two input channels per stream (+2·16·9) and four output maps (+2·16·9)
    assert n_params(ReFusionLossGenerator()) == 45_105


@pytest.mark.parametrize("size", [(17, 23), (1, 1), (6, 9)])
def test_tdfusion_weights_are_a_softmax_pair(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ir, vi = images(size, batch=2)
    maps = TDFusionLossGenerator()(ir, vi)
    assert set(maps) == {"intensity"}
    w = maps["intensity"]
    assert w.shape == (2, 2, *size)
    assert (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2, *size))


@pytest.mark.parametrize("size", [(17, 23), (1, 1), (6, 9)])
def test_refusion_both_maps_are_softmax_pairs(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ir, vi = images(size, batch=2)
    maps = ReFusionLossGenerator()(ir, vi)
    assert set(maps) == {"intensity", "gradient"}
    for key in ("intensity", "gradient"):
        m = maps[key]
        assert m.shape == (2, 2, *size)
        assert (m > 0).all() and (m < 1).all()
        torch.testing.assert_close(m.sum(dim=1), torch.ones(2, *size))
    assert not torch.allclose(maps["intensity"], maps["gradient"])


def test_sigmoid_weights_are_independent_and_unconstrained() -> None:
    ir, vi = images()
    sig = SigmoidLossGenerator(**SMALL, bias=True)
    soft = TDFusionLossGenerator(**SMALL, bias=True)
    for gen in (sig, soft):
        with torch.no_grad():  # constant logits (2, 2): both sources strongly emphasised
            gen.backbone.head_out.weight.zero_()
            gen.backbone.head_out.bias.fill_(2.0)
    w_sig, w_soft = sig(ir, vi)["intensity"], soft(ir, vi)["intensity"]
    assert torch.allclose(w_sig, torch.sigmoid(torch.tensor(2.0)).expand_as(w_sig))
    assert (w_sig.sum(dim=1) > 1.7).all()  # both near 0.88: a softmax pair cannot express this
    torch.testing.assert_close(w_soft, torch.full_like(w_soft, 0.5))

    # changing the infrared logit leaves the visible weight untouched (sigmoid) but not (softmax)
    for gen in (sig, soft):
        with torch.no_grad():
            gen.backbone.head_out.bias[0] = -1.0
    w_sig2, w_soft2 = sig(ir, vi)["intensity"], soft(ir, vi)["intensity"]
    torch.testing.assert_close(w_sig2[:, 1], w_sig[:, 1])
    assert not torch.allclose(w_sig2[:, 0], w_sig[:, 0])
    assert not torch.allclose(w_soft2[:, 1], w_soft[:, 1])


def test_sigmoid_generator_default_output_range() -> None:
    torch.manual_seed(0)
    ir, vi = images()
    w = SigmoidLossGenerator()(ir, vi)["intensity"]
    assert w.shape == (1, 2, 17, 23) and (w > 0).all() and (w < 1).all()
    assert not torch.allclose(w.sum(dim=1), torch.ones(1, 17, 23))


def test_generators_share_the_backbone_code() -> None:
    assert type(TDFusionLossGenerator().backbone) is type(SigmoidLossGenerator().backbone)
    assert type(ReFusionLossGenerator().backbone) is type(TDFusionLossGenerator().backbone)
    for cls in (TDFusionLossGenerator, SigmoidLossGenerator, ReFusionLossGenerator):
        assert isinstance(cls(**SMALL), LossGenerator)


def test_sobel_magnitude() -> None:
    flat = sobel_magnitude(torch.full((1, 1, 5, 6), 0.3))
    assert torch.equal(flat[..., 1:-1, 1:-1], torch.zeros(1, 1, 3, 4))  # (zero padding: border edges)
    ramp = torch.arange(7.0).mul(0.1).expand(1, 1, 5, 7)  # I(y, x) = 0.1·x
    g = sobel_magnitude(ramp)
    assert g.shape == ramp.shape
    torch.testing.assert_close(g[..., 1:-1, 1:-1], torch.full((1, 1, 3, 5), 0.8))  # (1+2+1)·2·0.1
    gx, gy = sobel(ramp)
    torch.testing.assert_close(g, gx.abs() + gy.abs())


def test_refusion_generator_sees_gradients() -> None:
    """The Sobel magnitudes are inputs: the stems have 2 input channels per source."""
    gen = ReFusionLossGenerator(**SMALL)
    assert gen.backbone.encoder1.stem.in_channels == 2
    assert gen.backbone.encoder2.stem.in_channels == 2


@pytest.mark.parametrize("cls", ["tdfusion", "sigmoid", "refusion"])
def test_registered_as_entry_points(cls: str) -> None:
    if cls not in available("loss_generators"):
        pytest.skip("metaloss not pip-installed")
    expected = {
        "tdfusion": TDFusionLossGenerator,
        "sigmoid": SigmoidLossGenerator,
        "refusion": ReFusionLossGenerator,
    }[cls]
    assert load("loss_generators", cls) is expected


def _fusion_loss(fused: torch.Tensor, ir: torch.Tensor, vi: torch.Tensor, maps: dict) -> torch.Tensor:
    w = maps["intensity"]
    loss = (w[:, :1] * (fused - ir) ** 2).mean() + (w[:, 1:] * (fused - vi) ** 2).mean()
    if "gradient" in maps:
        v = maps["gradient"]
        gf = sobel_magnitude(fused)
        loss = loss + (v[:, :1] * (gf - sobel_magnitude(ir)).abs()).mean()
        loss = loss + (v[:, 1:] * (gf - sobel_magnitude(vi)).abs()).mean()
    return loss


@pytest.mark.parametrize("cls", ["tdfusion", "sigmoid", "refusion"])
def test_meta_gradient_reaches_the_generator(cls: str) -> None:
    """A gradient of a gradient: θ' = θ − η∇θ L_f(θ, φ); ∇φ L_outer(θ') is finite and non-zero."""
    torch.manual_seed(0)
    gen = {"tdfusion": TDFusionLossGenerator, "sigmoid": SigmoidLossGenerator, "refusion": ReFusionLossGenerator}[cls](
        **SMALL
    )
    net = RestormerFusion(**SMALL)
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    phi = {n: p.detach().clone().requires_grad_(True) for n, p in gen.named_parameters()}
    ir, vi = images((9, 11))
    maps = functional_call(gen, phi, (ir, vi))
    inner = _fusion_loss(functional_call(net, theta, (ir, vi)), ir, vi, maps)
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    theta2 = {n: p - 0.5 * g for (n, p), g in zip(theta.items(), grads, strict=True)}
    ir2, vi2 = images((7, 10))
    outer = functional_call(net, theta2, (ir2, vi2)).sub(ir2).pow(2).mean()
    meta = torch.autograd.grad(outer, list(phi.values()), allow_unused=True)
    flat = torch.cat([g.flatten() for g in meta if g is not None])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    # every generator parameter takes part (the PReLU slope and heads included)
    assert all(g is not None for g in meta)


def test_reference_lpn_checkpoint_keys_convert() -> None:
    """Keys of the reference ``LPN`` (nets/ReFusion.py) map one-to-one onto TDFusionLossGenerator."""

    def conv(name: str) -> list[str]:  # MetaConv2d registers ``x.weight`` and ``x.conv.weight``
        return [f"{name}.weight", f"{name}.conv.weight"]

    keys = conv("patch_embed1") + conv("patch_embed2") + conv("out1") + ["out2.weight"] + conv("out3")
    for enc in ("encoder1", "encoder2", "encoder3"):
        for i in (0, 1):
            keys += [f"{enc}.{i}.norm{j}.body.{p}" for j in (1, 2) for p in ("weight", "bias")]
            keys.append(f"{enc}.{i}.attn.temperature")
            for name in (
                "attn.qkv",
                "attn.qkv_dwconv",
                "attn.project_out",
                "ffn.project_in",
                "ffn.dwconv",
                "ffn.project_out",
            ):
                keys += conv(f"{enc}.{i}.{name}")
    gen = TDFusionLossGenerator()
    ours = gen.state_dict()
    converted = convert_reference_lpn({k: torch.zeros(()) for k in keys})
    assert set(converted) == set(ours)
    target = {k: next(iter(convert_reference_lpn({k: torch.zeros(())}))) for k in keys}
    values = {k: torch.randn(ours[target[k]].shape) for k in keys if ".conv." not in k}
    values.update({k: values[k.replace(".conv.", ".")] for k in keys if ".conv." in k})
    gen.load_state_dict(convert_reference_lpn(values), strict=True)
    torch.testing.assert_close(gen.backbone.act.weight, values["out2.weight"])
    torch.testing.assert_close(gen.backbone.decoder[0].attn.temperature, values["encoder3.0.attn.temperature"])


def test_refusion_without_gradient_weights_proposes_intensity_weights_only() -> None:
    torch.manual_seed(0)
    ir, vi = images((9, 11), batch=2)
    generator = ReFusionLossGenerator(gradient_weights=False)
    maps = generator(ir, vi)
    assert set(maps) == {"intensity"}  # the fusion loss's gradient term then keeps the max rule
    torch.testing.assert_close(maps["intensity"].sum(dim=1), torch.ones(2, 9, 11))
    assert sum(p.numel() for p in generator.parameters()) < sum(p.numel() for p in ReFusionLossGenerator().parameters())


def test_refusion_prior_starts_at_the_soft_max_rule_and_learns_a_correction() -> None:
    """prior_sharpness = s: W = softmax(s·[I_a, I_b]) before any training (W_a = sigmoid(s (I_a − I_b))),
    and the correction's last convolution receives a gradient, so meta-learning can move away from it."""
    from metaloss_refusion.loss_generator import ReFusionLossGenerator

    torch.manual_seed(0)
    gen = ReFusionLossGenerator(
        dim=4, heads=2, blocks_per_modality=1, fused_blocks=1, gradient_weights=False, prior_sharpness=20.0
    )
    ir, vi = torch.rand(2, 1, 12, 10), torch.rand(2, 1, 12, 10)
    w = gen(ir, vi)["intensity"]
    torch.testing.assert_close(w[:, :1], torch.sigmoid(20.0 * (ir - vi)))
    w[:, :1].square().sum().backward()
    assert gen.backbone.head_out.weight.grad.abs().sum() > 0
    plain = ReFusionLossGenerator(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1, gradient_weights=False)
    assert plain.backbone.head_out.weight.abs().sum() > 0  # without a prior: the usual initialisation


def test_refusion_hard_prior_starts_at_the_fixed_max_loss_and_learns_a_correction() -> None:
    """hard_prior = True: before training the fusion loss is the fixed max rule's, exactly (W = 1/2 at
    ties gives the same loss); the correction gets a gradient although every weight sits at 0 or 1;
    swapping the sources swaps W; W stays a probability pair however large the correction."""
    from metaloss.losses import fusion_loss
    from metaloss.models.conv_generator import FixedLossGenerator

    torch.manual_seed(0)
    ir, vi = images((12, 10), batch=2)
    vi[..., :3, :3] = ir[..., :3, :3]  # ties
    gen = ReFusionLossGenerator(**SMALL, gradient_weights=False, symmetric=True, hard_prior=True)
    w = gen(ir, vi)["intensity"]
    assert set(w.unique().tolist()) == {0.0, 0.5, 1.0}
    fused = torch.rand_like(ir)
    fixed = FixedLossGenerator(intensity_rule="max")(ir, vi)
    for kwargs in ({"gradient_target": "intensity"}, {"gradient_target": "max", "intensity_norm": "l1"}):
        torch.testing.assert_close(
            fusion_loss(fused, ir, vi, {"intensity": w}, **kwargs).total,
            fusion_loss(fused, ir, vi, fixed, **kwargs).total,
        )
    fusion_loss(fused, ir, vi, {"intensity": w}).total.backward()
    assert gen.backbone.head_out.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(gen.backbone.head_out.weight, std=5.0)  # a large correction
    with torch.no_grad():
        ab, ba = gen(ir, vi)["intensity"], gen(vi, ir)["intensity"]
    torch.testing.assert_close(ba, ab.flip(1), rtol=0, atol=1e-6)
    assert ab.min() >= 0 and ab.max() <= 1 and 0 < float(((ab > 0) & (ab < 1)).float().mean()) < 1
    torch.testing.assert_close(ab.sum(1), torch.ones_like(ab[:, 0]))
    for kwargs in ({"prior_sharpness": 5.0}, {"gradient_weights": True}, {"prior_sharpness": 5.0, "learn_prior": True}):
        with pytest.raises(ValueError, match="hard_prior"):
            ReFusionLossGenerator(**SMALL, **{"gradient_weights": False, **kwargs}, hard_prior=True)
    with pytest.raises(ValueError, match="correction_bound"):  # no effect without hard_prior: refused, not ignored
        ReFusionLossGenerator(**SMALL, gradient_weights=False, prior_sharpness=5.0, correction_bound=0.5)


def test_clamp_closed_passes_the_gradient_on_its_bounds() -> None:
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = refusion.clamp_closed(x, 0, 1)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_refusion_hard_prior_correction_bound_keeps_the_rules_choice() -> None:
    """correction_bound = 1/2: however large the learned correction, W stays within 1/2 of the hard rule,
    so no pixel goes to the source the rule rejects."""
    torch.manual_seed(0)
    ir, vi = images((12, 10), batch=2)
    gen = ReFusionLossGenerator(**SMALL, gradient_weights=False, symmetric=True, hard_prior=True, correction_bound=0.5)
    torch.nn.init.normal_(gen.backbone.head_out.weight, std=5.0)
    with torch.no_grad():
        w_a = gen(ir, vi)["intensity"][:, :1]
    hard = (ir > vi).float()
    assert float((w_a - hard).abs().max()) <= 0.5 + 1e-6
    assert float((w_a - hard).abs().max()) > 0.4  # the correction does reach its bound


@pytest.mark.parametrize("gradient_weights", [True, False])
def test_refusion_symmetric_generator_is_swap_equivariant(gradient_weights: bool) -> None:
    """symmetric=True: G(b, a) = swap(G(a, b)) for W (and V), exactly up to float rounding, for any
    weights (the backbone scores each source against the other); the plain generator is not."""
    torch.manual_seed(0)
    ir, vi = images((13, 11), batch=2)
    swap = lambda m: m.flip(1)  # [x_a, x_b] -> [x_b, x_a]
    sym = ReFusionLossGenerator(**SMALL, gradient_weights=gradient_weights, symmetric=True, prior_sharpness=5.0)
    torch.nn.init.normal_(sym.backbone.head_out.weight, std=0.5)  # the prior zeroed it: give it weight
    ab, ba = sym(ir, vi), sym(vi, ir)
    assert set(ab) == ({"intensity", "gradient"} if gradient_weights else {"intensity"})
    for key in ab:
        torch.testing.assert_close(ba[key], swap(ab[key]), rtol=0, atol=1e-6)
        torch.testing.assert_close(ab[key].sum(1), torch.ones_like(ab[key][:, 0]))
    assert (ab["intensity"] - torch.sigmoid(5.0 * torch.cat([ir - vi, vi - ir], 1))).abs().max() > 1e-2
    plain = ReFusionLossGenerator(**SMALL, gradient_weights=gradient_weights)
    assert (plain(vi, ir)["intensity"] - swap(plain(ir, vi)["intensity"])).abs().max() > 1e-4
    assert n_params(sym) < n_params(plain)  # one source's logits out, not both


def test_refusion_focus_prior_gives_the_sharper_source_the_weight() -> None:
    """prior = "focus": before training W follows the local sharpness share; a blurred copy of a
    textured image loses to the sharp one, and both flat halves of a pair blend evenly."""
    from metaloss_refusion.loss_generator import ReFusionLossGenerator, prior_scores, sobel_magnitude

    torch.manual_seed(0)
    texture = torch.rand(1, 1, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(texture, 5, 1, 2, count_include_pad=False)
    near = torch.cat([texture[..., :16], blurred[..., 16:]], dim=-1)  # sharp on the left
    far = torch.cat([blurred[..., :16], texture[..., 16:]], dim=-1)  # sharp on the right
    gen = ReFusionLossGenerator(**SMALL, gradient_weights=False, prior="focus", prior_sharpness=10.0, symmetric=True)
    with torch.no_grad():
        w = gen(near, far)["intensity"]
    assert float(w[0, 0, :, 2:10].mean()) > 0.85 and float(w[0, 1, :, 22:30].mean()) > 0.85
    scores = prior_scores("focus", near, far, sobel_magnitude(near), sobel_magnitude(far))
    torch.testing.assert_close(w, (10.0 * scores).softmax(1))
    flat = torch.full((1, 1, 16, 16), 0.3)  # inside (the zero-padded Sobel sees edges at the border)
    with torch.no_grad():
        torch.testing.assert_close(gen(flat, flat + 0.2)["intensity"][..., 4:12, 4:12], torch.full((1, 2, 8, 8), 0.5))


def test_refusion_exposure_prior_prefers_the_well_exposed_region() -> None:
    """prior = "exposure": W_k ∝ exp(s·σ_k), σ_k = −(μ_k − 0.5)²/(2·0.2²) of the local brightness μ_k;
    with s = 1 that is Mertens et al.'s well-exposedness weight."""
    from metaloss_refusion.loss_generator import EXPOSURE_SIGMA, ReFusionLossGenerator

    under = torch.full((1, 1, 40, 40), 0.05)
    under[..., 20:] = 0.45  # the right half is well exposed in the dark image ...
    over = torch.full((1, 1, 40, 40), 0.55)
    over[..., 20:] = 0.98  # ... the left half in the bright one
    gen = ReFusionLossGenerator(**SMALL, gradient_weights=False, prior="exposure", prior_sharpness=1.0)
    with torch.no_grad():
        w = gen(under, over)["intensity"]
    assert float(w[0, 1, 20, 2]) > 0.9 and float(w[0, 0, 20, 37]) > 0.9
    e = lambda x: torch.exp(-((x - 0.5) ** 2) / (2 * EXPOSURE_SIGMA**2))
    torch.testing.assert_close(w[0, 0, 20, 0], e(torch.tensor(0.05)) / (e(torch.tensor(0.05)) + e(torch.tensor(0.55))))
    with pytest.raises(ValueError, match="prior"):
        ReFusionLossGenerator(**SMALL, prior="nope", prior_sharpness=1.0)(under, over)


def test_refusion_learned_prior_starts_at_the_rule_and_its_scalars_learn() -> None:
    """learn_prior = True: W is the hand-made rule before training (exp(ρ) = 1, c_j = 0); the rule's
    sharpness ρ and the extra rules' coefficients c_j get gradients; misuse is refused by name."""
    from metaloss_refusion.loss_generator import ReFusionLossGenerator, prior_scores, sobel_magnitude

    torch.manual_seed(0)
    ir, vi = images((16, 14), batch=2)
    gen = ReFusionLossGenerator(
        **SMALL, gradient_weights=False, prior_sharpness=20.0, symmetric=True, learn_prior=True, extra_priors=["focus"]
    )
    w = gen(ir, vi)["intensity"]
    torch.testing.assert_close(w[:, :1], torch.sigmoid(20.0 * (ir - vi)))
    (w[:, :1] * ir).sum().backward()
    assert gen.prior_log_scale.grad.abs() > 0 and gen.prior_mix.grad.abs().sum() > 0
    with torch.no_grad():
        gen.prior_mix.fill_(0.5)
        mixed = gen(ir, vi)["intensity"]
    ga, gb = sobel_magnitude(ir), sobel_magnitude(vi)
    logits = 20.0 * (prior_scores("intensity", ir, vi, ga, gb) + 0.5 * prior_scores("focus", ir, vi, ga, gb))
    torch.testing.assert_close(mixed, logits.softmax(1))
    torch.testing.assert_close(gen(vi, ir)["intensity"], gen(ir, vi)["intensity"].flip(1), rtol=0, atol=1e-6)
    for kwargs, match in (
        ({"learn_prior": True}, "prior_sharpness"),
        ({"prior_sharpness": 5.0, "extra_priors": ["focus"]}, "learn_prior"),
        ({"prior_sharpness": 5.0, "learn_prior": True, "extra_priors": ["nope"]}, "extra_priors"),
    ):
        with pytest.raises(ValueError, match=match):
            ReFusionLossGenerator(**SMALL, **kwargs)
