"""metaloss.testing: the shipped plugins pass every check; deliberately broken mini plugins fail with the
message that names the violated contract."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaloss import testing
from metaloss.testing import PluginContractError, PluginContractWarning


# -- the shipped plugins pass ------------------------------------------------------------------------------------------
def _fusion(name):
    from metaloss import registry

    return registry.load("fusion", name)()


@pytest.mark.parametrize("name", ["dense", "restormer"])
def test_shipped_fusion_nets_pass(name):
    net = _fusion(name)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    testing.check_fusion_net(net)
    # the object passed in is left as it was
    assert not net.training and all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("conv", {"sums_to_one": True}),
        ("tdfusion", {"sums_to_one": True}),
        ("sigmoid", {}),
        ("refusion", {"sums_to_one": True}),
        ("fixed", {"trainable": False, "sums_to_one": True}),
    ],
)
def test_shipped_loss_generators_pass(name, kwargs):
    from metaloss import registry

    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginContractWarning)
        testing.check_loss_generator(registry.load("loss_generators", name)(), **kwargs)


def test_shipped_reconstruction_task_passes():
    from metaloss_refusion.reconstruction import ReconstructionTask

    testing.check_task(ReconstructionTask(width=8, blocks=1))


def test_shipped_segmentation_task_passes():
    pytest.importorskip("segmentation_models_pytorch")
    from metaloss_tdfusion.segmentation import SegmentationTask

    testing.check_task(SegmentationTask(num_classes=testing.SYNTHETIC_NUM_CLASSES))


def test_shipped_detection_task_passes():
    pytest.importorskip("ultralytics")
    from metaloss_tdfusion.detection import DetectionTask

    testing.check_task(DetectionTask(num_classes=testing.SYNTHETIC_NUM_BOX_CLASSES))


def test_shipped_datasets_pass(tmp_path):
    from metaloss.data.benchmarks import PairFolders
    from metaloss.data.synthetic import SyntheticScenes

    testing.check_dataset(SyntheticScenes(num_images=3, height=32, width=40))
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        for sub in ("ir", "vi"):
            cv2.imwrite(str(tmp_path / sub / f"{i}.png"), rng.integers(0, 256, (24, 32), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), rng.integers(0, 2, (24, 32), dtype=np.uint8))
    testing.check_dataset(PairFolders(root=str(tmp_path), masks="masks", class_names=("background", "thing")))


def test_meta_gradient_of_shipped_generators_is_finite_and_nonzero():
    from metaloss.models.conv_generator import ConvLossGenerator
    from metaloss_refusion.loss_generator import ReFusionLossGenerator
    from metaloss_refusion.reconstruction import ReconstructionTask

    report = testing.check_meta_gradient(ConvLossGenerator(width=4))
    assert (
        report.norm > 0
        and not report.zero
        and set(report.parameter_norms) == {n for n, _ in ConvLossGenerator(width=4).named_parameters()}
    )
    report = testing.check_meta_gradient(
        ReFusionLossGenerator(), task=ReconstructionTask(width=4, blocks=1), size=(1, 24, 24)
    )
    assert report.norm > 0 and report.outer_loss > 0


def test_meta_gradient_through_the_segmentation_task():
    pytest.importorskip("segmentation_models_pytorch")
    from metaloss.models.conv_generator import ConvLossGenerator
    from metaloss_tdfusion.segmentation import SegmentationTask

    assert testing.check_meta_gradient(ConvLossGenerator(width=4), task=SegmentationTask(num_classes=3)).norm > 0


def test_meta_gradient_agrees_with_finite_differences():
    from metaloss.models.conv_generator import ConvLossGenerator

    report = testing.check_meta_gradient(ConvLossGenerator(width=4), gradcheck=True)
    assert report.directional_derivative == pytest.approx(report.finite_difference, rel=1e-3)
    assert report.directional_derivative != 0


def test_synthetic_batch_layout():
    batch = testing.synthetic_batch((2, 20, 24), targets=("mask",))
    assert set(batch) == {"name", "ir", "vi", "task_ir", "task_vi", "mask"}
    assert batch["ir"].shape == (2, 1, 20, 24) and batch["mask"].shape == (2, 20, 24)
    assert int(batch["mask"].max()) < testing.SYNTHETIC_NUM_CLASSES
    assert "boxes" in testing.synthetic_batch(targets=None)
    assert testing.synthetic_batch(targets=()).keys().isdisjoint({"mask", "boxes"})


# -- broken fusion networks --------------------------------------------------------------------------------------------
class Fusion(nn.Module):
    """A correct tiny fusion network; the broken ones below change one thing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def logits(self, ir, vi):
        return self.conv(torch.cat([ir, vi], dim=1))

    def forward(self, ir, vi):
        return torch.sigmoid(self.logits(ir, vi))


