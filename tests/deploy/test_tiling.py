"""Tiling plans, blend tiling, exact tiling of Restormer networks and the engines on every plan
(metaloss.deploy.tiling, .fuse)."""

import itertools
import threading

import pytest
import torch

from metaloss.deploy.fuse import fuse_pair, generator_maps
from metaloss.deploy.tiling import (
    AUTO_TILE,
    AUTO_WHOLE_MAX_PIXELS,
    DEFAULT_OVERLAP,
    EXACT_CHUNK,
    EXACT_OUTER_TILE,
    TilePlan,
    blend_weights,
    fuse_tiled,
    plan_tiling,
    run_exact,
    supports_exact,
    tile_starts,
)
from metaloss.models.dense import DenseFusion
from metaloss.models.restormer import RestormerFusion
from tests.deploy.test_fuse import _pair


@pytest.mark.parametrize(
    "length,tile,overlap",
    [(1280, 640, 192), (1024, 640, 192), (1000, 300, 64), (641, 640, 0), (700, 96, 48), (50, 64, 16)],
)
def test_tiles_cover_with_the_overlap_and_weights_sum_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    assert all(a + t - b >= overlap for a, b in itertools.pairwise(starts))
    total = torch.zeros(length)
    for s, w in zip(starts, blend_weights(starts, t), strict=True):
        assert w.min() >= 0 and w.max() <= 1
        total[s : s + t] += w
    assert torch.allclose(total, torch.ones(length), atol=1e-6)


def test_tile_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)
    dense = DenseFusion(width=4, growth=4, layers=1)
    with pytest.raises(ValueError, match="tile"):
        plan_tiling(dense, 10, 10, tile=-1)
    assert plan_tiling(dense, 480, 640) == TilePlan("whole")  # small: whole image
    assert plan_tiling(dense, 1024, 1280).tile == AUTO_TILE
    assert AUTO_WHOLE_MAX_PIXELS >= 640 * 480
    assert plan_tiling(dense, 5000, 5000, tile=0) == TilePlan("whole") == plan_tiling(dense, 10, 10, tile=256)


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


def test_exact_tiling_leaves_other_forwards_alone():
    """The chunked stages serve the calls inside run_exact, in its thread: a plain forward in another
    thread meanwhile, and any forward after an error, is the network's own."""
    net = _sharpen(RestormerFusion(dim=8, heads=2)).eval()
    ir, vi = _pair(40, 40)
    with torch.inference_mode():
        whole = net(ir, vi)
    seen = []

    def forward_elsewhere(i, n):
        if i == 1:
            worker = threading.Thread(target=lambda: seen.append(net(ir, vi).detach()))
            worker.start()
            worker.join()

    with torch.inference_mode():
        exact = run_exact(net, ir, vi, 16, on_tile=forward_elsewhere)
        assert (exact - whole).abs().max() < 1e-5
        assert torch.equal(seen[0], whole)  # the other thread's forward ran while the chunks were
        with pytest.raises(RuntimeError):
            run_exact(net, ir, vi[..., :-1, :], 16)  # mismatched sizes
        assert torch.equal(net(ir, vi), whole)


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
    import metaloss.deploy.tiling as tiling

    torch.manual_seed(0)
    net = RestormerFusion(dim=8, heads=2).eval()
    ir, vi = _pair(90, 150)
    monkeypatch.setattr(tiling, "AUTO_WHOLE_MAX_PIXELS", 32 * 32)
    monkeypatch.setattr(tiling, "EXACT_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(tiling, "EXACT_OUTER_TILE", 96)
    plan = plan_tiling(net, 90, 150, tile=32, overlap=48)
    assert plan == TilePlan("exact+blend", 32, 48, 96)
    out = fuse_pair(net, ir, vi, tile=32, overlap=48)
    blended = fuse_pair(net, ir, vi, tile=96, overlap=48, mode="blend")
    assert (out - blended).abs().max() < 1e-5  # each outer tile exactly as if run whole


# -- the fast engine ----------------------------------------------------------------------------------------
def test_engine_resolution():
    from metaloss.deploy.fuse import resolve_engine

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
    import metaloss.deploy.tiling as tiling
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
    monkeypatch.setattr(tiling, "AUTO_WHOLE_MAX_PIXELS", 32 * 32)
    monkeypatch.setattr(tiling, "EXACT_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(tiling, "EXACT_OUTER_TILE", 96)
    outer = fuse_pair(net, ir, vi, tile=32, overlap=48)
    assert (fuse_pair(net, ir, vi, tile=32, overlap=48, engine="fast") - outer).abs().max() < 1e-5
    maps, fast_maps = generator_maps(gen, ir, vi, tile=0), generator_maps(gen, ir, vi, tile=0, engine="auto")
    assert (maps["intensity"] - fast_maps["intensity"]).abs().max() < 1e-5
