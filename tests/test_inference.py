"""Loading models for inference, tiled fusion, stretch, heat maps and atomic writing."""

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
from metaloss.data.images import compose, load_pair
from metaloss.inference import (
    AUTO_TILE,
    AUTO_WHOLE_MAX_PIXELS,
    DEFAULT_OVERLAP,
    EXACT_CHUNK,
    EXACT_OUTER_TILE,
    FusionModel,
    InferenceError,
    NoPretrainedModelError,
    TilePlan,
    blend_weights,
    fuse_images,
    fuse_pair,
    fuse_tiled,
    generator_maps,
    heatmap,
    load_model,
    plan_tiling,
    resolve_tile,
    run_exact,
    stretch,
    supports_exact,
    tile_starts,
    write_checkpoint,
    write_png,
)
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
    "fusion": DENSE,
    "loss_generator": CONV,
    "task": {"name": "segmentation"},
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
    return write_checkpoint(tmp_path / "ck.pt", fusion, DENSE, gen, CONV), fusion, gen


# -- tiling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,tile,overlap", [(1280, 640, 192), (1024, 640, 192), (1000, 300, 64), (641, 640, 0), (700, 96, 48), (50, 64, 16)])
def test_tiles_cover_with_the_overlap_and_weights_sum_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    assert all(a + t - b >= overlap for a, b in zip(starts, starts[1:]))
    total = torch.zeros(length)
    for s, w in zip(starts, blend_weights(starts, t)):
        assert w.min() >= 0 and w.max() <= 1
        total[s : s + t] += w
    assert torch.allclose(total, torch.ones(length), atol=1e-6)


def test_tile_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)
    with pytest.raises(ValueError, match="tile"):
        resolve_tile(-1, 10, 10)
    assert resolve_tile(None, 480, 640) == 0  # small: whole image
    assert resolve_tile(None, 1024, 1280) == AUTO_TILE
    assert AUTO_WHOLE_MAX_PIXELS >= 640 * 480
    assert resolve_tile(0, 5000, 5000) == 0 and resolve_tile(256, 10, 10) == 256


def test_tiled_pointwise_and_dict_outputs_equal_whole():
    ir, vi = _pair(150, 230)

    def fn(a, b):
        return {"intensity": torch.cat([a, b], 1) * 2, "gradient": (a - b)}

    out = fuse_tiled(fn, ir, vi, tile=64, overlap=24)
    assert set(out) == {"intensity", "gradient"}
    assert torch.allclose(out["intensity"], torch.cat([ir, vi], 1) * 2, atol=1e-6)
    assert torch.allclose(out["gradient"], ir - vi, atol=1e-6)
    calls = []
    fuse_tiled(lambda a, b: a, ir, vi, tile=64, overlap=24, on_tile=lambda i, n: calls.append((i, n)))
    assert calls[-1][0] == calls[-1][1] == len(calls) == len(tile_starts(150, 64, 24)) * len(tile_starts(230, 64, 24))


def test_tiled_equals_whole_for_a_local_network():
    """A CNN whose receptive field (radius 3) is within the blending margin: tiling is exact."""
    torch.manual_seed(0)
    net = DenseFusion(width=4, growth=4, layers=2).eval()
    ir, vi = _pair(130, 170)
    whole = fuse_pair(net, ir, vi, tile=0)
    tiled = fuse_pair(net, ir, vi, tile=64, overlap=40)
    assert not tiled.requires_grad and tiled.shape == (1, 1, 130, 170)
    assert (whole - tiled).abs().max() < 1e-5


def test_restormer_blend_tiling_is_only_approximate():
    """The Restormer's channel attention is global: independent tiles change it (see docs/fuse.md)."""
    torch.manual_seed(0)
    net = RestormerFusion().eval()
    ir, vi = _pair(96, 160)
    whole = fuse_pair(net, ir[0], vi[0], tile=0)
    tiled = fuse_pair(net, ir[0], vi[0], tile=80, overlap=48, mode="blend")
    assert whole.shape == tiled.shape == (1, 96, 160)
    assert 0 < (whole - tiled).abs().max() * 255 < 2


def _sharpen(net, temperature=8.0):
    """Raise every attention temperature, as training does, so the attention maps matter more."""
    for name, p in net.named_parameters():
        if "temperature" in name:
            p.data.fill_(temperature)
    return net


@pytest.mark.parametrize("chunk", [17, 40, 64])
def test_exact_tiling_equals_whole_image_for_the_restormer(chunk):
    torch.manual_seed(0)
    net = _sharpen(RestormerFusion(dim=8, heads=2)).eval()
    ir, vi = _pair(70, 99)
    whole = fuse_pair(net, ir, vi, tile=0)
    steps = []
    exact = fuse_pair(net, ir, vi, tile=chunk, mode="exact", on_tile=lambda i, n: steps.append((i, n)))
    assert (whole - exact).abs().max() < 1e-5
    assert steps[-1][0] == steps[-1][1] == len(steps) > 1


