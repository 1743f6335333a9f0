import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")

from metaloss_tdfusion.segmentation import MeanIoU, SegmentationTask


def one_hot_logits(labels, classes):
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float() * 10


def test_miou_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])  # 255 ignored
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    m = MeanIoU(num_classes=3)
    m.update(one_hot_logits(pred, 3), {"mask": target})
    # class 0: tp 3, fp 0, fn 1 -> 3/4 ; class 1: tp 3, fp 1 -> 3/4 ; class 2 absent everywhere -> left out
    result = m.compute()
    assert result["mIoU"] == pytest.approx(0.75)
    assert result["pixel_accuracy"] == pytest.approx(6 / 7)


def test_any_size_and_ignore_index():
    torch.manual_seed(0)
    task = SegmentationTask(num_classes=3)
    x = torch.rand(2, 1, 50, 70, requires_grad=True)
    out = task(x)
    assert out.shape == (2, 3, 50, 70)
    mask = torch.full((2, 50, 70), 255)
    mask[:, :10] = 1
    loss = task.loss(out, {"mask": mask})
    only_labelled = torch.nn.functional.cross_entropy(out[:, :, :10], mask[:, :10])
    assert loss.item() == pytest.approx(only_labelled.item(), rel=1e-5)
    (g,) = torch.autograd.grad(loss, x)
    assert g.abs().sum() > 0


def test_other_architectures_and_bad_names():
    assert SegmentationTask(num_classes=2, arch="Unet", encoder="resnet18")(torch.rand(2, 1, 64, 64)).shape == (
        2,
        2,
        64,
        64,
    )
    with pytest.raises(ValueError, match="encoder"):
        SegmentationTask(num_classes=2, encoder="no_such_encoder")
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTask()
