import pytest
import torch

from metaloss.config import load_config
from metaloss.data.collate import collate_pairs
from metaloss.experiment import build_experiment
from metaloss.meta import meta_gradient

pytest.importorskip("ultralytics")

from metaloss_tdfusion.detection import DetectionMAP, DetectionTask


def gt_batch():
    # image 0: one box of class 1; image 1: two boxes of class 0 (normalised cx, cy, w, h)
    return {
        "boxes": torch.tensor(
            [[0, 1, 0.5, 0.5, 0.25, 0.5], [1, 0, 0.25, 0.25, 0.25, 0.25], [1, 0, 0.75, 0.7, 0.2, 0.3]]
        )
    }


def eval_outputs(boxes, h=64, w=64, nc=2, wrong_class=False):
    """Eval-mode YOLO output [B, 4 + nc, A] with one confident anchor per ground-truth box."""
    anchors = 8
    preds = torch.zeros(2, 4 + nc, anchors)
    slot = [0, 0]
    for idx, cls, cx, cy, bw, bh in boxes.tolist():
        i, a = int(idx), slot[int(idx)]
        slot[i] += 1
        preds[i, :4, a] = torch.tensor([cx * w, cy * h, bw * w, bh * h])
        preds[i, 4 + (1 - int(cls) if wrong_class else int(cls)), a] = 0.9
    return {"preds": (preds, None), "size": (h, w), "padded": (h, w)}


def test_map_of_exact_predictions_is_one_and_of_wrong_classes_zero():
    batch = gt_batch()
    metric = DetectionMAP(num_classes=2)
    metric.update(eval_outputs(batch["boxes"]), batch)
    result = metric.compute()
    # ultralytics' interpolated AP of a perfect detector is 0.995 (its precision envelope ends at recall 1)
    assert result["mAP50"] == pytest.approx(0.995, abs=1e-6) and result["mAP50-95"] == pytest.approx(0.995, abs=1e-6)
    wrong = DetectionMAP(num_classes=2)
    wrong.update(eval_outputs(batch["boxes"], wrong_class=True), batch)
    assert wrong.compute()["mAP50"] == 0.0


def test_map_needs_eval_outputs():
    task = DetectionTask(num_classes=2).train()
    with pytest.raises(ValueError, match="eval"):
        DetectionMAP(2).update(task(torch.rand(2, 1, 64, 64)), gt_batch())


def test_loss_is_per_image_and_pads_odd_sizes():
    torch.manual_seed(0)
    task = DetectionTask(num_classes=2).train()
    x = torch.rand(2, 1, 50, 70, requires_grad=True)
    out = task(x)
    assert out["padded"] == (64, 96)
    loss = task.loss(out, gt_batch())
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    (g,) = torch.autograd.grad(loss, x)
    assert g.abs().sum() > 0  # the task loss reaches the fused image


def test_meta_gradient_through_yolo_reaches_the_loss_generator():
    cfg = load_config(
        {
            "data": {
                "name": "synthetic",
                "num_images": 4,
                "height": 64,
                "width": 64,
                "crop_size": 32,
                "objects": [1, 2],
            },
            "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
            "loss_generator": {"name": "conv", "width": 4},
            "objective": {"name": "detection"},
        }
    )
    exp = build_experiment(cfg)
    assert exp.problem.objective.num_classes == 2  # from the dataset's num_box_classes
    g = torch.Generator().manual_seed(0)
    train = exp.problem.prepare_batch(collate_pairs([exp.train_set[0]]), g)
    test = exp.problem.prepare_batch(collate_pairs([exp.train_set[1]]), g)
    assert train["boxes"][:, 0].tolist() == sorted(train["boxes"][:, 0].tolist())  # swapped copy indexed 1
    grads, result = meta_gradient(exp.problem, train, test, inner_lr=1e-2, lookahead_lr=1e-3)
    norm = torch.cat([x.flatten() for x in grads]).norm()
    assert torch.isfinite(norm) and norm > 0 and result.objective_loss is not None
