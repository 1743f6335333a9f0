"""The benchmarks' reference-style meta-step computes the same meta-gradient as metaloss.meta."""

import pytest
import torch

from benchmarks.reference_meta import ShadowRestormerFusion, reference_meta_gradient, reference_meta_step
from metaloss.data.collate import collate_pairs
from metaloss.data.synthetic import SyntheticScenes
from metaloss.meta import meta_gradient
from metaloss.models.restormer import RestormerFusion
from metaloss.problem import FusionProblem
from metaloss_tdfusion.segmentation import SegmentationTask


class PixelTask(torch.nn.Module):
    targets = ("mask",)
    view_targets = SegmentationTask.view_targets  # masks follow the images

    def __init__(self, classes=3):
        super().__init__()
        self.head = torch.nn.Conv2d(1, classes, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(classes)  # train mode: the disk round trip must restore its statistics

    def forward(self, fused):
        return self.norm(self.head(fused))

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs, batch["mask"])


def problem():
    from metaloss_tdfusion.loss_generator import TDFusionLossGenerator

    torch.manual_seed(0)
    small = dict(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1)
    p = FusionProblem(
        RestormerFusion(**small),
        TDFusionLossGenerator(**small),
        PixelTask(),
        crop_size=16,
        task_size=(16, 24),
        dtype=torch.float64,
    ).double()
    ds = SyntheticScenes(2, 24, 32, objects=(1, 2))
    g = torch.Generator().manual_seed(0)
    train, test = (p.prepare_batch(collate_pairs([ds[i]]), g) for i in range(2))
    for b in (train, test):
        b["mask"] = b["mask"].clamp(max=2)
    return p, train, test


def test_shadow_network_equals_the_fusion_network():
    net = RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1)
    shadow = ShadowRestormerFusion.like(net)
    x, y = torch.rand(2, 1, 12, 10), torch.rand(2, 1, 12, 10)
    torch.testing.assert_close(shadow(x, y), net(x, y))
    assert len(shadow.params()) == len(list(net.parameters()))
    assert all(p.requires_grad and p.is_leaf for p in shadow.params())


@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_reference_meta_gradient_equals_metaloss(method, tmp_path):
    p, train, test = problem()
    state = {k: v.clone() for k, v in p.state_dict().items()}
    expected, result = meta_gradient(p, train, test, inner_lr=0.3, lookahead_lr=0.2, method=method)
    got, outer = reference_meta_gradient(p, train, test, inner_lr=0.3, lookahead_lr=0.2, workdir=tmp_path)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    assert flat(expected).norm() > 0
    assert float((flat(got) - flat(expected)).norm() / flat(expected).norm()) < 1e-10
    assert outer == pytest.approx(result.outer_loss, rel=1e-12)
    for k, v in p.state_dict().items():  # task net (batch-norm statistics included) restored from disk
        assert torch.equal(v, state[k]), k
    assert not list(tmp_path.iterdir())  # the task file is removed


def test_reference_meta_step_steps_the_generator_only():
    p, train, test = problem()
    before = {k: v.clone() for k, v in p.state_dict().items()}
    opt = torch.optim.SGD(p.loss_generator.parameters(), lr=0.1)
    reference_meta_step(p, train, test, opt, inner_lr=0.3, lookahead_lr=0.2)
    after = p.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("loss_generator.") for k in changed)
