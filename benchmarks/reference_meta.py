"""The reference code's way of taking a meta-step, re-implemented for comparison (benchmarks only).

The TDFusion/ReFusion research code does not use ``torch.func``: every layer of its fusion network
is a "meta module" that holds its weights as plain tensors (buffers that require grad), and the
inner update is written by hand:

1. a *pseudo* fusion network (a second instance of the shadow-parameter class) receives a copy of
   the fusion network's weights;
2. the fusion loss of the loss generator's weights on the crops is differentiated with
   ``autograd.grad(loss, pseudo.params(), create_graph=True)``, and every layer gets a
   ``<name>_meta = <name> - lr * grad`` tensor set by hand, which its ``forward`` then uses;
3. the task network is saved with ``torch.save`` to a file, stepped *in place* by an optimizer on its
   own loss (the look-ahead), used for the outer loss, and loaded back from the file afterwards;
4. the outer loss is back-propagated with ``loss.backward()`` (gradients for every leaf: the loss
   generator, and, as a side effect, the pseudo network's copied weights and the task network) and
   the loss generator's optimizer steps.

This module is our own transcription of that approach onto ``metaloss.nn.restormer``'s formulas
(same operations, weights as explicit tensors), not code from the reference repositories.  It
computes the same meta-gradient as ``metaloss.meta.meta_step`` (``benchmarks.meta_step`` reports
the relative difference) so that the time and memory of the two approaches can be compared.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloss.losses import fusion_loss
from metaloss.models.restormer import RestormerFusion
from metaloss.nn import restormer as R

__all__ = ["MetaModule", "ShadowRestormerFusion", "reference_meta_gradient", "reference_meta_step"]


# -- shadow-parameter layers --------------------------------------------------------------------------------
class MetaModule(nn.Module):
    """A module whose weights are tensors registered as buffers (requiring grad), not ``nn.Parameter``s.

    ``update_params(lr, grads)`` sets ``<name>_meta = <name> - lr * grad`` on the owning layer; a
    layer's forward uses ``<name>_meta`` when it is set, else ``<name>``.
    """

    _weights: tuple[str, ...] = ()

    def w(self, name: str) -> Tensor:
        meta = self.__dict__.get(name + "_meta")
        return meta if meta is not None else getattr(self, name)

    def named_leaves(self, prefix: str = "") -> Iterator[tuple[str, MetaModule, str]]:
        for name in self._weights:
            yield prefix + name, self, name
        for child_name, child in self.named_children():
            if isinstance(child, MetaModule):
                yield from child.named_leaves(f"{prefix}{child_name}.")

    def params(self) -> list[Tensor]:
        return [getattr(owner, name) for _, owner, name in self.named_leaves()]

    def copy_weights(self, source: nn.Module) -> None:
        """Take ``source``'s parameters (same names) as fresh leaves that require grad."""
        state = dict(source.named_parameters())
        for full, owner, name in self.named_leaves():
            owner.register_buffer(name, state[full].detach().clone().requires_grad_(True))
            owner.__dict__.pop(name + "_meta", None)

    def update_params(self, lr: float, grads: list[Tensor | None]) -> None:
        for (_, owner, name), g in zip(list(self.named_leaves()), grads, strict=True):
            current = getattr(owner, name)
            owner.__dict__[name + "_meta"] = current if g is None else current - lr * g


