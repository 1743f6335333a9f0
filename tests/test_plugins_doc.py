"""docs/plugins.md stays true: its signatures are the code's, and its minimal examples pass the checks."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from metaloss import protocols, testing

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _annotation(a) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def signature_text(obj, name: str | None = None) -> str:
    """``name(a: T = default, *, b: U = d) -> R`` with the annotations as written in the source."""
    sig = inspect.signature(obj)
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    ret = f" -> {_annotation(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    return f"{name or obj.__name__}({', '.join(parts)}){ret}"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name",
    [
        "check_fusion_net",
        "check_loss_generator",
        "check_task",
        "check_dataset",
        "check_meta_gradient",
        "check_plugin",
        "check_distribution",
        "synthetic_batch",
        "batch_from_dataset",
    ],
)
def test_testing_signatures_are_current(doc, name):
    expected = "def " + signature_text(getattr(testing, name))
    assert _squash(expected) in _squash(doc), f"docs/plugins.md: update the signature of testing.{name}:\n{expected}"


@pytest.mark.parametrize(
    "protocol, methods",
    [
        (protocols.FusionNet, ["forward"]),
        (protocols.LossGenerator, ["forward"]),
        (protocols.Task, ["forward", "loss", "evaluator"]),
        (protocols.TaskEvaluator, ["update", "compute"]),
        (protocols.PairedDataset, ["__len__", "__getitem__"]),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_protocol_signatures_are_current(doc, protocol, methods):
    for method in methods:
        expected = "def " + signature_text(getattr(protocol, method)) + ": ..."
        assert _squash(expected) in _squash(doc), f"docs/plugins.md: update {protocol.__name__}.{expected}"


def test_every_public_check_is_documented(doc):
    for name in testing.__all__:
        assert f"`{name}`" in doc or f"def {name}(" in doc or f"testing.{name}" in doc, name


def test_minimal_examples_run_and_pass_the_checks(doc):
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    examples = [b for b in blocks if re.search(r"^class Tiny", b, flags=re.M)]
    assert len(examples) == 4
    namespace: dict = {}
    exec(compile("\n".join(examples), str(DOC), "exec"), namespace)
    testing.check_fusion_net(namespace["TinyFusion"]())
    testing.check_loss_generator(namespace["TinyLossGenerator"](), sums_to_one=True)
    testing.check_task(namespace["TinyTask"]())
    testing.check_dataset(namespace["TinyPairs"]())
    testing.check_meta_gradient(
        namespace["TinyLossGenerator"](), fusion=namespace["TinyFusion"](), task=namespace["TinyTask"]()
    )


def test_linked_from_the_readme():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "(docs/plugins.md)" in readme
