"""Loading models for inference, fusing pairs, stretch, heat maps and atomic writing (metaloss.deploy.model, .fuse)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import metaloss.pretrained as pretrained
from metaloss.checkpoint import read_checkpoint, write_model_checkpoint
from metaloss.data.images import compose, load_pair, stretch
from metaloss.deploy.fuse import fuse_images, fuse_pair, generator_maps, heatmap, write_png
from metaloss.deploy.model import FusionModel, InferenceError, NoPretrainedModelError, load_model
from metaloss.models.conv_generator import ConvLossGenerator
from metaloss.models.dense import DenseFusion
from metaloss.models.restormer import RestormerFusion

DENSE = {"name": "dense", "width": 4, "growth": 4, "layers": 2}
CONV = {"name": "conv", "width": 4}


def _pair(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random scenes (bilinear upsampling of noise), like real images more than white noise
    base = torch.rand(2, 1, h // 8 + 2, w // 8 + 2, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return x[:1], x[1:]


#: A 5-second experiment (as tests/test_experiment.py), without fusion metrics in its evaluation.
TINY_RUN = {
    "name": "tiny",
    "seed": 1,
    "device": "cpu",
    "data": {"name": "synthetic", "num_images": 4, "height": 32, "width": 32, "crop_size": 24},
    "val_data": {"name": "synthetic", "num_images": 1, "height": 32, "width": 32},
    "learner": DENSE,
    "loss_generator": CONV,
    "objective": {"name": "segmentation"},
    "meta": {"epochs": 1, "meta_steps": 1, "learner_steps": 1, "outer_lr": 1e-3},
    "eval": {"num_images": 1, "metrics": []},
}


def run_tiny_experiment(out):
    """Train the tiny experiment into run directory ``out``; its checkpoint is ``out/checkpoints/last.pt``."""
    pytest.importorskip("segmentation_models_pytorch")
    from metaloss.config import load_config
    from metaloss.experiment import run

    run(load_config(json.loads(json.dumps(TINY_RUN))), out, quiet=True)
    return Path(out) / "checkpoints" / "last.pt"


@pytest.fixture
def dense_ckpt(tmp_path):
    torch.manual_seed(0)
    fusion, gen = DenseFusion(width=4, growth=4, layers=2), ConvLossGenerator(width=4)
    return write_model_checkpoint(tmp_path / "ck.pt", fusion, DENSE, gen, CONV), fusion, gen


# -- tiling ---------------------------------------------------------------------------------------------
# -- loading models ---------------------------------------------------------------------------------------
def test_load_model_from_written_checkpoint(dense_ckpt):
    path, fusion, gen = dense_ckpt
    model = load_model(path, generator=True)
    assert isinstance(model, FusionModel) and model.source == str(path)
    assert not model.fusion.training and not any(p.requires_grad for p in model.fusion.parameters())
    ir, vi = _pair(32, 40)
    with torch.no_grad():
        assert torch.equal(model.fusion(ir, vi), fusion.eval()(ir, vi))
        assert torch.equal(model.generator(ir, vi)["intensity"], gen(ir, vi)["intensity"])
    assert load_model(path).generator is None
    assert model.config["learner"] == DENSE  # the section names of this version ([fusion] in the file)


def test_load_model_from_a_metaloss_run(tmp_path):

    run_tiny_experiment(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    state = read_checkpoint(ckpt)["trainer"]
    for source in (ckpt, tmp_path / "run"):  # a checkpoint file or its run directory
        model = load_model(source, generator=True)
        for k, v in model.fusion.state_dict().items():
            assert torch.equal(v, state["learner"][k])
        for k, v in model.generator.state_dict().items():
            assert torch.equal(v, state["generator"][k])


def test_load_model_errors(tmp_path, dense_ckpt):
    with pytest.raises(InferenceError, match="no checkpoint at"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InferenceError, match=r"junk\.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": 1, "config": {"fusion": {"name": "nope"}}, "trainer": {"learner": {}}}, tmp_path / "p.pt")
    with pytest.raises(InferenceError, match="unknown fusion plugin 'nope'"):
        load_model(tmp_path / "p.pt")
    torch.save({"format": 1, "config": {"fusion": DENSE}, "trainer": {"learner": {}}}, tmp_path / "w.pt")
    with pytest.raises(InferenceError, match=r"w\.pt: cannot build its fusion network"):
        load_model(tmp_path / "w.pt")
    _, fusion, _ = dense_ckpt
    write_model_checkpoint(tmp_path / "nogen.pt", fusion, DENSE)
    with pytest.raises(InferenceError, match="no loss generator"):
        load_model(tmp_path / "nogen.pt", generator=True)


def test_a_missing_pretrained_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pretrained, "PACKAGE", "no_such_package_xyz")
    assert pretrained.default_checkpoint() is None
    with pytest.raises(NoPretrainedModelError, match=r"metaloss/pretrained/default\.pt is not installed.*--checkpoint"):
        load_model(None)
    with pytest.raises(InferenceError, match="unknown pretrained model 'nope'; choose from default, medical"):
        load_model(None, model="nope")


def test_default_pretrained_model_is_found_as_package_data(tmp_path, monkeypatch, dense_ckpt):
    """A package with default.pt beside its __init__.py is found by importlib.resources, as an
    installed metaloss/pretrained/default.pt will be."""
    pkg = tmp_path / "site" / "fake_metaloss_pretrained"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / pretrained.DEFAULT_NAME).write_bytes(dense_ckpt[0].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = pretrained.default_checkpoint("fake_metaloss_pretrained")
    assert found is not None and found.read_bytes() == dense_ckpt[0].read_bytes()
    assert pretrained.default_checkpoint("no_such_package_xyz") is None
    monkeypatch.setattr(pretrained, "PACKAGE", "fake_metaloss_pretrained")
    model = load_model(None)
    assert "pretrained model 'default'" in model.source and isinstance(model.fusion, DenseFusion)


# -- whole pairs and writing ------------------------------------------------------------------------------
def test_stretch():
    y = torch.tensor([[0.2, 0.3], [0.4, 0.6]])
    assert torch.allclose(stretch(y), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    c = torch.full((2, 2), 0.3)
    assert torch.equal(stretch(c), c)


def test_fuse_images_with_weight_maps(tmp_path, dense_ckpt):
    model = load_model(dense_ckpt[0], generator=True)
    ir, vi = _pair(40, 56)
    rgb = np.stack([vi[0, 0].numpy(), vi[0, 0].numpy() * 0.5, 1 - vi[0, 0].numpy()], -1)
    cv2.imwrite(str(tmp_path / "ir.png"), np.rint(ir[0, 0].numpy() * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "vi.png"), cv2.cvtColor(np.rint(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    pair = load_pair(tmp_path / "ir.png", tmp_path / "vi.png")
    out = fuse_images(model, pair, weights=True)
    assert out.image.shape == (40, 56, 3) and out.image.dtype == np.uint8
    assert set(out.maps) == {"w_a", "w_b"}
    assert torch.allclose(out.maps["w_a"] + out.maps["w_b"], torch.ones(40, 56), atol=1e-5)
    fused = fuse_pair(model.fusion, pair.ir.y, pair.vi.y)
    assert np.array_equal(out.image, compose(stretch(fused), pair.chroma))
    raw = fuse_images(model, pair, stretch_y=False)
    assert np.array_equal(raw.image, compose(fused, pair.chroma)) and raw.maps == {}
    no_gen = load_model(dense_ckpt[0])
    with pytest.raises(InferenceError, match="loss generator"):
        fuse_images(no_gen, pair, weights=True)


def test_generator_maps_with_gradient_weights():
    from metaloss_refusion.loss_generator import ReFusionLossGenerator

    torch.manual_seed(0)
    gen = ReFusionLossGenerator(dim=8, heads=2, blocks_per_modality=1, fused_blocks=1).eval()
    ir, vi = _pair(48, 64)
    maps = generator_maps(gen, ir[0], vi[0])
    assert set(maps) == {"intensity", "gradient"} and maps["gradient"].shape == (2, 48, 64)
    tiled = generator_maps(gen, ir[0], vi[0], tile=32, overlap=16, mode="blend")
    assert (tiled["intensity"] - maps["intensity"]).abs().max() < 0.05
    exact = generator_maps(gen, ir[0], vi[0], tile=32)
    assert (exact["gradient"] - maps["gradient"]).abs().max() < 1e-5


def test_heatmap_and_atomic_png(tmp_path):
    v = torch.linspace(0, 1, 30).reshape(5, 6)
    hm = heatmap(v)
    assert hm.shape == (5, 6, 3) and hm.dtype == np.uint8
    assert not np.array_equal(hm[0, 0], hm[-1, -1])  # a colour scale, fixed to [0, 1]
    assert np.array_equal(heatmap(v, "jet")[0, 0], [0, 0, 128])  # jet: 0 is dark blue (RGB)
    with pytest.raises(ValueError, match="unknown colormap"):
        heatmap(v, "nope")
    narrow = 0.45 + 0.1 * v  # a map between 0.45 and 0.55: one flat colour on the fixed scale ...
    flat, spread = heatmap(narrow), heatmap(narrow, value_range=None)  # ... spread over the colormap by the data
    assert np.abs(flat[0, 0].astype(int) - flat[-1, -1]).max() < 60
    assert np.array_equal(spread[-1, -1], heatmap(torch.ones(1, 1))[0, 0])  # the data's top is the colormap's top
    bar = heatmap(narrow, value_range=None, colorbar=True)
    assert bar.shape[0] == 5 and bar.shape[1] > 6 and np.array_equal(bar[:, :6], spread)
    path = write_png(tmp_path / "sub" / "h.png", hm)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), hm)
    assert os.listdir(tmp_path / "sub") == ["h.png"]  # no temporary file left behind
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))


# -- LLVIP: tiled vs whole at full size, and the memory of the whole `metaloss fuse` process -------------
@pytest.mark.slow
@pytest.mark.shared_data
def test_llvip_tiled_fuse_process_agrees_with_whole_image_and_stays_under_2_gib(shared_data, tmp_path):
    """`metaloss fuse` with its default (tiled) settings on one 1280×1024 LLVIP pair, in a child
    process: its peak RSS, and its PNG against whole-image fusion in this process (same seeded,
    untrained RestormerFusion).  Trained networks are compared in docs/fuse.md (benchmarks)."""
    name = "190001"
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{name}.jpg").symlink_to(shared_data / "llvip" / "test" / sub / f"{name}.jpg")
    torch.manual_seed(0)
    net = RestormerFusion().eval()
    ckpt = write_model_checkpoint(tmp_path / "ck.pt", net, {"name": "restormer"})
    script = (
        "import sys; from metaloss.cli import main; from metaloss.utils.memory import peak_rss_bytes; "
        "rc = main(['fuse', *sys.argv[1:]]); print('MAXRSS', peak_rss_bytes() // 1024); sys.exit(rc)"
    )
    cmd = [
        sys.executable,
        "-c",
        script,
        "--checkpoint",
        str(ckpt),
        "--ir",
        str(tmp_path / "ir"),
        "--vi",
        str(tmp_path / "vi"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.split("MAXRSS")[1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"

    pair = load_pair(tmp_path / "ir" / f"{name}.jpg", tmp_path / "vi" / f"{name}.jpg")
    whole = fuse_pair(net, pair.ir.y, pair.vi.y, tile=0)
    expected = compose(stretch(whole), pair.chroma)
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    diff = np.abs(got.astype(int) - expected.astype(int))
    print(
        json.dumps(
            {
                "peak_rss_mib": round(peak_kib / 1024),
                "max_grey_diff": int(diff.max()),
                "frac_gt1": float((diff > 1).mean()),
            }
        )
    )
    assert diff.max() <= 2
