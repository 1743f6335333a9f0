import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaloss.meta import buffer_copies, inner_update, trainable_params


def quadratic_module():
    m = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0]]))
    return m


def test_one_step_is_sgd():
    m = quadratic_module()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    loss_fn = lambda p: functional_call(m, p, (x,)).square().sum()  # (w1 + w2)^2 -> grad 2(w1+w2)*[1,1]
    new = inner_update(m, loss_fn, lr=0.1)
    assert set(new) == {"weight"}
    expected = torch.tensor([[1.0, -2.0]]) - 0.1 * 2 * (-1.0) * torch.ones(1, 2)
    assert torch.allclose(new["weight"], expected.double())
    assert m.weight.tolist() == [[1.0, -2.0]]  # the module itself is untouched


def test_three_steps_compose():
    m = quadratic_module()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    loss_fn = lambda p: functional_call(m, p, (x,)).square().sum()
    three = inner_update(m, loss_fn, lr=0.1, steps=3)
    p = dict(trainable_params(m))
    for _ in range(3):
        p = inner_update(m, loss_fn, lr=0.1, params=p)
    assert torch.allclose(three["weight"], p["weight"])


def test_result_keeps_second_order_graph():
    m = quadratic_module()
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    new = inner_update(m, lambda p: scale * functional_call(m, p, (x,)).square().sum(), lr=0.1)
    (g,) = torch.autograd.grad(new["weight"].sum(), scale)
    # w' = w - lr * scale * 2 (w.x) x  ->  d(sum w')/d scale = -lr * 2 (w.x) * sum(x)
    wx = 1.0 * 1.0 + (-2.0) * 0.5
    assert g.item() == pytest.approx(-0.1 * 2 * wx * 1.5)


def test_buffers_never_change():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).double().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    seen = []

    def loss_fn(p):
        seen.append(set(p))
        return functional_call(m, p, (x,)).square().mean()

    inner_update(m, loss_fn, lr=0.1, steps=2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "1.running_mean" in seen[0]  # the loss sees (copies of) the buffers


def test_skips_frozen_parameters():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).double()
    m[0].weight.requires_grad_(False)
    new = inner_update(m, lambda p: functional_call(m, p, (torch.ones(1, 2, dtype=torch.float64),)).sum(), lr=0.1)
    assert "0.weight" not in new and "1.weight" in new


def test_bad_arguments():
    m = quadratic_module()
    f = lambda p: functional_call(m, p, (torch.ones(1, 2, dtype=torch.float64),)).sum()
    with pytest.raises(ValueError, match="steps"):
        inner_update(m, f, lr=0.1, steps=0)
    with pytest.raises(ValueError, match="truncate"):
        inner_update(m, f, lr=0.1, steps=1, truncate=2)
    with pytest.raises(ValueError, match="backend"):
        inner_update(m, f, lr=0.1, backend="jax")  # type: ignore[arg-type]


def test_higher_backend_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "higher", None)
    m = quadratic_module()
    f = lambda p: functional_call(m, p, (torch.ones(1, 2, dtype=torch.float64),)).sum()
    with pytest.raises(ImportError, match=r"metaloss\[higher\]"):
        inner_update(m, f, lr=0.1, backend="higher")


def test_buffer_copies_are_copies():
    m = nn.BatchNorm1d(3)
    copies = buffer_copies(m)
    copies["running_mean"] += 1
    assert m.running_mean.abs().sum() == 0
