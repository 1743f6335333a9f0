"""The reference fusion network RestormerFusion: size, shapes, range, config and second-order gradients."""

import pytest
import torch
from torch.func import functional_call

from metaloss.models.restormer import RestormerFusion, convert_reference_state_dict
from metaloss.protocols import FusionNet
from metaloss.registry import available, config_model, load


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_parameter_count_matches_reference_exactly() -> None:
    assert n_params(RestormerFusion()) == 59_856


@pytest.mark.parametrize("size", [(17, 23), (1, 1), (8, 8), (31, 4)])
def test_shape_and_range_at_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = RestormerFusion()
    ir, vi = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = net(ir, vi)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_two_inputs_are_not_interchangeable() -> None:
    torch.manual_seed(0)
    net = RestormerFusion()
    ir, vi = torch.rand(1, 1, 17, 23), torch.rand(1, 1, 17, 23)
    assert not torch.allclose(net(ir, vi), net(vi, ir))
    assert isinstance(net, FusionNet)


def test_configurable_sizes() -> None:
    small = RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1, ffn_expansion=1.0)
    assert n_params(small) < 59_856
    x = torch.rand(1, 1, 9, 5)
    assert small(x, x).shape == x.shape
    assert n_params(RestormerFusion(bias=True)) > 59_856
    assert n_params(RestormerFusion(layernorm="bias_free")) == 59_856 - (4 * 2 * 16 + 2 * 2 * 32)  # no LayerNorm β
    with pytest.raises(ValueError):
        RestormerFusion(heads=3)


def test_config_model_from_signature() -> None:
    model = config_model(RestormerFusion)
    cfg = model(dim=8, heads=4)
    assert cfg.model_dump() == {
        "dim": 8,
        "heads": 4,
        "blocks_per_modality": 2,
        "fused_blocks": 2,
        "ffn_expansion": 2.0,
        "bias": False,
        "layernorm": "with_bias",
        "base": "none",
    }
    assert n_params(RestormerFusion(**cfg.model_dump())) < 59_856
    with pytest.raises(ValueError):  # pydantic's ValidationError
        model(layernorm="batch")


@pytest.mark.skipif("restormer" not in available("fusion"), reason="metaloss not pip-installed")
def test_registered_as_entry_point() -> None:
    assert load("fusion", "restormer") is RestormerFusion


def test_second_order_gradient_through_functional_call() -> None:
    """∇θ ‖∇θ L(θ)‖² through functional_call exists, is finite and non-zero (MAML's inner step)."""
    torch.manual_seed(0)
    net = RestormerFusion()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    ir, vi = torch.rand(1, 1, 17, 23), torch.rand(1, 1, 17, 23)
    fused = functional_call(net, params, (ir, vi))
    loss = ((fused - ir) ** 2).mean() + ((fused - vi) ** 2).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    # one look-ahead step, then a loss at θ' differentiated back to θ (through the first gradient)
    lookahead = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    outer = functional_call(net, lookahead, (vi, ir)).mean()
    second = torch.autograd.grad(outer, list(params.values()), retain_graph=True)
    flat = torch.cat([g.flatten() for g in second])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    # and the pure second-order part (Hessian-vector product) is non-zero too
    hvp = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(params.values()))
    flat_hvp = torch.cat([g.flatten() for g in hvp])
    assert torch.isfinite(flat_hvp).all() and flat_hvp.abs().sum() > 0


def test_float64() -> None:
    net = RestormerFusion(dim=4, heads=2).double()
    x = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    assert net(x, x).dtype == torch.float64


def _conv(name: str) -> list[str]:
    # the reference's MetaConv2d registers each weight twice: as ``x.weight`` and ``x.conv.weight``
    return [f"{name}.weight", f"{name}.conv.weight"]


def reference_block_keys(prefix: str) -> list[str]:
    keys = [f"{prefix}.norm{i}.body.{p}" for i in (1, 2) for p in ("weight", "bias")]
    keys.append(f"{prefix}.attn.temperature")
    for name in ("attn.qkv", "attn.qkv_dwconv", "attn.project_out", "ffn.project_in", "ffn.dwconv", "ffn.project_out"):
        keys += _conv(f"{prefix}.{name}")
    return keys


def reference_fusion_keys() -> list[str]:
    """State-dict keys of the reference ``ReFusion`` fusion network (nets/ReFusion.py), default sizes."""
    keys = _conv("project_in_1") + _conv("project_in_2")
    for enc in ("encoder1", "encoder2", "decoder"):
        keys += [k for i in (0, 1) for k in reference_block_keys(f"{enc}.{i}")]
    keys += ["FM.temperature1", "FM.temperature2"]
    for name in ("qkv1", "qkv1_dwconv", "qkv2", "qkv2_dwconv", "project_mid1", "project_mid2", "project_E",
                 "project_E_d", "project_E1", "project_E1_d", "project_E2", "project_E2_d", "project_out1",
                 "project_out2"):  # fmt: skip
        keys += _conv(f"FM.{name}")
    return keys + _conv("project_out_0") + _conv("project_out_1")


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_checkpoint_keys_convert(prefix: str) -> None:
    net = RestormerFusion()
    ours = net.state_dict()
    ref_keys = reference_fusion_keys()
    converted = convert_reference_state_dict({prefix + k: torch.zeros(()) for k in ref_keys})
    assert set(converted) == set(ours)
    # a checkpoint with the right shapes loads strictly and lands in the right places
    target = {k: next(iter(convert_reference_state_dict({k: torch.zeros(())}))) for k in ref_keys}
    values: dict[str, torch.Tensor] = {}
    for k in ref_keys:  # ``x.weight`` comes before ``x.conv.weight``: the two share one tensor
        base = k.replace(".conv.weight", ".weight")
        values[k] = values[base] if base in values else torch.randn(ours[target[k]].shape)
    net.load_state_dict(convert_reference_state_dict({prefix + k: v for k, v in values.items()}), strict=True)
    torch.testing.assert_close(net.backbone.merge.gate_dwconv.weight, values["FM.project_E_d.weight"])
    torch.testing.assert_close(net.backbone.encoder2.blocks[1].norm2.bias, values["encoder2.1.norm2.body.bias"])
    torch.testing.assert_close(net.backbone.head_out.weight, values["project_out_1.weight"])


@pytest.mark.parametrize("bias", [False, True])
def test_mean_base_starts_at_the_average_and_learns_a_correction(bias: bool) -> None:
    """base="mean": I_f = sigmoid(net + logit((I_a + I_b)/2)) with the net's last convolution at zero,
    so the untrained network outputs the average (inputs clamped to [eps, 1 - eps]); one optimiser step
    on a loss that wants something else moves it off the average."""
    torch.manual_seed(0)
    net = RestormerFusion(base="mean", bias=bias).double()
    ir, vi = torch.rand(2, 1, 24, 20, dtype=torch.float64), torch.rand(2, 1, 24, 20, dtype=torch.float64)
    mean = ((ir + vi) / 2).clamp(net.eps, 1 - net.eps)
    torch.testing.assert_close(net(ir, vi), mean, rtol=0, atol=1e-12)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):  # the first step reaches the zeroed head only; the second moves the output
        opt.zero_grad()
        (net(ir, vi) - torch.maximum(ir, vi)).square().mean().backward()
        opt.step()
    assert (net(ir, vi) - mean).abs().max() > 1e-3
    with pytest.raises(ValueError):
        config_model(RestormerFusion)(base="max")
