"""``metaloss new-plugin NAME``: the skeleton of a third-party plugin package.

    metaloss-NAME/
      pyproject.toml             distribution metaloss-NAME; one entry point per plugin, all named NAME
      README.md
      NAME.toml                  an experiment that uses the four plugins (a short run on the CPU)
      metaloss_NAME/fusion.py    ${Cls}Fusion         FusionNet: a small CNN
      metaloss_NAME/loss_generator.py ${Cls}LossGenerator  LossGenerator: softmax intensity weights
      metaloss_NAME/task.py      ${Cls}Task, ${Cls}Scores  Task: segmentation of the fused image, mIoU
      metaloss_NAME/dataset.py   ${Cls}Dataset        PairedDataset: synthetic pairs with a mask
      tests/test_NAME.py         every plugin through metaloss.testing

Each implementation is minimal but complete: it passes ``metaloss.testing``'s checks, and the example
config runs with ``metaloss run``.  Replace the bodies, keep the contracts (``docs/plugins.md``).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

import metaloss

#: What a NAME may look like: lower case, starts with a letter, then letters, digits, ``_`` or ``-``.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]*[a-z0-9]|[a-z]")


class ScaffoldError(ValueError):
    """The plugin package cannot be created (bad name, folder in the way, name already taken)."""


@dataclass(frozen=True)
class PluginNames:
    """The names derived from NAME: ``depth-net`` -> entry point ``depth_net``, distribution
    ``metaloss-depth-net``, module ``metaloss_depth_net``, class prefix ``DepthNet``."""

    entry: str
    distribution: str
    module: str
    cls: str

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        raw = name.strip()
        for prefix in ("metaloss-", "metaloss_"):
            if raw.startswith(prefix):
                raw = raw[len(prefix) :]
        if not NAME_PATTERN.fullmatch(raw) or "--" in raw or "__" in raw or "-_" in raw or "_-" in raw:
            hint = f" (try {raw.lower()!r})" if raw.lower() != raw and NAME_PATTERN.fullmatch(raw.lower()) else ""
            raise ScaffoldError(
                f"invalid plugin name {name!r}{hint}: use lower-case letters, digits, '_' or '-', starting with a "
                "letter, e.g. 'depth' or 'edge-aware'"
            )
        entry = raw.replace("-", "_")
        if keyword.iskeyword(entry):
            raise ScaffoldError(f"invalid plugin name {name!r}: {entry!r} is a Python keyword")
        return cls(
            entry=entry,
            distribution=f"metaloss-{raw.replace('_', '-')}",
            module=f"metaloss_{entry}",
            cls="".join(part.capitalize() for part in entry.split("_")),
        )


def _taken(names: PluginNames) -> list[str]:
    """Groups in which another distribution already registers ``names.entry``."""
    from metaloss import registry

    clashes = []
    for group in registry.GROUPS:
        others = [registry.distribution_name(ep) for ep in registry.registrations(group).get(names.entry, [])]
        others = [d for d in others if d != names.distribution]
        if others:
            clashes.append(f"{registry.GROUPS[group]} (by {', '.join(others)})")
    return clashes


def render(names: PluginNames) -> dict[str, str]:
    """The files of the package, by path relative to its folder."""
    version = ".".join(metaloss.__version__.split(".")[:2])
    values = {
        "entry": names.entry,
        "dist": names.distribution,
        "module": names.module,
        "Cls": names.cls,
        "metaloss_version": version,
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        ".gitignore": GITIGNORE,
        f"{names.entry}.toml": EXPERIMENT,
        f"{names.module}/__init__.py": INIT,
        f"{names.module}/fusion.py": FUSION,
        f"{names.module}/loss_generator.py": LOSS_GENERATOR,
        f"{names.module}/task.py": TASK,
        f"{names.module}/dataset.py": DATASET,
        f"tests/test_{names.entry}.py": TESTS,
    }
    return {path: Template(text).substitute(values) for path, text in files.items()}


def create_plugin(name: str, out: str | Path = ".", *, force: bool = False) -> tuple[Path, list[Path]]:
    """Write the package for ``name`` into ``out/metaloss-NAME/``; returns the folder and the files written.

    Refuses an existing non-empty folder (unless ``force``: then the scaffold's files are overwritten and
    other files left alone) and a name that another installed distribution already registers.
    """
    names = PluginNames.from_name(name)
    clashes = _taken(names)
    if clashes:
        raise ScaffoldError(
            f"the entry-point name {names.entry!r} is already registered in {', '.join(clashes)}; an experiment "
            "could not tell the two apart (the first distribution in name order wins), so choose another NAME"
        )
    root = Path(out) / names.distribution
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise ScaffoldError(
            f"{root} already exists and is not empty; choose another --out, or --force to overwrite the scaffold's "
            "files"
        )
    written = []
    for rel, text in render(names).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return root, written


# -- templates (string.Template: $entry, $dist, $module, $Cls, $metaloss_version) ------------------------------
PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A metaloss plugin: fusion network, loss generator, task and dataset '$entry'."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["metaloss>=$metaloss_version", "torch>=2.4", "pydantic>=2.6"]

[project.optional-dependencies]
test = ["pytest>=8"]

# metaloss finds the plugins through these entry points; the name on the left is what an experiment's
# `name = ...` refers to.  Delete the lines of the plugin kinds you do not provide.
[project.entry-points."metaloss.fusion"]
$entry = "$module.fusion:${Cls}Fusion"

[project.entry-points."metaloss.loss_generators"]
$entry = "$module.loss_generator:${Cls}LossGenerator"

[project.entry-points."metaloss.tasks"]
$entry = "$module.task:${Cls}Task"

[project.entry-points."metaloss.datasets"]
$entry = "$module.dataset:${Cls}Dataset"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# contract warnings (parameters without gradient, ignored map keys) fail the tests
filterwarnings = ["error::metaloss.testing.PluginContractWarning"]
"""

