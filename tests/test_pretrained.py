"""The shipped pretrained models: present, small, loadable, and better than averaging on real pairs."""

from __future__ import annotations

import importlib.resources as resources

import pytest
import torch

import metaloss.pretrained as pretrained
from metaloss import metrics
from metaloss.data.images import load_pair
from metaloss.deploy import fuse_images, load_model

# Plain averaging of the two sources (cddfuse profile): tno25 VIF 0.573, Qabf 0.356 (docs/pretrained.md).
AVERAGE_TNO = {"VIF": 0.573, "Qabf": 0.356}


@pytest.mark.parametrize("model", sorted(pretrained.MODELS))
def test_each_model_ships_as_package_data_and_loads(model):
    resource = pretrained.default_checkpoint(name=pretrained.model_file(model))
    assert resource is not None, f"metaloss/pretrained/{model}.pt is missing"
    with resources.as_file(resource) as path:
        assert path.stat().st_size < 2 * 2**20  # weights only, no optimizer state
    loaded = load_model(None, model=model, generator=True)
    assert sum(p.numel() for p in loaded.fusion.parameters()) == 59_856
    assert not any(p.requires_grad for p in loaded.fusion.parameters())


def test_default_model_is_fused_without_the_stretch():
    """The default model's output is calibrated (its network starts from the sources' mean) and was
    chosen unstretched (docs/refusion.md); the mfif, mef and medical models keep the stretch."""
    assert load_model(None).stretch is False
    assert load_model(None, model="mfif").stretch is True


@pytest.mark.shared_data
def test_default_model_fuses_tno_pairs_better_than_averaging(shared_data):
    torch.set_num_threads(1)
    model = load_model(None)
    tno = shared_data / "tno25"
    names = ["01", "10", "17"]
    scores: dict[str, list[float]] = {}
    for name in names:
        pair = load_pair(next((tno / "ir").glob(name + ".*")), next((tno / "vi").glob(name + ".*")))
        fused = torch.from_numpy(fuse_images(model, pair).image).float()
        ir, vi = (pair.ir.y[0] * 255).round(), (pair.vi.y[0] * 255).round()
        values = metrics.evaluate(
            fused[None, None], ir[None, None], vi[None, None], profile="cddfuse", metrics=["VIF", "Qabf"]
        )
        for key, value in values.items():
            scores.setdefault(key, []).append(float(value))
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    assert means["VIF"] > AVERAGE_TNO["VIF"] and means["Qabf"] > AVERAGE_TNO["Qabf"], means


#: A few real pairs per task model, none of them trained on: (folder, source a, source b, names).
#: mfif: Lytro (kept out of its training); mef: scenes of its held-out split (BalancedRock is a TIFF);
#: medical: CDDFuse's MRI-CT and MRI-PET test pairs (not in the Harvard training collection).
TASK_PAIRS = {
    "mfif": [("mfif", "A", "B", ["lytro_01", "lytro_07", "lytro_15"])],
    "mef": [("mef", "under", "over", ["BalancedRock", "Kluki", "Studio"])],
    "medical": [
        ("medical/mri_ct", "CT", "MRI", ["11", "16"]),
        ("medical/mri_pet", "PET", "MRI", ["11", "23"]),
    ],
}


def _mean_average_and_model(shared_data, model_name):
    """Qabf (cddfuse) of the model's fused images and of the plain average, over the model's pairs;
    and whether each fused image came out in colour when a source is colour."""
    from metaloss.data.images import ImagePair

    torch.set_num_threads(1)
    model = load_model(None, model=model_name)
    fused_q, average_q, colours = [], [], []
    for folder, a, b, names in TASK_PAIRS[model_name]:
        for name in names:
            pair: ImagePair = load_pair(
                next((shared_data / folder / a).glob(name + ".*")), next((shared_data / folder / b).glob(name + ".*"))
            )
            image = fuse_images(model, pair).image
            colours.append((image.ndim == 3) == pair.is_color)
            ya, yb = (pair.ir.y * 255).round(), (pair.vi.y * 255).round()
            grey = image if image.ndim == 2 else (image @ torch.tensor([0.299, 0.587, 0.114]).numpy())
            fused = torch.from_numpy(grey.astype("float32")).round()
            q = metrics.evaluate(fused[None, None], ya[None], yb[None], profile="cddfuse", metrics=["Qabf"])["Qabf"]
            avg = ((ya + yb) / 2).round()
            q_avg = metrics.evaluate(avg[None], ya[None], yb[None], profile="cddfuse", metrics=["Qabf"])["Qabf"]
            fused_q.append(float(q))
            average_q.append(float(q_avg))
    return sum(fused_q) / len(fused_q), sum(average_q) / len(average_q), colours


@pytest.mark.shared_data
@pytest.mark.parametrize("model_name", sorted(TASK_PAIRS))
def test_each_task_model_beats_averaging_on_real_pairs_and_keeps_colour(shared_data, model_name):
    fused, average, colours = _mean_average_and_model(shared_data, model_name)
    assert all(colours), "a colour source must give a colour fused image, two grey sources a grey one"
    assert fused > average, f"{model_name}: Qabf {fused:.3f} is not above the plain average's {average:.3f}"


def test_each_model_says_which_source_goes_where():
    assert set(pretrained.SOURCES) == set(pretrained.MODELS)
    assert load_model(None, model="mfif").sources == ("near focus", "far focus")
    assert load_model(None, model="medical").sources[1] == "MRI"
