"""`metaloss fuse` (metaloss.cli.fuse), run through `metaloss.cli.main`."""

import json

import cv2
import numpy as np
import pytest
import torch

import metaloss.pretrained as pretrained
from metaloss import cli
from metaloss.checkpoint import write_model_checkpoint
from metaloss.data.images import compose, load_pair, stretch
from metaloss.deploy import fuse_pair, load_model
from metaloss.models.conv_generator import ConvLossGenerator
from metaloss.models.dense import DenseFusion


def main(argv):
    return cli.main(["fuse", *argv])


DENSE = {"name": "dense", "width": 4, "growth": 4, "layers": 2}
H, W = 40, 56


def _gray(seed):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (H // 4, W // 4), dtype=np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)


def _colour(seed):
    return np.stack([_gray(seed), _gray(seed + 100), _gray(seed + 200)], axis=-1)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return write_model_checkpoint(
        tmp_path / "ck.pt",
        DenseFusion(width=4, growth=4, layers=2),
        DENSE,
        ConvLossGenerator(width=4),
        {"name": "conv", "width": 4},
    )


@pytest.fixture
def folders(tmp_path):
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        cv2.imwrite(str(ir / f"{name}.png"), _gray(i))
        cv2.imwrite(str(vi / f"{name}.jpg" if name == "b" else vi / f"{name}.png"), _colour(i))
    cv2.imwrite(str(ir / "only_ir.png"), _gray(7))
    cv2.imwrite(str(vi / "only_vi.bmp"), _colour(8))
    (vi / "notes.txt").write_text("not an image")
    return ir, vi


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_single_pair_grayscale_and_colour(tmp_path, ckpt):
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi_gray.png"), _gray(1))
    cv2.imwrite(str(tmp_path / "vi.png"), _colour(1))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--checkpoint",
                str(ckpt),
                "--ir",
                str(tmp_path / "ir.png"),
                "--vi",
                str(tmp_path / "vi_gray.png"),
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    gray = _read(out / "vi_gray.png")  # named after the visible source
    assert gray.dtype == np.uint8 and gray.shape == (H, W)
    assert gray.min() == 0 and gray.max() == 255  # stretched by default
    assert (
        main(
            [
                "-c",
                str(ckpt),
                "--ir",
                str(tmp_path / "ir.png"),
                "--vi",
                str(tmp_path / "vi.png"),
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    colour = _read(out / "vi.png")
    assert colour.dtype == np.uint8 and colour.shape == (H, W, 3)
    assert sorted(p.name for p in out.iterdir()) == ["vi.png", "vi_gray.png"]


def test_stretch_is_an_option(tmp_path, ckpt):
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _gray(1))
    args = ["-c", str(ckpt), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "-q"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    assert main([*args, "--out", str(tmp_path / "n"), "--no-stretch"]) == 0
    s, n = _read(tmp_path / "s" / "vi.png"), _read(tmp_path / "n" / "vi.png")
    assert (s.min(), s.max()) == (0, 255) and n.max() - n.min() < 255
    model = load_model(ckpt)
    pair = load_pair(tmp_path / "ir.png", tmp_path / "vi.png")
    fused = fuse_pair(model.fusion, pair.ir.y, pair.vi.y)
    assert np.array_equal(n, compose(fused, None))
    assert np.array_equal(s, compose(stretch(fused), None))  # the stretch is of the unquantised Y


def test_stretch_default_is_the_models_own(tmp_path):
    """A checkpoint written with stretch=False (a run with ``[eval] stretch = false``) is fused without
    the stretch unless --stretch asks for it; older checkpoints without the setting keep it on."""
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _gray(1))
    torch.manual_seed(0)
    plain = write_model_checkpoint(
        tmp_path / "plain.pt", DenseFusion(width=4, growth=4, layers=2), DENSE, stretch=False
    )
    assert load_model(plain).stretch is False
    args = ["-c", str(plain), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "-q"]
    assert main([*args, "--out", str(tmp_path / "d")]) == 0
    assert main([*args, "--out", str(tmp_path / "s"), "--stretch"]) == 0
    d, s = _read(tmp_path / "d" / "vi.png"), _read(tmp_path / "s" / "vi.png")
    pair = load_pair(tmp_path / "ir.png", tmp_path / "vi.png")
    fused = fuse_pair(load_model(plain).fusion, pair.ir.y, pair.vi.y)
    assert np.array_equal(d, compose(fused, None)) and np.array_equal(s, compose(stretch(fused), None))
    old = torch.load(plain, weights_only=True)
    del old["config"]["eval"]  # written before the setting existed
    torch.save(old, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").stretch is True


def test_folders_pair_by_name_and_list_unpaired(folders, ckpt, tmp_path, capsys):
    ir, vi = folders
    out = tmp_path / "out"
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]  # b.png from b.png + b.jpg
    assert all(_read(out / f"{n}.png").shape == (H, W, 3) for n in "abc")
    err = capsys.readouterr().err
    assert "2 file(s) without a partner" in err and "only_ir.png" in err and "only_vi.bmp" in err
    assert "notes.txt" not in err
    assert "3/3" in err and "pair" in err  # the tqdm progress bar, on stderr


def test_quiet_prints_nothing_but_unpaired_files(folders, ckpt, tmp_path, capsys):
    ir, vi = folders
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "3/3" not in err and "only_ir.png" in err


def test_save_weights_writes_heat_maps(tmp_path, ckpt):
    cv2.imwrite(str(tmp_path / "p.png"), _gray(0))
    (tmp_path / "v").mkdir()
    cv2.imwrite(str(tmp_path / "v" / "p.png"), _colour(1))
    out = tmp_path / "out"
    assert (
        main(
            [
                "-c",
                str(ckpt),
                "--a",
                str(tmp_path / "p.png"),
                "--b",
                str(tmp_path / "v" / "p.png"),
                "--out",
                str(out),
                "--save-weights",
                "-q",
            ]
        )
        == 0
    )
    # the maps go to weights/, so `metaloss eval --fused out` sees fused images only
    assert sorted(p.name for p in out.iterdir()) == ["p.png", "weights"]
    assert sorted(p.name for p in (out / "weights").iterdir()) == ["p_w_a.png", "p_w_b.png"]
    w_a, w_b = _read(out / "weights" / "p_w_a.png"), _read(out / "weights" / "p_w_b.png")
    assert w_a.shape[0] == H and w_a.shape[1] > W and w_a.dtype == np.uint8  # the map, then its colour bar
    assert not np.array_equal(w_a[:, :W], w_b[:, :W])


def test_save_weights_with_gradient_maps(tmp_path):
    from metaloss_refusion.loss_generator import ReFusionLossGenerator

    torch.manual_seed(0)
    options = {"dim": 8, "heads": 2, "blocks_per_modality": 1, "fused_blocks": 1}
    ck = write_model_checkpoint(
        tmp_path / "ck.pt",
        DenseFusion(width=4, growth=4, layers=2),
        DENSE,
        ReFusionLossGenerator(**options),
        {"name": "refusion", **options},
    )
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _gray(1))
    out = tmp_path / "out"
    assert (
        main(
            [
                "-c",
                str(ck),
                "--ir",
                str(tmp_path / "ir.png"),
                "--vi",
                str(tmp_path / "vi.png"),
                "--out",
                str(out),
                "--save-weights",
                "--colormap",
                "jet",
                "-q",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "weights").iterdir()) == [
        "vi_v_a.png",
        "vi_v_b.png",
        "vi_w_a.png",
        "vi_w_b.png",
    ]


def test_tiling_options(tmp_path, ckpt):
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _gray(1))
    args = ["-c", str(ckpt), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "-q", "--no-stretch"]
    assert main([*args, "--out", str(tmp_path / "w"), "--tile", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "t"), "--tile", "24", "--overlap", "16"]) == 0
    w, t = _read(tmp_path / "w" / "vi.png"), _read(tmp_path / "t" / "vi.png")
    assert np.abs(w.astype(int) - t.astype(int)).max() <= 1  # a local CNN: tiling is exact up to rounding
    assert main([*args, "--out", str(tmp_path / "x"), "--tile", "16", "--overlap", "16"]) == 2
    assert (
        main([*args, "--out", str(tmp_path / "x"), "--tile", "16", "--tiling", "exact"]) == 2
    )  # dense: no exact tiling
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--tile", "-3"])


def test_checkpoint_from_a_metaloss_run(tmp_path):
    from tests.deploy.test_fuse import run_tiny_experiment

    last = run_tiny_experiment(tmp_path / "run")
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _colour(1))
    for ck in (last, tmp_path / "run"):
        out = tmp_path / "out"
        assert (
            main(
                [
                    "-c",
                    str(ck),
                    "--ir",
                    str(tmp_path / "ir.png"),
                    "--vi",
                    str(tmp_path / "vi.png"),
                    "--out",
                    str(out),
                    "--save-weights",
                    "-q",
                ]
            )
            == 0
        )
        assert sorted(p.name for p in out.iterdir()) == ["vi.png", "weights"]
        assert sorted(p.name for p in (out / "weights").iterdir()) == ["vi_w_a.png", "vi_w_b.png"]