README = """\
# $dist

A metaloss plugin package, created by `metaloss new-plugin $entry`. It registers,
under the name `$entry`, one plugin of each kind:

| group | object | what it is |
|---|---|---|
| `metaloss.fusion` | `$module.fusion:${Cls}Fusion` | fusion network F(ir, vi) -> fused |
| `metaloss.loss_generators` | `$module.loss_generator:${Cls}LossGenerator` | per-pixel weights of the fusion loss |
| `metaloss.tasks` | `$module.task:${Cls}Task` | the meta-objective: segmentation of the fused image |
| `metaloss.datasets` | `$module.dataset:${Cls}Dataset` | synthetic image pairs with a mask |

Each is a minimal working implementation: replace the bodies with yours and keep the contracts, which
metaloss's `docs/plugins.md` describes and `metaloss.testing` checks. A plugin's constructor keyword
arguments are its config keys (type annotations and `Annotated[int, Field(ge=1)]` ranges are validated).

```bash
pip install -e ".[test]"        # into the environment that has metaloss
metaloss plugins                # lists $entry in each group, from $dist
pytest                          # the contract checks of tests/test_$entry.py
metaloss run $entry.toml        # a short experiment with the four plugins
```
"""

GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
runs/
"""

EXPERIMENT = """\
# An experiment with the plugins of $dist (after `pip install -e .`):
#   metaloss run $entry.toml
#   metaloss run $entry.toml --check      # the resolved config, every plugin option included
name = "$entry"
seed = 0
device = "auto"

[data]
name = "$entry"
num_images = 16
size = 48
crop_size = 32

[val_data]
name = "$entry"
num_images = 4
size = 48

[learner]
name = "$entry"

[loss_generator]
name = "$entry"

[objective]
name = "$entry"          # num_classes is taken from the dataset

[meta]
epochs = 2
meta_steps = 4
learner_steps = 0        # one pass over the training data
outer_lr = 1e-3

[optim]
learner_lr = 1e-3
objective_lr = 1e-3

[eval]
num_images = 4
metrics = ["EN", "SD", "SF", "AG"]
"""

INIT = '''\
"""$dist: metaloss plugins registered under the name '$entry' (see pyproject.toml)."""

from $module.dataset import ${Cls}Dataset
from $module.fusion import ${Cls}Fusion
from $module.loss_generator import ${Cls}LossGenerator
from $module.task import ${Cls}Scores, ${Cls}Task

__all__ = ["${Cls}Dataset", "${Cls}Fusion", "${Cls}LossGenerator", "${Cls}Scores", "${Cls}Task"]
'''

FUSION = '''\
"""The fusion network F_theta (metaloss.protocols.FusionNet).

Contract (checked by metaloss.testing.check_fusion_net):
  forward(ir, vi): ir, vi [B, 1, H, W] float in [0, 1], any H and W -> fused [B, 1, H, W] in [0, 1],
  same dtype and device as the input; differentiable twice w.r.t. the parameters (no detach(), .data
  or torch.no_grad(); operators with a double backward): the meta-step differentiates an SGD step.
  Keep constants in buffers (register_buffer), create tensors with device=x.device.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn


