import pytest
import torch

from metaloss.data.collate import collate_pairs
from metaloss.data.synthetic import SyntheticScenes
from metaloss.models.conv_generator import ConvLossGenerator
from metaloss.models.dense import DenseFusion
from metaloss.problem import FusionProblem
from metaloss_tdfusion.segmentation import SegmentationTask


class Seg(torch.nn.Module):
    targets = ("mask",)
    view_targets = SegmentationTask.view_targets  # masks follow the images


def problem(**kw):
    return FusionProblem(DenseFusion(4, 4, 1), ConvLossGenerator(4), Seg(), **kw)


def batch(n=2):
    ds = SyntheticScenes(n, 40, 56, objects=(1, 2))
    return collate_pairs([ds[i] for i in range(n)])


def test_prepare_batch_crops_resizes_and_swaps():
    b = batch()
    out = problem(crop_size=24, task_size=(32, 48)).prepare_batch(b, torch.Generator().manual_seed(0))
    assert out["ir"].shape == (4, 1, 24, 24) and out["task_ir"].shape == (4, 1, 32, 48)
    assert out["mask"].shape == (4, 32, 48) and "boxes" not in out  # the task only wants masks
    assert torch.equal(out["ir"][2:], out["vi"][:2]) and torch.equal(out["task_vi"][2:], out["task_ir"][:2])
    assert torch.equal(out["mask"][:2], out["mask"][2:])
    assert out["name"] == b["name"] * 2


def test_crop_is_a_window_of_the_image_and_the_same_for_both_modalities():
    b = batch(1)
    out = problem(crop_size=16, swap_modalities=False).prepare_batch(b, torch.Generator().manual_seed(1))
    ir, crop = b["ir"][0, 0], out["ir"][0, 0]
    hits = [(t, x) for t in range(40 - 15) for x in range(56 - 15) if torch.equal(ir[t : t + 16, x : x + 16], crop)]
    assert len(hits) == 1
    t, x = hits[0]
    assert torch.equal(b["vi"][0, 0, t : t + 16, x : x + 16], out["vi"][0, 0])


def test_evaluation_view_has_no_crop_and_no_swap():
    b = batch()
    out = problem(crop_size=16, task_size=(32, 32)).prepare_batch(b, torch.Generator(), augment=False)
    assert out["ir"].shape == (2, 1, 40, 56) and out["task_ir"].shape == (2, 1, 32, 32)


def test_task_from_crop_crops_masks_with_the_images():
    b = batch(1)
    out = problem(crop_size=16, task_from_crop=True, swap_modalities=False).prepare_batch(
        b, torch.Generator().manual_seed(2)
    )
    assert torch.equal(out["task_ir"], out["ir"]) and out["mask"].shape == (1, 16, 16)


# -- targets follow the task's images through the task's hook ------------------------------------------------
class Keypoints(torch.nn.Module):
    """A third-party task with a target type of its own: ``keypoints`` [B, K, 2] = (row, col) in pixels."""

    targets = ("keypoints",)

    def view_targets(self, targets, view):
        points = targets["keypoints"].clone()
        if view.crop is not None:
            points -= points.new_tensor(view.crop[:2])
        base = view.crop[2:] if view.crop is not None else view.image_size
        points *= points.new_tensor([view.size[0] / base[0], view.size[1] / base[1]])
        return {"keypoints": torch.cat([points] * view.repeat)}


def test_a_third_party_target_type_goes_through_its_task_s_hook():
    b = batch()
    b["keypoints"] = torch.tensor([[[10.0, 20.0]], [[30.0, 40.0]]])
    p = FusionProblem(DenseFusion(4, 4, 1), ConvLossGenerator(4), Keypoints(), crop_size=24, task_size=(20, 28))
    out = p.prepare_batch(b, torch.Generator().manual_seed(0))
    assert "mask" not in out and "boxes" not in out  # the dataset's other targets: not the task's
    assert torch.equal(out["keypoints"], torch.tensor([[[5.0, 10.0]], [[15.0, 20.0]]] * 2))  # resized, swapped
    crop = FusionProblem(
        DenseFusion(4, 4, 1),
        ConvLossGenerator(4),
        Keypoints(),
        crop_size=16,
        task_from_crop=True,
        swap_modalities=False,
    ).prepare_batch(b, torch.Generator().manual_seed(1))
    ir, window = b["ir"][0, 0], crop["task_ir"][0, 0]
    ((top, left),) = [
        (t, x) for t in range(40 - 15) for x in range(56 - 15) if torch.equal(ir[t : t + 16, x : x + 16], window)
    ]
    assert torch.equal(crop["keypoints"], b["keypoints"] - torch.tensor([float(top), float(left)]))