def test_exact_tiling_of_the_reference_size_restormer_and_loss_generators():
    from metaloss_refusion.loss_generator import ReFusionLossGenerator
    from metaloss_tdfusion.loss_generator import SigmoidLossGenerator, TDFusionLossGenerator

    torch.manual_seed(0)
    ir, vi = _pair(48, 72)
    fusion = _sharpen(RestormerFusion()).eval()
    assert (fuse_pair(fusion, ir, vi, tile=0) - fuse_pair(fusion, ir, vi, tile=32, mode="exact")).abs().max() < 1e-5
    for gen in (TDFusionLossGenerator(), SigmoidLossGenerator(), ReFusionLossGenerator()):
        gen = _sharpen(gen).eval()
        whole = generator_maps(gen, ir, vi, tile=0)
        exact = generator_maps(gen, ir, vi, tile=32, mode="exact")
        assert set(whole) == set(exact)
        for key in whole:
            assert (whole[key] - exact[key]).abs().max() < 1e-5, (type(gen).__name__, key)
        assert supports_exact(gen)
        assert gen.backbone.__class__.__name__ == "DualStreamRestormer"  # swapped back after the call


def test_exact_tiling_restores_the_attention_function_after_errors():
    import metaloss.nn.restormer as restormer_nn

    original = restormer_nn.channel_attention
    net = RestormerFusion(dim=8, heads=2).eval()
    ir, vi = _pair(40, 40)
    with pytest.raises(RuntimeError):
        with torch.inference_mode():
            run_exact(net, ir, vi[..., :-1, :], 16)  # mismatched sizes
    assert restormer_nn.channel_attention is original
    assert type(net.backbone).__name__ == "DualStreamRestormer"


def test_tiling_plans():
    restormer, dense = RestormerFusion(dim=8, heads=2), DenseFusion(width=4, growth=4, layers=1)
    assert supports_exact(restormer) and not supports_exact(dense)
    assert plan_tiling(restormer, 480, 640) == TilePlan("whole")
    assert plan_tiling(restormer, 1024, 1280) == TilePlan("exact", EXACT_CHUNK)
    assert plan_tiling(restormer, 1024, 1280, tile=256) == TilePlan("exact", 256)
    assert plan_tiling(restormer, 1024, 1280, tile=0) == TilePlan("whole")
    assert plan_tiling(restormer, 4000, 3000) == TilePlan("exact+blend", EXACT_CHUNK, DEFAULT_OVERLAP, EXACT_OUTER_TILE)
    assert plan_tiling(restormer, 4000, 3000, mode="exact") == TilePlan("exact", EXACT_CHUNK)
    assert plan_tiling(restormer, 1024, 1280, mode="blend") == TilePlan("blend", AUTO_TILE, DEFAULT_OVERLAP)
    assert plan_tiling(dense, 1024, 1280) == TilePlan("blend", AUTO_TILE, DEFAULT_OVERLAP)
    assert plan_tiling(dense, 100, 100, tile=128) == TilePlan("whole")
    with pytest.raises(ValueError, match="exact tiling needs"):
        plan_tiling(dense, 1024, 1280, mode="exact")
    with pytest.raises(ValueError, match="overlap"):
        plan_tiling(dense, 1024, 1280, tile=64, overlap=64)
    with pytest.raises(ValueError, match="unknown tiling mode"):
        plan_tiling(dense, 10, 10, mode="fast")