def test_the_reference_mini_fusion_net_passes():
    testing.check_fusion_net(Fusion())


class TwoChannels(Fusion):
    def forward(self, ir, vi):
        return torch.sigmoid(torch.cat([self.logits(ir, vi)] * 2, dim=1))


class NoSigmoid(Fusion):
    def forward(self, ir, vi):
        return self.logits(ir, vi) * 10


class Float32Always(Fusion):
    def forward(self, ir, vi):
        return super().forward(ir, vi).float()


class CpuTensorInside(Fusion):
    def forward(self, ir, vi):
        return torch.sigmoid(self.logits(ir, vi) + torch.zeros(ir.shape))


class ConstantNotABuffer(Fusion):
    def __init__(self):
        super().__init__()
        self.scale = torch.ones(1, 1, 1, 1)  # a plain attribute: .to(device) does not move it

    def forward(self, ir, vi):
        return torch.sigmoid(self.logits(ir, vi) * self.scale)


class Detached(Fusion):
    def forward(self, ir, vi):
        return super().forward(ir, vi).detach()


class CachedWeights(Fusion):
    """Holds its weight in a list: torch.func.functional_call swaps module attributes, not this reference."""

    def __init__(self):
        super().__init__()
        self.cache = [self.conv.weight, self.conv.bias]

    def forward(self, ir, vi):
        return torch.sigmoid(F.conv2d(torch.cat([ir, vi], 1), self.cache[0], self.cache[1], padding=1))


class CountsCalls(Fusion):
    def __init__(self):
        super().__init__()
        self.calls = torch.zeros(())

    def forward(self, ir, vi):
        self.calls = self.calls + 1  # state in a plain attribute, rewritten under functional_call
        return super().forward(ir, vi)


class InPlaceInput(Fusion):
    def forward(self, ir, vi):
        ir.mul_(0.5)
        return super().forward(ir, vi)


class NaNOutput(Fusion):
    def forward(self, ir, vi):
        return super().forward(ir, vi) * (ir.sum() / 0) * 0


class _NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad.detach()  # not differentiable itself: cuts the second-order path


class FirstOrderOnly(Fusion):
    def forward(self, ir, vi):
        return torch.sigmoid(_NoDoubleBackward.apply(self.logits(ir, vi)))


class NoParameters(nn.Module):
    def forward(self, ir, vi):
        return (ir + vi) / 2


class NotAModule:
    def forward(self, ir, vi):
        return (ir + vi) / 2


@pytest.mark.parametrize(
    "net, message",
    [
        (NotAModule(), r"must be a torch\.nn\.Module"),
        (NoParameters(), r"has no parameter that requires grad"),
        (
            TwoChannels(),
            r"must return \[B, 1, H, W\] = \[2, 1, 19, 27\] for input \[2, 1, 19, 27\] float32 on cpu; got \[2, 2, 19, "
            r"27\]",
        ),
        (NoSigmoid(), r"values must be \[0\.0, 1\.0\]; got min"),
        (Float32Always(), r"output dtype torch\.float32 does not follow the input's torch\.float64"),
        (CpuTensorInside(), r"uses a tensor on another device than its input .*meta"),
        (ConstantNotABuffer(), r"register_buffer"),
        (Detached(), r"does not require grad"),
        (CachedWeights(), r"does not depend on the parameters passed through torch\.func\.functional_call"),
        (CountsCalls(), r"changed the module's own state: calls"),
        (InPlaceInput(), r"modified its inputs in place"),
        (NaNOutput(), r"returned NaN or inf"),
        (FirstOrderOnly(), r"second order"),
    ],
    ids=lambda v: None if isinstance(v, str) else type(v).__name__,
)
def test_broken_fusion_nets_fail_with_the_contract(net, message):
    with pytest.raises(PluginContractError, match=message) as info:
        testing.check_fusion_net(net)
    assert str(info.value).startswith(f"{type(net).__name__} (fusion network): ")
    assert isinstance(info.value, AssertionError)


