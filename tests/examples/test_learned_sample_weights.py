"""The core is generic: meta-learned per-sample weights find the corrupted labels (no images involved)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def example():
    repo_root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "learned_sample_weights", repo_root / "examples" / "learned_sample_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learned_weights_are_lower_on_corrupted_samples(example):
    problem, data, history = example.train(epochs=12, noise=0.4, seed=0, n_train=200)
    assert data.corrupted.float().mean() > 0.3
    w = example.sample_weights(problem, data)
    clean, corrupted = w[~data.corrupted].mean(), w[data.corrupted].mean()
    assert clean - corrupted > 0.3, (float(clean), float(corrupted))
    assert len(history) == 12 and all(h["meta/loss_generator_grad_norm"] > 0 for h in history)


def test_the_example_speaks_the_engine_s_roles_only(example):
    """No fusion word is needed outside image fusion; the loss's terms come back with the loss."""
    import inspect
    import re

    code = inspect.getsource(example)
    assert not re.search(r"fusion_lr|task_lr|\bfusion\b\s*=|\btask\b\s*=", code)
    _, _, history = example.train(epochs=1, n_train=60)
    assert 0 < history[0]["meta/inner_mean_weight"] < 1 and 0 < history[0]["learner/learner_mean_weight"] < 1