def test_without_checkpoint_the_pretrained_model_is_used_or_its_absence_explained(tmp_path, ckpt, monkeypatch, capsys):
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _gray(1))
    args = ["--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "--out", str(tmp_path / "out"), "-q"]
    # a package that ships no model: the message says so
    pkg = tmp_path / "site" / "fake_pretrained"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(pretrained, "PACKAGE", "fake_pretrained")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "metaloss/pretrained/default.pt is not installed" in err and "--checkpoint" in err
    assert not (tmp_path / "out").exists()
    # the package's default.pt, or another shipped model by --model, is picked up
    (pkg / "default.pt").write_bytes(ckpt.read_bytes())
    assert main(args) == 0
    assert (tmp_path / "out" / "vi.png").is_file()
    assert main([*args, "--model", "medical"]) == 1
    assert "metaloss/pretrained/medical.pt is not installed" in capsys.readouterr().err
    (pkg / "medical.pt").write_bytes(ckpt.read_bytes())
    assert main([*args, "--model", "medical"]) == 0
    assert main([*args, "--model", "medical", "--checkpoint", str(ckpt)]) == 2
    assert "not both" in capsys.readouterr().err


def test_bad_inputs(tmp_path, ckpt, folders, capsys):
    ir, vi = folders
    (vi / "c.png").write_bytes(b"broken")
    cv2.imwrite(str(vi / "a.png"), _colour(0)[:-2])
    out = tmp_path / "out"
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "c.png" in err and "not a supported image format" in err
    assert "differ in size" in err and "a.png" in err
    assert "2 of 3 pair(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # the good pair is still written
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi / "b.jpg"), "--out", str(out)]) == 2
    assert "both be files or both be folders" in capsys.readouterr().err
    assert main(["-c", str(ckpt), "--ir", str(tmp_path / "nope"), "--vi", str(vi), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["-c", str(tmp_path / "missing.pt"), "--ir", str(ir), "--vi", str(vi), "--out", str(out), "-q"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-c", str(ckpt), "--ir", str(empty), "--vi", str(vi), "--out", str(out), "-q"]) == 1
    assert "no image pairs" in capsys.readouterr().err
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(out), "--colormap", "nope"]) == 2


def test_duplicate_names_in_a_folder_are_refused(tmp_path, ckpt, folders, capsys):
    ir, vi = folders
    cv2.imwrite(str(ir / "a.jpg"), _gray(0))
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(tmp_path / "o")]) == 2
    assert "a.jpg and a.png" in capsys.readouterr().err or "a.png and a.jpg" in json.dumps(str(ir))