def test_exact_inside_blended_outer_tiles(monkeypatch):
    import metaloss.inference as inference

    torch.manual_seed(0)
    net = RestormerFusion(dim=8, heads=2).eval()
    ir, vi = _pair(90, 150)
    monkeypatch.setattr(inference, "AUTO_WHOLE_MAX_PIXELS", 32 * 32)
    monkeypatch.setattr(inference, "EXACT_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(inference, "EXACT_OUTER_TILE", 96)
    plan = plan_tiling(net, 90, 150, tile=32, overlap=48)
    assert plan == TilePlan("exact+blend", 32, 48, 96)
    out = fuse_pair(net, ir, vi, tile=32, overlap=48)
    blended = fuse_pair(net, ir, vi, tile=96, overlap=48, mode="blend")
    assert (out - blended).abs().max() < 1e-5  # each outer tile exactly as if run whole


# -- the fast engine ----------------------------------------------------------------------------------------
def test_engine_resolution():
    from metaloss.inference import resolve_engine

    restormer, dense = RestormerFusion(dim=8, heads=2), DenseFusion(width=4, growth=4, layers=1)
    assert resolve_engine(restormer, "auto") == "fast" and resolve_engine(restormer, "torch") == "torch"
    assert resolve_engine(dense, "auto") == "torch"
    assert resolve_engine(RestormerFusion(dim=8, heads=2).double(), "auto") == "torch"  # oneDNN path is float32
    with pytest.raises(ValueError, match="fast engine needs"):
        resolve_engine(dense, "fast")
    with pytest.raises(ValueError, match="unknown inference engine"):
        resolve_engine(dense, "onnx")


@pytest.mark.parametrize("base", ["none", "mean"])
def test_fast_engine_equals_the_torch_engine_for_every_plan(monkeypatch, base):
    import metaloss.inference as inference
    from metaloss_tdfusion.loss_generator import TDFusionLossGenerator

    torch.manual_seed(0)
    net = _sharpen(RestormerFusion(dim=8, heads=2, base=base)).eval()
    torch.nn.init.normal_(net.backbone.head_out.weight, std=0.1)  # "mean" starts it at zero: give it weight
    gen = _sharpen(TDFusionLossGenerator(dim=8, heads=2)).eval()
    ir, vi = _pair(90, 150)
    whole = fuse_pair(net, ir, vi, tile=0)
    steps = []
    fast = fuse_pair(net, ir, vi, tile=0, engine="fast", on_tile=lambda i, n: steps.append((i, n)))
    assert (fast - whole).abs().max() < 1e-5
    assert steps[-1][0] == steps[-1][1] == len(steps) > 1  # progress by stage
    assert (fuse_pair(net, ir, vi, tile=32, mode="exact", engine="fast") - whole).abs().max() < 1e-5
    blend = fuse_pair(net, ir, vi, tile=64, overlap=32, mode="blend")
    assert (fuse_pair(net, ir, vi, tile=64, overlap=32, mode="blend", engine="fast") - blend).abs().max() < 1e-5
    monkeypatch.setattr(inference, "AUTO_WHOLE_MAX_PIXELS", 32 * 32)
    monkeypatch.setattr(inference, "EXACT_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(inference, "EXACT_OUTER_TILE", 96)
    outer = fuse_pair(net, ir, vi, tile=32, overlap=48)
    assert (fuse_pair(net, ir, vi, tile=32, overlap=48, engine="fast") - outer).abs().max() < 1e-5
    maps, fast_maps = generator_maps(gen, ir, vi, tile=0), generator_maps(gen, ir, vi, tile=0, engine="auto")
    assert (maps["intensity"] - fast_maps["intensity"]).abs().max() < 1e-5


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
    assert model.config["fusion"] == DENSE


def test_load_model_from_a_metaloss_run(tmp_path):
    from metaloss.experiment import load_checkpoint

    run_tiny_experiment(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)["trainer"]
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
    with pytest.raises(InferenceError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": 1, "config": {"fusion": {"name": "nope"}}, "trainer": {"learner": {}}}, tmp_path / "p.pt")
    with pytest.raises(InferenceError, match="unknown fusion plugin 'nope'"):
        load_model(tmp_path / "p.pt")
    torch.save({"format": 1, "config": {"fusion": DENSE}, "trainer": {"learner": {}}}, tmp_path / "w.pt")
    with pytest.raises(InferenceError, match=r"w\.pt: cannot build its fusion network"):
        load_model(tmp_path / "w.pt")
    path, fusion, _ = dense_ckpt
    write_checkpoint(tmp_path / "nogen.pt", fusion, DENSE)
    with pytest.raises(InferenceError, match="no loss generator"):
        load_model(tmp_path / "nogen.pt", generator=True)


def test_a_missing_pretrained_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pretrained, "PACKAGE", "no_such_package_xyz")
    assert pretrained.default_checkpoint() is None
    with pytest.raises(NoPretrainedModelError, match="metaloss/pretrained/default.pt is not installed.*--checkpoint"):
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
    assert set(out.maps) == {"w_ir", "w_vi"}
    assert torch.allclose(out.maps["w_ir"] + out.maps["w_vi"], torch.ones(40, 56), atol=1e-5)
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
    ckpt = write_checkpoint(tmp_path / "ck.pt", net, {"name": "restormer"})
    script = (
        "import sys; from metaloss.fuse_cli import main; from metaloss.utils.memory import peak_rss_bytes; "
        "rc = main(sys.argv[1:]); print('MAXRSS', peak_rss_bytes() // 1024); sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", script, "--checkpoint", str(ckpt), "--ir", str(tmp_path / "ir"),
           "--vi", str(tmp_path / "vi"), "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.split("MAXRSS")[1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"

    pair = load_pair(tmp_path / "ir" / f"{name}.jpg", tmp_path / "vi" / f"{name}.jpg")
    whole = fuse_pair(net, pair.ir.y, pair.vi.y, tile=0)
    expected = compose(stretch(whole), pair.chroma)
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    diff = np.abs(got.astype(int) - expected.astype(int))
    print(json.dumps({"peak_rss_mib": round(peak_kib / 1024), "max_grey_diff": int(diff.max()), "frac_gt1": float((diff > 1).mean())}))
    assert diff.max() <= 2
