"""Fast inference of DualStreamRestormer networks equals their eager forward (metaloss.deploy.engine)."""

import pytest
import torch

from metaloss.deploy.engine import FastRestormer, fast_forward, supports_fast
from metaloss.models.restormer import RestormerFusion
from metaloss.nn.restormer import DualStreamRestormer
from metaloss.utils.numerics import reordering_tolerance


@pytest.fixture(autouse=True)
def seeded():
    """Networks are built from the global random stream: seed it, so that a test builds the same network
    whichever tests ran before it in this process (under pytest-xdist that depends on the scheduling)."""
    torch.manual_seed(0)


def split_tolerance(out: torch.Tensor, sum_length: int) -> float:
    """Bound on the difference between two float32 evaluations of a Restormer whose channel-attention
    sums (``Σ q kᵀ``, ``Σ q²``, ``Σ k²`` over at most ``sum_length`` pixels, in float32) were added in
    another order: another band split, or the eager forward's sums over the whole image.

    The attention logits are cosines ``Σ q k / (‖q‖ ‖k‖)``, so a relative error ``γₙ`` of the sums is an
    absolute error of the logits of the same order, and it reaches the output (in [0, 1] here) without
    being magnified: amplification 1 (over 30 random networks, the largest difference between two band
    splits was 0.19 of this bound)."""
    return reordering_tolerance(torch.float32, sum_length, magnitude=float(out.detach().abs().max()), amplification=1.0)