def test_unused_parameters_warn():
    class Unused(Fusion):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(2, 2)

    with pytest.warns(PluginContractWarning, match=r"spare\.weight, spare\.bias receive no gradient"):
        testing.check_fusion_net(Unused(), dtypes=(torch.float32,))


# -- broken loss generators --------------------------------------------------------------------------------------------
class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def logits(self, ir, vi):
        return self.conv(torch.cat([ir, vi], dim=1))

    def forward(self, ir, vi):
        return {"intensity": torch.softmax(self.logits(ir, vi), dim=1)}


def test_the_reference_mini_generator_passes():
    testing.check_loss_generator(Generator(), sums_to_one=True)
    assert testing.check_meta_gradient(Generator(), fusion=Fusion()).norm > 0


class ReturnsTensor(Generator):
    def forward(self, ir, vi):
        return torch.softmax(self.logits(ir, vi), dim=1)


class WrongKey(Generator):
    def forward(self, ir, vi):
        return {"weights": torch.softmax(self.logits(ir, vi), dim=1)}


class OneChannel(Generator):
    def forward(self, ir, vi):
        return {"intensity": torch.sigmoid(self.logits(ir, vi)[:, :1])}


class Negative(Generator):
    def forward(self, ir, vi):
        return {"intensity": torch.tanh(self.logits(ir, vi))}


class DetachedMaps(Generator):
    def forward(self, ir, vi):
        return {"intensity": torch.softmax(self.logits(ir, vi), dim=1).detach()}


class Sigmoid(Generator):
    def forward(self, ir, vi):
        return {"intensity": torch.sigmoid(self.logits(ir, vi))}


class BadGradientMap(Generator):
    def forward(self, ir, vi):
        w = torch.softmax(self.logits(ir, vi), dim=1)
        return {"intensity": w, "gradient": w[:, :1]}


class Constant(Generator):
    def forward(self, ir, vi):
        return {"intensity": torch.full((ir.shape[0], 2, *ir.shape[-2:]), 0.5)}


@pytest.mark.parametrize(
    "gen, kwargs, message",
    [
        (ReturnsTensor(), {}, r"must return a mapping"),
        (WrongKey(), {}, r"must return the key 'intensity'.*\['weights'\]"),
        (OneChannel(), {}, r"\['intensity'\] must return \[B, 2, H, W\]"),
        (Negative(), {}, r"\['intensity'\] values must be >= 0\.0"),
        (DetachedMaps(), {}, r"does not require grad"),
        (Sigmoid(), {"sums_to_one": True}, r"must sum to 1 per pixel"),
        (BadGradientMap(), {}, r"\['gradient'\] must return \[B, 2, H, W\]"),
        (NoParameters(), {}, r"nothing to learn; pass trainable=False"),
        (Constant(), {"trainable": False}, r"output dtype torch\.float32 does not follow the input's torch\.float64"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_broken_loss_generators_fail_with_the_contract(gen, kwargs, message):
    with pytest.raises(PluginContractError, match=message) as info:
        testing.check_loss_generator(gen, **kwargs)
    assert str(info.value).startswith(f"{type(gen).__name__} (loss generator): ")


def test_ignored_map_keys_warn():
    class Extra(Generator):
        def forward(self, ir, vi):
            return {**super().forward(ir, vi), "debug": ir}

    with pytest.warns(PluginContractWarning, match=r"\['debug'\] are ignored"):
        testing.check_loss_generator(Extra(), dtypes=(torch.float32,))


# -- broken tasks ------------------------------------------------------------------------------------------------------
class Task(nn.Module):
    targets = ("mask",)

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, num_classes, 3, padding=1)

    def forward(self, fused):
        return self.conv(fused)

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["mask"])

    def evaluator(self):
        return Accuracy()


class Accuracy:
    def __init__(self):
        self.right = self.total = 0

    def update(self, outputs, batch):
        self.right += int((outputs.argmax(1) == batch["mask"]).sum())
        self.total += batch["mask"].numel()

    def compute(self):
        return {"accuracy": self.right / max(self.total, 1)}


def test_the_reference_mini_task_passes():
    testing.check_task(Task())


def test_a_task_with_its_own_label_key_is_checked_on_a_batch_that_has_it():
    """Targets are the plugin's business (the core crops and resizes them through its hook): any key."""

    class MaskAsLabels(Task):
        targets = ("labels",)

        def loss(self, outputs, batch):
            return F.cross_entropy(outputs, batch["labels"])

        def evaluator(self):
            return _LabelsAccuracy()

    batch = testing.synthetic_batch((2, 32, 32), targets=("mask",))
    batch["labels"] = batch["mask"]
    with pytest.raises(PluginContractError, match=r"\['labels'\] that the batch given does not carry"):
        testing.check_task(MaskAsLabels(), batch=testing.synthetic_batch((2, 32, 32), targets=("mask",)))
    testing.check_task(MaskAsLabels(), batch=batch)


class _LabelsAccuracy(Accuracy):
    def update(self, outputs, batch):
        self.right += int((outputs.argmax(1) == batch["labels"]).sum())
        self.total += batch["labels"].numel()

    assert testing.check_meta_gradient(Generator(), task=Task()).norm > 0


class PerPixelLoss(Task):
    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["mask"], reduction="none")


