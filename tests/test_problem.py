import torch

from metaloss.data.collate import collate_pairs
from metaloss.data.synthetic import SyntheticScenes
from metaloss.models.conv_generator import ConvLossGenerator
from metaloss.models.dense import DenseFusion
from metaloss.problem import FusionProblem


class Seg(torch.nn.Module):
    targets = ("mask",)


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
    hits = [(t, l) for t in range(40 - 15) for l in range(56 - 15) if torch.equal(ir[t : t + 16, l : l + 16], crop)]
    assert len(hits) == 1
    t, l = hits[0]
    assert torch.equal(b["vi"][0, 0, t : t + 16, l : l + 16], out["vi"][0, 0])


def test_evaluation_view_has_no_crop_and_no_swap():
    b = batch()
    out = problem(crop_size=16, task_size=(32, 32)).prepare_batch(b, torch.Generator(), augment=False)
    assert out["ir"].shape == (2, 1, 40, 56) and out["task_ir"].shape == (2, 1, 32, 32)


def test_task_from_crop_crops_masks_with_the_images():
    b = batch(1)
    out = problem(crop_size=16, task_from_crop=True, swap_modalities=False).prepare_batch(b, torch.Generator().manual_seed(2))
    assert torch.equal(out["task_ir"], out["ir"]) and out["mask"].shape == (1, 16, 16)