class ${Cls}Fusion(nn.Module):
    """Concat(ir, vi) -> ``depth`` x (3x3 conv, LeakyReLU) of ``width`` channels -> 3x3 conv -> sigmoid."""

    def __init__(self, width: Annotated[int, Field(ge=1)] = 16, depth: Annotated[int, Field(ge=1)] = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 2
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        return torch.sigmoid(self.body(torch.cat([ir, vi], dim=1)))
'''

LOSS_GENERATOR = '''\
"""The loss generator G_phi (metaloss.protocols.LossGenerator).

Contract (checked by metaloss.testing.check_loss_generator and check_meta_gradient):
  forward(ir, vi) -> {"intensity": w}, w [B, 2, H, W] >= 0 (channel 0 weights the infrared source,
  channel 1 the visible one), same dtype and device as the input, differentiable w.r.t. the
  parameters.  Optionally "gradient": v [B, 2, H, W], per-source weights of the gradient term.
  The fusion loss it weights (metaloss.losses.fusion_loss):
      L_f = mean(w_ir (F - ir)^2) + mean(w_vi (F - vi)^2) + alpha * L_grad
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn


class ${Cls}LossGenerator(nn.Module):
    """(ir, vi) -> 3x3 conv, LeakyReLU, 3x3 conv -> 2 logits / ``temperature`` -> softmax over the sources."""

    def __init__(self, width: Annotated[int, Field(ge=1)] = 8, temperature: Annotated[float, Field(gt=0)] = 1.0):
        super().__init__()
        self.temperature = temperature
        self.body = nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2, 3, padding=1),
        )

    def forward(self, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        logits = self.body(torch.cat([ir, vi], dim=1)) / self.temperature
        return {"intensity": torch.softmax(logits, dim=1)}
'''

TASK = '''\
"""The task T_psi, the meta-objective (metaloss.protocols.Task, TaskEvaluator).

Contract (checked by metaloss.testing.check_task):
  targets: the label keys of a batch the task uses (its dataset's: here "mask"); () for none.
  view_targets(targets, view): the targets follow the task's images (crop, resize, modality swap).
  forward(fused): fused [B, 1, H, W] in [0, 1] -> outputs (anything; here logits [B, K, H, W]).
  loss(outputs, batch) -> a 0-dim tensor, differentiable w.r.t. outputs: it is the only way back from
  the meta-objective to the fusion network and the loss generator.  The batch holds task_ir, task_vi
  [B, 1, H, W] (the sources at the task's size) and the targets (mask [B, H, W] long).
  evaluator() -> a fresh object with update(outputs, batch) and compute() -> dict[str, float].
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metaloss.protocols import TargetView


class ${Cls}Task(nn.Module):
    """Semantic segmentation of the fused image: a small dilated CNN, trained from scratch, cross-entropy."""

    #: the label keys it trains on (the core drops the others)
    targets = ("mask",)
    #: options left unset (None) are filled from the dataset attribute named here
    dataset_fields = {"num_classes": "num_classes"}

    def __init__(
        self, num_classes: int | None = None, width: Annotated[int, Field(ge=1)] = 16, ignore_index: int = 255
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("objective.num_classes is not set and the dataset does not provide it")
        if num_classes < 2:
            raise ValueError(f"objective.num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)

    def view_targets(self, targets: dict[str, Any], view: TargetView) -> dict[str, Any]:
        """The masks [B, H, W] as the task's images: the crop window, nearest resize, repeated with the batch."""
        mask = targets["mask"]
        if view.crop is not None:
            top, left, h, w = view.crop
            mask = mask[..., top : top + h, left : left + w]
        if tuple(mask.shape[-2:]) != view.size:
            mask = F.interpolate(mask[:, None].float(), size=view.size, mode="nearest")[:, 0].long()
        return {**targets, "mask": torch.cat([mask] * view.repeat)}

    def loss(self, outputs: Tensor, batch: dict[str, Any]) -> Tensor:
        return F.cross_entropy(outputs, batch["mask"], ignore_index=self.ignore_index)

    def evaluator(self) -> "${Cls}Scores":
        return ${Cls}Scores(self.num_classes, self.ignore_index)


class ${Cls}Scores:
    """Pixel accuracy and mean IoU (classes present in the prediction or the target) over all images."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, outputs: Tensor, batch: dict[str, Any]) -> None:
        pred, true = outputs.argmax(1).flatten().cpu(), batch["mask"].flatten().cpu()
        keep = true != self.ignore_index
        index = true[keep] * self.num_classes + pred[keep]
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp, total = c.diag(), c.sum()
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        return {
            "mIoU": float((tp[present] / union[present]).mean()) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        }
'''

DATASET = '''\
"""The dataset (metaloss.protocols.PairedDataset).

Contract (checked by metaloss.testing.check_dataset):
  __getitem__(i) -> {"name": str, "ir": [1, H, W], "vi": [1, H, W]} float in [0, 1], plus labels:
  "mask" [H, W] int64 class indices (ignore_index for unlabelled pixels) or "boxes" [N, 5] float =
  class, cx, cy, w, h normalised to [0, 1].  Deterministic; dataset[len(dataset)] raises IndexError.
  num_classes / class_names describe the mask classes (background included); num_box_classes /
  box_class_names the box classes.  The constructor takes split ("train", "val" or "test"), which the
  experiment passes itself; its other keyword arguments are the config keys of [data].
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset


class ${Cls}Dataset(Dataset):
    """``num_images`` synthetic ``size`` x ``size`` pairs: a warm disk (class 1) that only the infrared
    image shows, on a textured visible image.  Replace ``__getitem__`` with reading your own pairs."""

    class_names = ("background", "disk")
    num_classes = 2
    ignore_index = 255

    def __init__(
        self,
        num_images: Annotated[int, Field(ge=1)] = 32,
        size: Annotated[int, Field(ge=16)] = 64,
        seed: int = 0,
        split: Literal["train", "val", "test"] = "train",
    ):
        self.num_images, self.size, self.seed, self.split = num_images, size, seed, split

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} pairs")
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.split}/{index}".encode()))
        n = self.size
        axis = torch.arange(n, dtype=torch.float32)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        cx, cy = (torch.rand(2, generator=g) * 0.6 + 0.2) * n
        radius = float(torch.rand((), generator=g) * 0.15 + 0.1) * n
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2).long()
        angle, freq = torch.rand(2, generator=g) * torch.tensor([3.14159, 0.5]) + torch.tensor([0.0, 0.2])
        texture = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)))
        noise = torch.rand(2, n, n, generator=g) * 0.04
        ir = (0.3 + 0.5 * mask + noise[0]).clamp(0, 1)
        vi = (0.5 + 0.25 * texture + noise[1]).clamp(0, 1)
        return {"name": f"{self.split}_{index:05d}.png", "ir": ir[None], "vi": vi[None], "mask": mask}