class DetachedLoss(Task):
    def loss(self, outputs, batch):
        return F.cross_entropy(outputs.detach(), batch["mask"])


class IgnoresInput(Task):
    def forward(self, fused):
        return self.conv.bias[None, :, None, None].expand(fused.shape[0], -1, *fused.shape[-2:])


class UnknownTarget(Task):
    targets = ("labels",)


class TensorMetrics(Task):
    def evaluator(self):
        class TensorAccuracy(Accuracy):
            def compute(self):
                return {"accuracy": torch.tensor(0.5)}

        return TensorAccuracy()


class SharedEvaluator(Task):
    def __init__(self):
        super().__init__()
        self._ev = Accuracy()

    def evaluator(self):
        return self._ev


class NoEvaluator(Task):
    def evaluator(self):
        return None


class PythonFloatLoss(Task):
    def loss(self, outputs, batch):
        return float(F.cross_entropy(outputs, batch["mask"]).detach())


class MissingLabel(Task):
    targets = ("boxes",)


@pytest.mark.parametrize(
    "task, message",
    [
        (PerPixelLoss(), r"must return a 0-dim floating tensor \(a scalar\); got Tensor \[2, 32, 32\]"),
        (PythonFloatLoss(), r"must return a 0-dim floating tensor \(a scalar\); got float"),
        (DetachedLoss(), r"does not require grad"),
        (IgnoresInput(), r"not differentiable w\.r\.t\. the fused image"),
        (UnknownTarget(), r"label key\(s\) \['labels'\] that synthetic batches do not have"),
        (MissingLabel(), r"loss\(outputs, batch\) raised KeyError: 'mask' \(batch keys"),
        (TensorMetrics(), r"plain Python numbers"),
        (SharedEvaluator(), r"fresh evaluator"),
        (NoEvaluator(), r"must return an object with update\(outputs, batch\) and compute\(\)"),
        (NoParameters(), r"has no parameter that requires grad"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_broken_tasks_fail_with_the_contract(task, message):
    with pytest.raises(PluginContractError, match=message) as info:
        testing.check_task(task)
    assert str(info.value).startswith(f"{type(task).__name__} (task): ")


def test_task_without_targets_warns():
    class NoTargets(Task):
        targets = None

    with pytest.warns(PluginContractWarning, match="no `targets` attribute"):
        testing.check_task(NoTargets())


# -- broken datasets ---------------------------------------------------------------------------------------------------
class Dataset:
    num_classes = 2
    class_names = ("background", "thing")

    def __init__(self, n=3):
        self.n = n

    def __len__(self):
        return self.n

    def item(self, index):
        g = torch.Generator().manual_seed(index)
        ir, vi = torch.rand(2, 1, 16, 20, generator=g)
        return {"name": f"{index}.png", "ir": ir, "vi": vi, "mask": (ir[0] > 0.5).long()}

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.item(index)


def _dataset(item=None, **attrs):
    ds = Dataset()
    if item is not None:
        ds.item = lambda index, base=ds.item: item(base(index))
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


class Wraps(Dataset):
    def __getitem__(self, index):
        return self.item(index % self.n)


class Random(Dataset):
    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return {**self.item(index), "ir": torch.rand(1, 16, 20)}


def test_the_reference_mini_dataset_passes():
    testing.check_dataset(Dataset())
    batch = testing.batch_from_dataset(Dataset(), targets=("mask",))
    assert batch["task_ir"].shape == (2, 1, 16, 20)
    testing.check_task(Task(num_classes=2), batch)


@pytest.mark.parametrize(
    "ds, message",
    [
        (
            _dataset(lambda it: {**it, "ir": it["ir"][0]}),
            r"dataset\[0\]\['ir'\] must be \[1, H, W\] \(the Y channel\), got \[16, 20\]",
        ),
        (
            _dataset(lambda it: {**it, "vi": it["vi"] * 255}),
            r"\['vi'\] values must be in \[0, 1\] \(divide 8-bit images by 255\)",
        ),
        (_dataset(lambda it: {**it, "mask": it["mask"].float()}), r"\['mask'\] must be an int64"),
        (_dataset(lambda it: {**it, "mask": it["mask"] * 5}), r"value\(s\) \[5\] outside \[0, num_classes=2\)"),
        (_dataset(lambda it: {**it, "vi": it["vi"][:, :8]}), r"must have the same size"),
        (_dataset(lambda it: {k: v for k, v in it.items() if k != "name"}), r"lacks key\(s\) \['name'\]"),
        (_dataset(lambda it: {**it, "boxes": torch.zeros(1, 5)}), r"`num_box_classes` is None"),
        (
            _dataset(lambda it: {**it, "boxes": torch.tensor([[0, 0.5, 0.5, 2.0, 0.1]])}, num_box_classes=1),
            r"normalised to \[0, 1\]",
        ),
        (_dataset(class_names=("a",)), r"`class_names` must be 2 strings"),
        (Wraps(), r"dataset\[len\(dataset\)\] must raise IndexError"),
        (Random(), r"differs between two calls \(\['ir'\]\)"),
        (_dataset(n=0), r"len\(dataset\) must be an int >= 1"),
    ],
)
def test_broken_datasets_fail_with_the_contract(ds, message):
    with pytest.raises(PluginContractError, match=message) as info:
        testing.check_dataset(ds)
    assert str(info.value).startswith(f"{type(ds).__name__} (dataset): ")


# -- broken meta-gradients ---------------------------------------------------------------------------------------------
class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad  # twice the true derivative


def test_zero_meta_gradient_is_refused():
    class Cut(Generator):
        def forward(self, ir, vi):
            return {"intensity": torch.softmax(self.logits(ir, vi) * 0, dim=1)}

    with pytest.raises(PluginContractError, match="the meta-gradient is exactly zero"):
        testing.check_meta_gradient(Cut())


def test_wrong_backward_is_found_by_gradcheck():
    class Wrong(Generator):
        def forward(self, ir, vi):
            return {"intensity": torch.softmax(_WrongBackward.apply(self.logits(ir, vi)), dim=1)}

    testing.check_meta_gradient(Wrong())  # finite and non-zero, but wrong:
    with pytest.raises(PluginContractError, match="disagrees with a finite difference"):
        testing.check_meta_gradient(Wrong(), gradcheck=True)


def test_meta_gradient_needs_generator_parameters():
    with pytest.raises(PluginContractError, match="no parameter that requires grad"):
        testing.check_meta_gradient(NoParameters())


def test_check_plugin_builds_from_the_registry_with_options():
    net = testing.check_plugin("fusion", "dense", {"width": 4, "growth": 4, "layers": 1})
    assert sum(p.numel() for p in net.parameters()) < 1000
    with pytest.raises(PluginContractError, match=r"options \{'width': 0.5\} do not validate: width"):
        testing.check_plugin("fusion", "dense", {"width": 0.5})
    with pytest.raises(PluginContractError, match=r"root: Field required.*skip=\['datasets:folders'\]"):
        testing.check_plugin("datasets", "folders")


def test_check_distribution_of_an_unknown_package():
    with pytest.raises(PluginContractError, match="not installed"):
        testing.check_distribution("metaloss-no-such-plugin")