def randomise(m: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Move every parameter off its initial value (LayerNorm affines, temperatures, PReLU)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m.eval()


def pair(b, h, w, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize("band_pixels", [1, 1200, 1 << 20])  # 16-row bands (the fewest), 23 rows, one band
def test_fusion_network_at_reference_sizes_is_as_accurate_as_eager(band_pixels):
    """Against the float64 forward as the truth, the float32 fast engine errs no more than the float32
    eager forward does (up to a small factor): the differences are float rounding only."""
    net = randomise(RestormerFusion())
    ir, vi = pair(1, 37, 53)
    with torch.inference_mode():
        truth = net.double()(ir.double(), vi.double())
        net.float()
        eager = net(ir, vi)
        got = fast_forward(net, ir, vi, band_pixels=band_pixels)
    assert got.shape == eager.shape
    err_fast, err_eager = (got.double() - truth).abs().max(), (eager.double() - truth).abs().max()
    assert err_fast <= 4 * err_eager + 1e-6, (float(err_fast), float(err_eager))
    assert (got - eager).abs().max() < 1e-4


@pytest.mark.parametrize(
    "options",
    [
        {"merge": "concat", "activation": "prelu"},
        {"merge": "cross_attention", "activation": "leaky_relu", "bias": True},
        {"merge": "concat", "activation": "prelu", "layernorm": "bias_free", "bias": True},
        {"merge": "cross_attention", "activation": "leaky_relu", "layernorm": "bias_free", "ffn_expansion": 1.5},
    ],
)
def test_backbone_variants_in_float64_agree_to_rounding(options):
    """float64 takes the addmm path (no oneDNN linear): the algebra itself is exact."""
    net = randomise(DualStreamRestormer(in_channels=1, out_channels=2, dim=8, heads=2, **options).double())
    a, b = pair(2, 19, 23, dtype=torch.float64)
    with torch.inference_mode():
        expected = net(a, b)
        got = FastRestormer(net, band_pixels=100)(a, b)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_loss_generators_keep_their_output_dicts():
    tdfusion = pytest.importorskip("metaloss_tdfusion.loss_generator")
    refusion = pytest.importorskip("metaloss_refusion.loss_generator")
    ir, vi = pair(2, 24, 40)
    for gen in (randomise(tdfusion.TDFusionLossGenerator()), randomise(refusion.ReFusionLossGenerator())):
        with torch.inference_mode():
            truth = gen.double()(ir.double(), vi.double())
            gen.float()
            eager = gen(ir, vi)
            got = fast_forward(gen, ir, vi, band_pixels=320)
        assert got.keys() == eager.keys()
        for k in eager:  # as accurate as the eager float32 forward
            err_fast, err_eager = (got[k].double() - truth[k]).abs().max(), (eager[k].double() - truth[k]).abs().max()
            assert err_fast <= 4 * err_eager + 1e-6, (k, float(err_fast), float(err_eager))
        assert type(gen.backbone).__name__ == "DualStreamRestormer"  # swapped back


def test_progress_counts_every_stage_of_every_image():
    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    seen = []
    fast = FastRestormer(net.backbone, on_stage=lambda i, n: seen.append((i, n)))
    fast(*pair(2, 8, 8))
    stages = fast.stages()
    assert stages == 1 + 1 + 1 + 1 + 1  # two encoder blocks, merge, decoder block, head
    assert seen == [(i, 2 * stages) for i in range(1, 2 * stages + 1)]


def test_unsupported_modules_and_weights_taken_at_build_time():
    assert supports_fast(RestormerFusion()) and not supports_fast(torch.nn.Conv2d(1, 1, 3))
    with pytest.raises(TypeError, match="no DualStreamRestormer"):
        fast_forward(torch.nn.Conv2d(2, 1, 3), *pair(1, 4, 4))
    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    ir, vi = pair(1, 16, 16)
    fast = FastRestormer(net.backbone)
    before = fast(ir, vi)
    with torch.no_grad():
        net.backbone.head_in.weight.mul_(2)
    expected = net.backbone(ir, vi)  # one band of 16·16 pixels against the eager sums over the whole image
    torch.testing.assert_close(
        FastRestormer(net.backbone)(ir, vi), expected, atol=split_tolerance(expected, 16 * 16), rtol=0
    )
    assert not torch.allclose(before, FastRestormer(net.backbone)(ir, vi))


def test_a_forward_after_an_error_is_the_networks_own():
    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    ir, vi = pair(1, 8, 8)
    expected = net(ir, vi)
    with pytest.raises(RuntimeError):
        fast_forward(net, torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))  # wrong channel count
    assert torch.equal(net(ir, vi), expected)


def test_pool_reuses_slabs_across_widths():
    """Two C-wide maps share one 2C-wide slab; once both are returned the slab serves a 2C map."""
    from metaloss.deploy.engine import _Pool

    like = torch.empty(0)
    pool = _Pool(10 * 32)
    a, b = pool.take(like, 10, 16), pool.take(like, 10, 16)
    assert len(pool.slabs) == 1 and a.shape == (10, 16) and a.data_ptr() != b.data_ptr()
    wide = pool.take(like, 10, 32)  # the only slab is in use: a new one
    assert len(pool.slabs) == 2
    pool.give(a)
    assert pool.take(like, 10, 16).data_ptr() == a.data_ptr()  # the free piece, not a new slab
    pool.give(a, b, wide, torch.empty(10, 16))  # a foreign tensor is dropped
    assert pool.take(like, 10, 32).data_ptr() in {s.data_ptr() for s in pool.slabs}
    assert pool.take(like, 10, 32).data_ptr() in {s.data_ptr() for s in pool.slabs}
    assert len(pool.slabs) == 2
    assert pool.take(like, 20, 32).shape == (20, 32)  # larger than a slab: allocated outside the pool


def test_consecutive_images_reuse_the_same_slabs_and_release_frees_them():
    """A folder of same-size pairs reuses one set of full-size buffers (bounded memory per process)."""
    from metaloss.deploy.engine import _SLAB_CACHE, release_buffers

    torch.manual_seed(0)
    net = RestormerFusion().eval()
    ir, vi = torch.rand(1, 1, 24, 40), torch.rand(1, 1, 24, 40)
    release_buffers()
    first = fast_forward(net, ir, vi)
    kept = sorted(t.data_ptr() for t in _SLAB_CACHE.free)
    assert len(kept) == 3  # two 16-channel encoder maps per slab, then 32-channel maps
    second = fast_forward(net, ir, vi)
    assert sorted(t.data_ptr() for t in _SLAB_CACHE.free) == kept
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    fast_forward(net, ir[..., :20], vi[..., :20])  # another size: the old slabs are dropped
    assert all(t.numel() == 24 * 20 * 32 for t in _SLAB_CACHE.free)
    release_buffers()
    assert not _SLAB_CACHE.free


def test_pool_serves_a_free_piece_only_to_a_map_of_its_size():
    from metaloss.deploy.engine import _Pool

    like = torch.empty(0)
    pool = _Pool(320)
    a = pool.take(like, 10, 10)  # the slab is cut into three pieces of 100
    b = pool.take(like, 9, 10)  # 90 elements: also three per slab, but not a 100-element piece
    assert b.shape == (9, 10) and len(pool.slabs) == 2 and a.shape == (10, 10)


def test_band_workers_match_bands_in_turn(monkeypatch):
    """Bands run side by side compute what they compute in turn: bit for bit when the band split is the
    same (an even number of 16-row bands).  When the workers' split differs (83 rows: six bands of 16
    rows in turn, six of 14 side by side), only the float32 attention sums of each band cover other
    pixels, so the results differ within :func:`split_tolerance` of the longer band, and with those sums
    in float64 they are bit-identical again: nothing else depends on the split."""
    net = randomise(RestormerFusion())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ir, vi = pair(1, 96, 40)
        assert torch.equal(
            fast_forward(net, ir, vi, band_pixels=1, workers=2), fast_forward(net, ir, vi, band_pixels=1, workers=1)
        )
        ir, vi = pair(1, 83, 40)
        in_turn = fast_forward(net, ir, vi, band_pixels=1, workers=1)
        side_by_side = fast_forward(net, ir, vi, band_pixels=1, workers=2)
        torch.testing.assert_close(side_by_side, in_turn, atol=split_tolerance(in_turn, 16 * 40), rtol=0)

        import metaloss.deploy.engine as fast_module

        def add_in_float64(self, band, q, k, squares):
            self.grams[band] = q.double().t() @ k.double()
            self.squares[band] = torch.cat([q.double().square().sum(0), k.double().square().sum(0)])

        monkeypatch.setattr(fast_module._Sums, "add", add_in_float64)
        exact_sums = [fast_forward(net, ir, vi, band_pixels=1, workers=w) for w in (1, 2)]
        assert torch.equal(*exact_sums)
    finally:
        torch.set_num_threads(threads)


def test_band_workers_use_one_thread_each_and_leave_the_callers_setting(monkeypatch):
    import threading

    import metaloss.deploy.engine as fast_module

    seen = []
    depthwise = fast_module._depthwise

    def recording(*args):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return depthwise(*args)

    monkeypatch.setattr(fast_module, "_depthwise", recording)
    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        fast_forward(net, *pair(1, 96, 16), band_pixels=1, workers=3)  # six 16-row bands, two per worker
        assert torch.get_num_threads() == 3
        new_thread: list[int] = []
        t = threading.Thread(target=lambda: new_thread.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert new_thread == [3]  # the workers' setting did not become the default for new threads
    finally:
        torch.set_num_threads(threads)
    workers = {name for name, _ in seen}
    assert all(name.startswith("metaloss-band") for name in workers) and len(workers) > 1
    assert {n for _, n in seen} == {1}


def test_an_error_in_a_band_worker_reaches_the_caller(monkeypatch):
    import metaloss.deploy.engine as fast_module

    def failing(*args):
        raise RuntimeError("band failed")

    monkeypatch.setattr(fast_module, "_depthwise", failing)
    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    with pytest.raises(RuntimeError, match="band failed"):
        fast_forward(net, *pair(1, 64, 16), band_pixels=1, workers=2)
    with pytest.raises(ValueError, match="workers"):
        FastRestormer(net.backbone, workers=0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_band_workers_work_in_a_forked_child():
    """A child forked after the parent ran band workers starts its own (the parent's threads do not
    exist there; reusing their pool waited forever).  The parent runs its own ops on one thread:
    PyTorch's OpenMP pool itself hangs a forked child once the parent used several intra-op threads."""
    import multiprocessing as mp

    net = randomise(RestormerFusion(dim=4, heads=2, blocks_per_modality=1, fused_blocks=1))
    ir, vi = pair(1, 96, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = fast_forward(net, ir, vi, band_pixels=1, workers=2)
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_fast_in_child, (net, ir, vi)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _fast_in_child(net, ir, vi):
    return fast_forward(net, ir, vi, band_pixels=1, workers=2)