def test_exact_tiling_of_a_restormer_matches_whole_image(tmp_path, capsys):
    from metaloss.models.restormer import RestormerFusion

    torch.manual_seed(0)
    options = {"dim": 8, "heads": 2, "blocks_per_modality": 1, "fused_blocks": 1}
    ck = write_model_checkpoint(tmp_path / "r.pt", RestormerFusion(**options), {"name": "restormer", **options})
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _colour(1))
    args = ["-c", str(ck), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png")]
    assert main([*args, "--out", str(tmp_path / "w"), "--tile", "0", "-q"]) == 0
    assert main([*args, "--out", str(tmp_path / "e"), "--tile", "16"]) == 0  # auto: exact for a Restormer
    assert "step" in capsys.readouterr().err  # progress of the exact tiling's passes
    assert np.array_equal(_read(tmp_path / "w" / "vi.png"), _read(tmp_path / "e" / "vi.png"))


def test_engines_agree_and_fast_needs_a_restormer(tmp_path, ckpt, capsys):
    from metaloss.models.restormer import RestormerFusion

    torch.manual_seed(0)
    options = {"dim": 8, "heads": 2, "blocks_per_modality": 1, "fused_blocks": 1}
    ck = write_model_checkpoint(tmp_path / "r.pt", RestormerFusion(**options), {"name": "restormer", **options})
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _colour(1))
    args = ["--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "-q", "--no-stretch"]
    assert main(["-c", str(ck), *args, "--out", str(tmp_path / "t"), "--engine", "torch", "--tile", "0"]) == 0
    assert main(["-c", str(ck), *args, "--out", str(tmp_path / "f"), "--engine", "fast", "--allocator", "release"]) == 0
    assert main(["-c", str(ck), *args, "--out", str(tmp_path / "a")]) == 0  # auto: fast, allocator keep
    t, f, a = (_read(tmp_path / d / "vi.png").astype(int) for d in "tfa")
    assert np.abs(t - f).max() <= 1 and np.array_equal(f, a)
    assert main(["-c", str(ckpt), *args, "--out", str(tmp_path / "x"), "--engine", "fast"]) == 2  # dense network
    assert "fast engine needs" in capsys.readouterr().err


def test_threads_option(tmp_path, monkeypatch, capsys):
    """--threads sets PyTorch's thread count, which the fast engine runs as that many band workers."""
    import metaloss.deploy.engine as fast_module
    from metaloss.models.restormer import RestormerFusion

    torch.manual_seed(0)
    options = {"dim": 8, "heads": 2, "blocks_per_modality": 1, "fused_blocks": 1}
    ck = write_model_checkpoint(tmp_path / "r.pt", RestormerFusion(**options), {"name": "restormer", **options})
    cv2.imwrite(str(tmp_path / "ir.png"), cv2.resize(_gray(0), (W, 4 * H)))  # 160 rows: ten 16-row bands
    cv2.imwrite(str(tmp_path / "vi.png"), cv2.resize(_gray(1), (W, 4 * H)))
    args = ["-c", str(ck), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "-q"]
    workers = []
    runner = fast_module._Runner

    class Recording(runner):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            workers.append(a[4] if len(a) > 4 else k.get("workers", 1))

    monkeypatch.setattr(fast_module, "_Runner", Recording)
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and workers[-1] == 1
        assert main([*args, "--out", str(tmp_path / "two"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2 and workers[-1] == 2
    finally:
        torch.set_num_threads(threads)
    one, two = (_read(tmp_path / d / "vi.png").astype(int) for d in ("one", "two"))
    assert np.abs(one - two).max() <= 1
    assert main([*args, "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_out_holding_a_source_is_refused_before_writing(tmp_path, ckpt, folders, capsys):
    """No --out that could replace a source: the folder of a single pair, a source folder (also
    spelled with '..' or through a link), or the folder a linked source points into."""
    ir, vi = folders
    d, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    cv2.imwrite(str(d / "ok_ir.png"), _gray(0))
    cv2.imwrite(str(d / "ok_vi.png"), _gray(1))
    cv2.imwrite(str(elsewhere / "ok_ir.png"), _gray(0))
    (elsewhere / "ok_vi.png").symlink_to(d / "ok_vi.png")
    (tmp_path / "link").symlink_to(vi)
    before = {f: _snapshot(f) for f in (ir, vi, d)}
    pair = ["--ir", str(d / "ok_ir.png"), "--vi", str(d / "ok_vi.png")]
    linked_pair = ["--ir", str(elsewhere / "ok_ir.png"), "--vi", str(elsewhere / "ok_vi.png")]
    both = ["--ir", str(ir), "--vi", str(vi)]
    cases = [
        (pair, d, d / "ok_ir.png"),
        (both, vi, vi / "a.png"),
        (both, ir / ".." / "vi", vi / "a.png"),
        (both, tmp_path / "link", vi / "a.png"),
        (linked_pair, d, (d / "ok_vi.png").resolve()),  # where the link points
    ]
    for args, out, source in cases:
        assert main(["-c", str(ckpt), *args, "--out", str(out), "-q"]) == 2
        assert capsys.readouterr().err == (
            f"metaloss fuse: error: --out {out} is the folder of the source image {source}, which fused images "
            "could overwrite; choose another folder\n"
        )
    assert {f: _snapshot(f) for f in (ir, vi, d)} == before


def test_out_elsewhere_with_the_sources_names_is_fine(tmp_path, ckpt, folders):
    ir, vi = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an older result")
    assert main(["-c", str(ckpt), "--ir", str(ir), "--vi", str(vi), "--out", str(out), "-q"]) == 0
    assert _read(out / "a.png").shape == (H, W, 3)  # replaced: it was an output, not a source


@pytest.mark.cuda
def test_fuse_on_cuda_writes_the_cpu_s_image_within_one_grey_level(tmp_path, ckpt):
    """The same model and pair on both devices: float rounding may move a pixel across a rounding edge."""
    cv2.imwrite(str(tmp_path / "ir.png"), _gray(0))
    cv2.imwrite(str(tmp_path / "vi.png"), _colour(1))
    for device in ("cpu", "cuda"):
        argv = ["--checkpoint", str(ckpt), "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png")]
        assert main([*argv, "--out", str(tmp_path / device), "--device", device, "-q"]) == 0
    cpu, cuda = _read(tmp_path / "cpu" / "vi.png"), _read(tmp_path / "cuda" / "vi.png")
    assert cpu.shape == cuda.shape == (H, W, 3)
    assert int(np.abs(cpu.astype(int) - cuda.astype(int)).max()) <= 1
