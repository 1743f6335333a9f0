"""`metaloss.load` and `FusionModel.fuse` (metaloss.deploy.model): the Python API fuses as `metaloss fuse` does."""

import numpy as np
import pytest
import torch

import metaloss
from metaloss import cli
from metaloss.data.io import read_image
from metaloss.deploy.fuse import write_png
from metaloss.deploy.model import InferenceError

H, W = 40, 56


def _smooth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (H // 4, W // 4)).astype(np.float32)
    return np.kron(coarse, np.ones((4, 4), np.float32)).astype(np.uint8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A grey infrared image, a colour and a grey visible one, as files and as arrays."""
    folder = tmp_path_factory.mktemp("pair")
    images = {
        "ir": _smooth(0),
        "vi": np.stack([_smooth(1), _smooth(2), _smooth(3)], axis=-1),
        "vi_grey": _smooth(4),
    }
    return {k: (write_png(folder / f"{k}.png", v), v) for k, v in images.items()}


@pytest.fixture(scope="module")
def model():
    return metaloss.load("default", device="cpu")


@pytest.mark.parametrize("visible", ["vi", "vi_grey"])
def test_fuse_gives_the_image_that_metaloss_fuse_writes(tmp_path, pair, model, visible):
    (ir_path, ir), (vi_path, vi) = pair["ir"], pair[visible]
    assert cli.main(["fuse", "--ir", str(ir_path), "--vi", str(vi_path), "--out", str(tmp_path), "-q"]) == 0
    written = read_image(tmp_path / f"{visible}.png")
    assert written.shape == vi.shape
    tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a)[None]
    for a, b in [(ir_path, vi_path), (ir, vi), (tensor(ir), tensor(vi)), (tensor(ir).float() / 255, vi)]:
        np.testing.assert_array_equal(model.fuse(a, b), written)


def test_fuse_options_are_the_commands(pair, model):
    (_, ir), (_, vi) = pair["ir"], pair["vi_grey"]
    assert not model.stretch  # the shipped default model does not stretch; --stretch turns it on
    assert not np.array_equal(model.fuse(ir, vi, stretch=True), model.fuse(ir, vi))
    assert model.fuse(ir, vi, engine="torch", tile=16, mode="blend", overlap=8).shape == ir.shape


def test_load_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(InferenceError, match="not a shipped model"):
        metaloss.load(tmp_path / "missing.pt")
    with pytest.raises(InferenceError, match="not a shipped model"):
        metaloss.load("nonsense")


def test_fuse_refuses_a_pair_of_two_sizes_and_odd_layouts(model):
    from metaloss.data.images import ImageReadError, ImageSizeError

    with pytest.raises(ImageSizeError):
        model.fuse(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(ImageReadError, match="channel layout"):
        model.fuse(np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match=r"^a: "):
        model.fuse([[0]], np.zeros((1, 1), np.uint8))
