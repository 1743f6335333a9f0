"""metaloss-edges against metaloss's plugin contracts (metaloss.testing), plus its own behaviour."""

import importlib.metadata as md

import pytest
import torch

from metaloss import testing
from metaloss.models.dense import DenseFusion
from metaloss_edges import EdgeTask, PixelMLPLossGenerator, edge_map, sobel_magnitude


def test_task_meets_the_task_contract():
    testing.check_task(EdgeTask(width=8, depth=2))
    testing.check_task(EdgeTask(source="visible", balanced=False, depth=1))


@pytest.mark.parametrize("gradient_weights", [True, False])
def test_loss_generator_meets_the_generator_contract(gradient_weights):
    testing.check_loss_generator(PixelMLPLossGenerator(gradient_weights=gradient_weights), sums_to_one=True)


def test_meta_gradient_through_the_edge_task_is_finite_nonzero_and_correct():
    report = testing.check_meta_gradient(
        PixelMLPLossGenerator(hidden=8),
        fusion=DenseFusion(width=4, growth=4, layers=1),
        task=EdgeTask(width=4, depth=2),
        gradcheck=True,  # float64: the analytic meta-gradient equals a finite difference of the outer loss
    )
    assert report.norm > 0 and not report.zero


def test_edge_maps():
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    edges = edge_map(step, torch.zeros_like(step), source="infrared")
    assert edges[0, 0, :, 3:5].eq(1).all() and edges.sum() == 16  # two columns at the step, no border edges
    assert edge_map(step, torch.zeros_like(step), source="visible").sum() == 0
    assert torch.equal(edge_map(step, step.flip(-1), source="both"), edges.flip(-1).maximum(edges))
    assert sobel_magnitude(torch.ones(1, 1, 5, 5)).max() < 1e-5


def test_perfect_prediction_scores_one():
    task = EdgeTask()
    batch = testing.synthetic_batch((2, 32, 32), targets=())
    target = task.edge_targets(batch)
    scores = task.evaluator()
    scores.update(target * 20 - 10, batch)  # logits: +10 on edges, -10 elsewhere
    assert scores.compute() == {"precision": 1.0, "recall": 1.0, "F1": 1.0, "IoU": 1.0}
    empty = task.evaluator()
    empty.update(torch.full_like(target, -10.0), batch)
    assert empty.compute()["F1"] == 0.0 and empty.compute()["recall"] == 0.0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="source"):
        EdgeTask(source="thermal")
    with pytest.raises(ValueError, match="odd"):
        PixelMLPLossGenerator(context=4)


def test_installed_entry_points():
    try:
        md.distribution("metaloss-edges")
    except md.PackageNotFoundError:
        pytest.skip("metaloss-edges is not installed (pip install -e .)")
    checked = testing.check_distribution("metaloss-edges")
    assert checked == ["loss_generators:pixel_mlp", "tasks:edges"]