def test_targets_without_a_hook_are_repeated_and_refused_where_the_images_change_size():
    class Counts(torch.nn.Module):  # a target without spatial layout; no hook needed
        targets = ("count", "mask")

    b = batch()
    b["count"] = torch.tensor([3, 5])
    out = FusionProblem(DenseFusion(4, 4, 1), ConvLossGenerator(4), Counts(), crop_size=24).prepare_batch(
        b, torch.Generator()
    )
    assert torch.equal(out["count"], torch.tensor([3, 5, 3, 5])) and torch.equal(
        out["mask"], torch.cat([b["mask"]] * 2)
    )
    with pytest.raises(ValueError, match=r"target 'mask' \[2, 40, 56\] has the images' size.*view_targets"):
        FusionProblem(DenseFusion(4, 4, 1), ConvLossGenerator(4), Counts(), task_size=(20, 28)).prepare_batch(
            b, torch.Generator()
        )


def test_detection_boxes_are_repeated_with_shifted_image_indices_and_not_cropped():
    from metaloss_tdfusion.detection import DetectionTask

    class Det(torch.nn.Module):
        targets = ("boxes",)
        view_targets = DetectionTask.view_targets

    b = batch()
    out = FusionProblem(
        DenseFusion(4, 4, 1), ConvLossGenerator(4), Det(), crop_size=24, task_size=(32, 48)
    ).prepare_batch(b, torch.Generator())
    n = len(b["boxes"])
    assert torch.equal(out["boxes"][:n], b["boxes"]) and torch.equal(out["boxes"][n:, 0], b["boxes"][:, 0] + 2)
    with pytest.raises(ValueError, match="cannot crop detection boxes"):
        FusionProblem(
            DenseFusion(4, 4, 1), ConvLossGenerator(4), Det(), crop_size=24, task_from_crop=True
        ).prepare_batch(b, torch.Generator())


# -- performance switches of the meta-step: same meta-gradient -------------------------------------------------
class PixelTask(torch.nn.Module):
    """A 1x1-conv 'segmentation' head with cross-entropy: the smallest objective network."""

    targets = ("mask",)
    view_targets = SegmentationTask.view_targets

    def __init__(self, classes=3):
        super().__init__()
        self.head = torch.nn.Conv2d(1, classes, 3, padding=1)

    def forward(self, fused):
        return self.head(fused)

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs, batch["mask"])


def restormer_problem(**kw):
    from metaloss.models.restormer import RestormerFusion
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
        **kw,
    ).double()
    ds = SyntheticScenes(2, 24, 32, objects=(1, 2))
    g = torch.Generator().manual_seed(0)
    train = p.prepare_batch(collate_pairs([ds[0]]), g)
    test = p.prepare_batch(collate_pairs([ds[1]]), g)
    train["mask"] = train["mask"].clamp(max=2)
    test["mask"] = test["mask"].clamp(max=2)
    return p, train, test


def meta_grad(method, steps=1, truncate=0, **kw):
    from metaloss.meta import meta_gradient

    p, train, test = restormer_problem(**kw)
    grads, result = meta_gradient(
        p, train, test, inner_lr=0.3, inner_steps=steps, truncate=truncate, lookahead_lr=0.2, method=method
    )
    return torch.cat([g.flatten() for g in grads]), result


def test_inner_loss_is_the_loss_of_the_learner_output():
    p, train, _ = restormer_problem()
    params = dict(p.learner.named_parameters())
    assert torch.equal(
        p.inner_loss(params, train).total, p.inner_loss_from_output(p.learner_output(params, train), train).total
    )


@pytest.mark.parametrize("steps,truncate", [(1, 0), (2, 1)])
@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"recompute_generator": True},
        {"recompute_outer": True},
        {"recompute_generator": True, "recompute_outer": True},
    ],
)
def test_meta_gradient_switches_agree_with_plain_double_backward(switches, steps, truncate):
    expected, r0 = meta_grad("double_backward", steps, truncate)
    assert expected.norm() > 0
    for method in ("double_backward", "jvp"):
        got, r = meta_grad(method, steps, truncate, **switches)
        assert float((got - expected).norm() / expected.norm()) < 1e-10, (method, switches)
        assert r.outer_loss == pytest.approx(r0.outer_loss, rel=1e-12)