'''

TESTS = '''\
"""The plugins of $dist against metaloss's contracts (metaloss.testing).  Run: pytest"""

import importlib.metadata as md

import pytest

from metaloss import testing
from $module import ${Cls}Dataset, ${Cls}Fusion, ${Cls}LossGenerator, ${Cls}Task


def test_fusion_net():
    testing.check_fusion_net(${Cls}Fusion())


def test_loss_generator():
    testing.check_loss_generator(${Cls}LossGenerator(), sums_to_one=True)


def test_task():
    # on metaloss's synthetic scenes (3 mask classes) and on this package's own data
    testing.check_task(${Cls}Task(num_classes=testing.SYNTHETIC_NUM_CLASSES))
    dataset = ${Cls}Dataset(num_images=2, size=32)
    testing.check_task(${Cls}Task(num_classes=dataset.num_classes), testing.batch_from_dataset(dataset))


@pytest.mark.parametrize("split", ["train", "val"])
def test_dataset(split):
    testing.check_dataset(${Cls}Dataset(num_images=4, size=32, split=split))


def test_meta_gradient():
    """The loss generator gets a finite, non-zero meta-gradient through this fusion network and task."""
    dataset = ${Cls}Dataset(num_images=4, size=32)
    batches = (testing.batch_from_dataset(dataset, [0, 1]), testing.batch_from_dataset(dataset, [2, 3]))
    report = testing.check_meta_gradient(
        ${Cls}LossGenerator(), fusion=${Cls}Fusion(), task=${Cls}Task(num_classes=dataset.num_classes), batch=batches
    )
    assert report.norm > 0


def test_meta_gradient_matches_a_finite_difference():
    testing.check_meta_gradient(${Cls}LossGenerator(), fusion=${Cls}Fusion(width=4, depth=1), gradcheck=True)


def test_entry_points():
    """Every entry point of the installed package loads, builds from its defaults and passes its check."""
    try:
        md.distribution("$dist")
    except md.PackageNotFoundError:
        pytest.skip("$dist is not installed: pip install -e .")
    assert sorted(testing.check_distribution("$dist")) == [
        "datasets:$entry", "fusion:$entry", "loss_generators:$entry", "tasks:$entry"
    ]
'''