class MetaConv2d(MetaModule):
    _weights = ("weight",)

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.padding, self.groups = k // 2, groups
        self.register_buffer("weight", torch.empty(cout, cin // groups, k, k))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w("weight"), None, 1, self.padding, 1, self.groups)


class MetaLayerNorm(MetaModule):
    _weights = ("weight", "bias")

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:  # as metaloss.nn.restormer.WithBiasLayerNorm
        d = x - x.mean(dim=1, keepdim=True)
        y = d * torch.rsqrt(R._mean_square(d) + self.eps)
        return torch.addcmul(self.w("bias")[:, None, None], y, self.w("weight")[:, None, None])


class MetaMDTA(MetaModule):
    _weights = ("temperature",)

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.register_buffer("temperature", torch.ones(heads, 1, 1))
        self.qkv = MetaConv2d(dim, dim * 3, 1)
        self.qkv_dwconv = MetaConv2d(dim * 3, dim * 3, 3, groups=dim * 3)
        self.project_out = MetaConv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(R.channel_attention(q, k, v, self.w("temperature"), self.heads))


class MetaGDFN(MetaModule):
    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = MetaConv2d(dim, hidden * 2, 1)
        self.dwconv = MetaConv2d(hidden * 2, hidden * 2, 3, groups=hidden * 2)
        self.project_out = MetaConv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class MetaBlock(MetaModule):
    def __init__(self, dim: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1, self.attn = MetaLayerNorm(dim), MetaMDTA(dim, heads)
        self.norm2, self.ffn = MetaLayerNorm(dim), MetaGDFN(dim, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MetaSequential(MetaModule):
    def __init__(self, *modules: MetaModule) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


class MetaEncoder(MetaModule):
    def __init__(self, dim: int, heads: int, blocks: int, expansion: float) -> None:
        super().__init__()
        self.stem = MetaConv2d(1, dim, 3)
        self.blocks = MetaSequential(*(MetaBlock(dim, heads, expansion) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))


class MetaCrossAttention(MetaModule):
    _weights = ("temperature1", "temperature2")

    def __init__(self, dim: int, heads: int, expansion: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.heads = heads
        self.register_buffer("temperature1", torch.ones(heads, 1, 1))
        self.register_buffer("temperature2", torch.ones(heads, 1, 1))
        self.qkv1, self.qkv1_dwconv = MetaConv2d(dim, dim * 3, 1), MetaConv2d(dim * 3, dim * 3, 3, groups=dim * 3)
        self.qkv2, self.qkv2_dwconv = MetaConv2d(dim, dim * 3, 1), MetaConv2d(dim * 3, dim * 3, 3, groups=dim * 3)
        self.project_mid1, self.project_mid2 = MetaConv2d(dim, dim, 1), MetaConv2d(dim, dim, 1)
        self.gate_in = MetaConv2d(dim * 2, hidden * 2, 1)
        self.gate_dwconv = MetaConv2d(hidden * 2, hidden * 2, 3, groups=hidden * 2)
        self.value1_in, self.value1_dwconv = MetaConv2d(dim, hidden, 1), MetaConv2d(hidden, hidden, 3, groups=hidden)
        self.value2_in, self.value2_dwconv = MetaConv2d(dim, hidden, 1), MetaConv2d(hidden, hidden, 3, groups=hidden)
        self.project_out1, self.project_out2 = MetaConv2d(hidden, dim * 2, 1), MetaConv2d(hidden, dim * 2, 1)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # as metaloss.nn.restormer.CrossAttentionFusion
        q1, k1, v1 = self.qkv1_dwconv(self.qkv1(x1)).chunk(3, dim=1)
        q2, k2, v2 = self.qkv2_dwconv(self.qkv2(x2)).chunk(3, dim=1)
        x1 = x1 + self.project_mid1(R.channel_attention(q2, k1, v1, self.w("temperature1"), self.heads))
        x2 = x2 + self.project_mid2(R.channel_attention(q1, k2, v2, self.w("temperature2"), self.heads))
        z = torch.cat([x1, x2], dim=1)
        g1, g2 = self.gate_dwconv(self.gate_in(z)).chunk(2, dim=1)
        y1 = F.gelu(g1) * self.value1_dwconv(self.value1_in(x1))
        y2 = F.gelu(g2) * self.value2_dwconv(self.value2_in(x2))
        return z + self.project_out1(y1) + self.project_out2(y2)


class MetaBackbone(MetaModule):
    def __init__(self, dim: int, heads: int, per_source: int, fused: int, expansion: float) -> None:
        super().__init__()
        self.encoder1 = MetaEncoder(dim, heads, per_source, expansion)
        self.encoder2 = MetaEncoder(dim, heads, per_source, expansion)
        self.merge = MetaCrossAttention(dim, heads)
        self.decoder = MetaSequential(*(MetaBlock(2 * dim, heads, expansion) for _ in range(fused)))
        self.head_in, self.head_out = MetaConv2d(2 * dim, dim, 3), MetaConv2d(dim, 1, 3)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        z = self.decoder(self.merge(self.encoder1(a), self.encoder2(b)))
        return self.head_out(F.leaky_relu(self.head_in(z), 0.01))


class ShadowRestormerFusion(MetaModule):
    """``metaloss.models.restormer.RestormerFusion`` (reference sizes, with-bias LayerNorm, no conv
    bias) with every weight a shadow tensor; the same parameter names, so ``copy_weights`` works."""

    def __init__(
        self,
        dim: int = 16,
        heads: int = 8,
        blocks_per_modality: int = 2,
        fused_blocks: int = 2,
        ffn_expansion: float = 2.0,
    ) -> None:
        super().__init__()
        self.backbone = MetaBackbone(dim, heads, blocks_per_modality, fused_blocks, ffn_expansion)

    @classmethod
    def like(cls, net: RestormerFusion) -> ShadowRestormerFusion:
        bb = net.backbone
        if bb.merge is None or not isinstance(bb.encoder1.blocks[0].norm1, R.WithBiasLayerNorm):
            raise ValueError("the shadow network transcribes the reference configuration only")
        dim = bb.encoder1.stem.out_channels
        shadow = cls(
            dim,
            bb.merge.heads,
            len(bb.encoder1.blocks),
            len(bb.decoder),
            bb.encoder1.blocks[0].ffn.project_in.out_channels / 2 / dim,
        )
        shadow.to(next(net.parameters()).device).copy_weights(net)
        return shadow

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        return self.backbone(ir, vi).sigmoid()


# -- the meta-step ----------------------------------------------------------------------------------------
def reference_meta_gradient(
    problem: Any,
    train: dict[str, Tensor],
    test: dict[str, Tensor],
    *,
    inner_lr: float,
    lookahead_lr: float,
    workdir: str | os.PathLike[str] | None = None,
) -> tuple[list[Tensor], float]:
    """The reference-style meta-step up to the generator's gradients (left in ``p.grad``, and returned
    as copies in parameter order) and the outer loss.  ``problem``: a ``metaloss.problem.FusionProblem``
    (its three networks and loss settings are used; its loss methods are not)."""
    fusion, generator, task = problem.learner, problem.loss_generator, problem.objective
    # 1. inner update on a pseudo network with hand-made *_meta weights
    pseudo = ShadowRestormerFusion.like(fusion)
    fused = pseudo(train["ir"], train["vi"])
    maps = generator(train["ir"], train["vi"])
    inner = fusion_loss(
        fused, train["ir"], train["vi"], maps, alpha=problem.alpha, weight_form=problem.weight_form
    ).total
    grads = torch.autograd.grad(inner, pseudo.params(), create_graph=True, allow_unused=True)
    pseudo.update_params(inner_lr, list(grads))
    del fused, grads
    # 2. the task network to disk, then one in-place SGD step of it on the current fusion output
    own_dir = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="refmeta-")) if own_dir else Path(workdir)  # type: ignore[arg-type]
    path = folder / "task.pth"
    torch.save(task.state_dict(), path)
    try:
        with torch.no_grad():
            fused_task = fusion(train["task_ir"], train["task_vi"])
        sgd = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=lookahead_lr)
        sgd.zero_grad()
        task.loss(task(fused_task), train).backward()
        sgd.step()
        sgd.zero_grad(set_to_none=True)
        # 3. outer loss with the pseudo network's *_meta weights and the stepped task network
        for p in generator.parameters():
            p.grad = None
        outer = task.loss(task(pseudo(test["task_ir"], test["task_vi"])), test)
        outer.backward()
        gen_grads = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in generator.parameters()
            if p.requires_grad
        ]
    finally:
        # 4. the task network back from disk
        task.load_state_dict(torch.load(path, map_location=next(task.parameters()).device))
        for p in task.parameters():
            p.grad = None
        path.unlink(missing_ok=True)
        if own_dir:
            folder.rmdir()
    return gen_grads, float(outer.detach())


def reference_meta_step(
    problem: Any,
    train: dict[str, Tensor],
    test: dict[str, Tensor],
    outer_optimizer: torch.optim.Optimizer,
    *,
    inner_lr: float,
    lookahead_lr: float,
    workdir: str | os.PathLike[str] | None = None,
) -> tuple[list[Tensor], float]:
    """``reference_meta_gradient`` followed by the loss generator's optimizer step."""
    grads, outer = reference_meta_gradient(
        problem, train, test, inner_lr=inner_lr, lookahead_lr=lookahead_lr, workdir=workdir
    )
    outer_optimizer.step()
    outer_optimizer.zero_grad(set_to_none=True)
    return grads, outer
