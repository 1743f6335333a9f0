"""Restormer building blocks: formulas, shapes, parameter counts, first- and second-order gradients, and what
deployment composes (the attention argument, attention_calls, run_stages, backbones_run_by)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metaloss.nn.restormer import (
    GDFN,
    MDTA,
    BiasFreeLayerNorm,
    CrossAttentionFusion,
    DualStreamRestormer,
    RestormerBlock,
    RestormerEncoder,
    Stages,
    WithBiasLayerNorm,
    backbones_run_by,
    channel_attention,
    channel_layer_norm,
)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move the LayerNorm / temperature parameters off their trivial initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def test_with_bias_layernorm_equals_layer_norm_over_channels() -> None:
    torch.manual_seed(0)
    ln = randomise(WithBiasLayerNorm(6))
    x = torch.randn(2, 6, 5, 7)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected)


def test_bias_free_layernorm_formula() -> None:
    torch.manual_seed(0)
    ln = randomise(BiasFreeLayerNorm(6))
    x = torch.randn(2, 6, 5, 7) + 1.0
    var = x.var(dim=1, keepdim=True, unbiased=False)
    torch.testing.assert_close(ln(x), x / torch.sqrt(var + 1e-5) * ln.weight.view(1, -1, 1, 1))
    assert [n for n, _ in ln.named_parameters()] == ["weight"]


def test_channel_layer_norm_kinds() -> None:
    assert isinstance(channel_layer_norm(4), WithBiasLayerNorm)
    assert isinstance(channel_layer_norm(4, "bias_free"), BiasFreeLayerNorm)
    with pytest.raises(ValueError):
        channel_layer_norm(4, "group")  # type: ignore[arg-type]


def test_channel_attention_matches_per_head_loop() -> None:
    torch.manual_seed(0)
    b, c, h, w, heads = 2, 6, 3, 5, 3
    q, k, v = (torch.randn(b, c, h, w) for _ in range(3))
    temp = torch.rand(heads, 1, 1) + 0.5
    out = channel_attention(q, k, v, temp, heads)
    d = c // heads
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        qi = F.normalize(q[:, sl].flatten(2), dim=-1)
        ki = F.normalize(k[:, sl].flatten(2), dim=-1)
        attn = torch.softmax(torch.einsum("bcn,bdn->bcd", qi, ki) * temp[i], dim=-1)
        expected = torch.einsum("bcd,bdn->bcn", attn, v[:, sl].flatten(2)).reshape(b, d, h, w)
        torch.testing.assert_close(out[:, sl], expected)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 23)])
def test_block_shapes_at_any_size(size: tuple[int, int]) -> None:
    x = torch.randn(2, 16, *size)
    assert MDTA(16, 8)(x).shape == x.shape
    assert GDFN(16, 2.0)(x).shape == x.shape
    assert RestormerBlock(16, 8)(x).shape == x.shape
    assert CrossAttentionFusion(16, 8)(x, x.flip(1)).shape == (2, 32, *size)
    assert RestormerEncoder(1, 16, 8, 2)(x[:, :1]).shape == x.shape


def test_parameter_counts_match_the_reference_layout() -> None:
    # dim 16, 8 heads, expansion 2, no bias: LN 2·32, MDTA 8+768+432+256, GDFN 1024+576+512.
    assert n_params(RestormerBlock(16, 8)) == 3640
    assert n_params(RestormerBlock(32, 8)) == 12392
    assert n_params(RestormerBlock(16, 8, layernorm="bias_free")) == 3640 - 32
    assert n_params(CrossAttentionFusion(16, 8)) == 15472
    assert n_params(RestormerBlock(16, 8, bias=True)) > 3640


def test_heads_must_divide_channels() -> None:
    with pytest.raises(ValueError):
        MDTA(16, 3)
    with pytest.raises(ValueError):
        CrossAttentionFusion(10, 4)
    with pytest.raises(ValueError):
        DualStreamRestormer(dim=6, heads=4)  # 4 divides 12 but not 6


def test_dual_stream_options() -> None:
    x = torch.rand(1, 2, 9, 11)
    net = DualStreamRestormer(in_channels=2, out_channels=3, dim=4, heads=2, blocks_per_source=1, fused_blocks=1)
    assert net(x, x).shape == (1, 3, 9, 11)
    assert isinstance(net.act, torch.nn.PReLU) and net.merge is None
    fuse = DualStreamRestormer(dim=4, heads=2, merge="cross_attention", activation="leaky_relu")
    assert isinstance(fuse.merge, CrossAttentionFusion)
    with pytest.raises(ValueError):
        DualStreamRestormer(merge="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DualStreamRestormer(activation="relu")  # type: ignore[arg-type]


def _as_function(module: torch.nn.Module):  # type: ignore[no-untyped-def]
    names = [n for n, _ in module.named_parameters()]

    def f(*args: torch.Tensor) -> torch.Tensor:
        *params, x1, x2 = args
        inputs = (x1,) if x2.numel() == 0 else (x1, x2)
        return functional_call(module, dict(zip(names, params, strict=True)), inputs)

    return f, [p.detach().clone().requires_grad_(True) for p in module.parameters()]


@pytest.mark.parametrize("kind", ["block", "block_bias_free", "cross"])
def test_gradcheck_float64_tiny(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "cross":
        module: torch.nn.Module = CrossAttentionFusion(dim=2, heads=2, bias=True, expansion=1.0)
    else:
        ln = "bias_free" if kind == "block_bias_free" else "with_bias"
        module = RestormerBlock(dim=4, heads=2, ffn_expansion=1.0, bias=True, layernorm=ln)  # type: ignore[arg-type]
    module = randomise(module.double())
    f, params = _as_function(module)
    c = 2 if kind == "cross" else 4
    x1 = torch.randn(1, c, 3, 4, dtype=torch.float64, requires_grad=True)
    x2 = (
        torch.randn(1, c, 3, 4, dtype=torch.float64, requires_grad=True)
        if kind == "cross"
        else torch.empty(0, dtype=torch.float64)
    )
    inputs = (*params, x1, x2)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    # second order w.r.t. the inputs and the parameters together
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-4, fast_mode=True)


def test_second_order_gradient_through_functional_call() -> None:
    torch.manual_seed(0)
    block = RestormerBlock(dim=8, heads=4)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in block.named_parameters()}
    x = torch.randn(1, 8, 7, 9)
    loss = functional_call(block, params, (x,)).pow(2).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    gg = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(params.values()))
    total = sum(g.abs().sum() for g in gg)
    assert torch.isfinite(torch.as_tensor(total)) and total > 0


def test_blocks_take_the_attention_function_as_an_argument_and_give_their_calls_in_order() -> None:
    torch.manual_seed(0)
    block, cross = randomise(RestormerBlock(8, 2)), randomise(CrossAttentionFusion(8, 2))
    x1, x2 = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 6, 5)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(q, k, v, temperature, heads):  # type: ignore[no-untyped-def]
        seen.append((q, k))
        return channel_attention(q, k, v, temperature, heads)

    for module, inputs in ((block, (x1,)), (cross, (x1, x2))):
        seen.clear()
        assert torch.equal(module(*inputs, attention=recording), module(*inputs))
        calls = module.attention_calls(*inputs)
        assert len(calls) == len(seen) == len(inputs)
        for call, (q, k) in zip(calls, seen, strict=True):
            assert torch.equal(call.q, q) and torch.equal(call.k, k) and call.heads == 2
    assert torch.equal(
        block(x1, attention=lambda q, k, v, t, h: torch.zeros_like(v)),
        x1 + block.ffn(block.norm2(x1 + block.attn.project_out(torch.zeros_like(x1)))),
    )


def test_run_stages_with_the_base_stages_is_the_forward_and_backbones_run_by_is_this_threads() -> None:
    import threading

    torch.manual_seed(0)
    net = randomise(DualStreamRestormer(dim=4, heads=2, blocks_per_source=1, fused_blocks=1, merge="cross_attention"))
    a, b = torch.rand(1, 1, 9, 7), torch.rand(1, 1, 9, 7)
    expected = net(a, b)
    assert torch.equal(net.run_stages(a, b, Stages()), expected)
    elsewhere: list[torch.Tensor] = []
    with backbones_run_by(lambda backbone, x, y: torch.zeros(1)):
        assert torch.equal(net(a, b), torch.zeros(1))
        worker = threading.Thread(target=lambda: elsewhere.append(net(a, b)))
        worker.start()
        worker.join()
    assert torch.equal(elsewhere[0], expected) and torch.equal(net(a, b), expected)
