"""Paired folders with awkward contents: thermal TIFFs, mixed channel layouts, non-ASCII names,
missing partners, empty folders, pairs of two sizes.  Each refusal names the file or folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from metaloss.config import ConfigError, load_config
from metaloss.data.benchmarks import PairFolders
from metaloss.data.folders import DatasetError, load_gray, match_pairs, to_unit_gray
from metaloss.data.io import ImageReadError

H, W = 8, 10


def write(path: Path, array: np.ndarray) -> Path:
    """Encode by extension and write with numpy (so non-ASCII names work everywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(path.suffix, array)
    assert ok
    buf.tofile(str(path))
    return path


def ramp(dtype=np.uint8, top=255) -> np.ndarray:
    return (np.arange(H * W).reshape(H, W) * top // (H * W - 1)).astype(dtype)


def test_16_bit_and_float_tiff_thermal_images_follow_the_normalisation_rule(tmp_path):
    kelvin = np.linspace(280.0, 310.0, H * W, dtype=np.float32).reshape(H, W)
    unit = np.linspace(0.1, 0.7, H * W, dtype=np.float32).reshape(H, W)
    raw16 = ramp(np.uint16, 65535)
    write(tmp_path / "ir" / "a.tif", raw16)  # 16-bit TIFF: v / 65535
    write(tmp_path / "ir" / "b.tiff", kelvin)  # float TIFF out of [0, 1]: min-max over the image
    write(tmp_path / "ir" / "c.tif", unit)  # float TIFF in [0, 1]: as is
    write(tmp_path / "ir" / "d.png", (raw16 >> 4).astype(np.uint16))  # 12 bits in 16: not rescaled
    for name in "abcd":
        write(tmp_path / "vi" / f"{name}.png", np.zeros((H, W), np.uint8))
    ds = PairFolders(str(tmp_path))
    got = {s["name"]: s["ir"][0].numpy() for s in (ds[i] for i in range(len(ds)))}
    np.testing.assert_allclose(got["a"], raw16 / 65535, atol=1e-7)
    np.testing.assert_allclose(got["b"], (kelvin - 280) / 30, atol=1e-6)
    assert got["b"].min() == 0 and got["b"].max() == 1
    np.testing.assert_allclose(got["c"], unit, atol=1e-7)
    assert got["d"].max() == pytest.approx(4095 / 65535)  # dark, as documented
    assert all(v.dtype == np.float32 for v in got.values())


def test_non_finite_float_tiff_is_refused_with_its_name(tmp_path):
    bad = np.ones((H, W), np.float32)
    bad[2, 3] = np.nan
    path = write(tmp_path / "ir" / "hot.tif", bad)
    with pytest.raises(ImageReadError, match=r"hot\.tif.*NaN or infinite"):
        load_gray(path)
    bad[2, 3] = np.inf
    write(path, bad)
    with pytest.raises(ImageReadError, match=r"hot\.tif"):
        load_gray(path)


def test_grayscale_rgb_and_rgba_mix_in_one_dataset(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (H, W, 1), dtype=np.uint8)], axis=2)
    gray16_rgb = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    layouts = {"g": (gray, rgb), "c": (rgb, rgba), "a": (rgba, gray), "w": (gray16_rgb, gray)}
    for name, (ir, vi) in layouts.items():
        write(tmp_path / "ir" / f"{name}.png", ir)
        write(tmp_path / "vi" / f"{name}.png", vi)
    ds = PairFolders(str(tmp_path))
    luma = cv2.cvtColor(rgb[..., ::-1].astype(np.float32), cv2.COLOR_BGR2GRAY) / 255
    for i in range(len(ds)):
        s = ds[i]
        assert s["ir"].shape == s["vi"].shape == (1, H, W)
        assert s["ir"].dtype == s["vi"].dtype == torch.float32
        assert 0 <= s["ir"].min() and s["ir"].max() <= 1
        ir, vi = layouts[s["name"]]
        for got, src in ((s["ir"], ir), (s["vi"], vi)):
            if src is gray:
                np.testing.assert_allclose(got[0].numpy(), gray / 255, atol=1e-6)
            elif src is rgb or src is rgba:  # alpha ignored
                np.testing.assert_allclose(got[0].numpy(), luma, atol=1e-5)
    assert to_unit_gray(rgba).shape == (H, W)


def test_non_ascii_file_names_pair_load_and_appear_in_errors(tmp_path):
    root = tmp_path / "données_热红外"
    write(root / "ir" / "图像 ü.png", ramp())
    write(root / "vi" / "图像 ü.jpg", np.stack([ramp()] * 3, axis=-1))
    write(root / "ir" / "ß.png", ramp())
    (root / "vi" / "ß.png").write_bytes(b"not an image")
    ds = PairFolders(str(root))
    assert [p.name for p in ds.pairs] == ["ß", "图像 ü"]
    s = ds[1]
    assert s["name"] == "图像 ü" and s["ir"].shape == (1, H, W)
    np.testing.assert_allclose(s["ir"][0].numpy(), ramp() / 255, atol=1e-6)
    with pytest.raises(ImageReadError) as info:
        ds[0]
    assert "ß.png" in str(info.value) and "données_热红外" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken"], ids=["zero-byte", "corrupt"])
def test_a_zero_byte_or_corrupt_image_names_the_file(tmp_path, content):
    write(tmp_path / "ir" / "a.png", ramp())
    write(tmp_path / "vi" / "a.png", ramp())
    (tmp_path / "vi" / "a.png").write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        PairFolders(str(tmp_path))[0]
    assert str(tmp_path / "vi" / "a.png") in str(info.value)


def test_files_without_a_partner_are_listed_on_either_side(tmp_path):
    write(tmp_path / "ir" / "both.png", ramp())
    write(tmp_path / "vi" / "both.png", ramp())
    for i in range(12):
        write(tmp_path / "vi" / f"only_vi_{i:02d}.png", ramp())
    write(tmp_path / "ir" / "only_ir.png", ramp())
    with pytest.raises(DatasetError) as info:
        PairFolders(str(tmp_path))
    message = str(info.value)
    assert f"{tmp_path / 'ir' / 'only_ir.png'} has no partner in {tmp_path / 'vi'}" in message
    assert f"{tmp_path / 'vi' / 'only_vi_00.png'} has no partner in {tmp_path / 'ir'}" in message
    assert "and 2 more" in message  # 1 + 10 listed of 13 and "allow_unpaired" in message
    assert [p.name for p in PairFolders(str(tmp_path), allow_unpaired=True).pairs] == ["both"]


def test_empty_and_missing_folders_name_the_folder(tmp_path):
    (tmp_path / "ir").mkdir()
    write(tmp_path / "vi" / "a.png", ramp())
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'ir'}: no images in this folder"):
        PairFolders(str(tmp_path))
    (tmp_path / "ir" / "notes.txt").write_text("no images here")  # not an image either
    with pytest.raises(DatasetError, match="no images in this folder"):
        match_pairs(tmp_path / "ir", tmp_path / "vi")
    write(tmp_path / "ir" / "b.png", ramp())
    with pytest.raises(DatasetError, match="share no file names"):
        match_pairs(tmp_path / "ir", tmp_path / "vi", allow_unpaired=True)
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nope'}: no such folder"):
        match_pairs(tmp_path / "nope", tmp_path / "vi")


def test_pairs_of_two_sizes_are_refused_unless_the_config_says_which_to_resize(tmp_path):
    write(tmp_path / "ir" / "a.png", np.full((6, 8), 200, np.uint8))
    write(tmp_path / "vi" / "a.png", np.full((12, 16, 3), 100, np.uint8))
    write(tmp_path / "masks" / "a.png", np.ones((12, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"ir/a\.png is \(6, 8\) but .*vi/a\.png is \(12, 16\).*mismatched_size"):
        PairFolders(str(tmp_path))[0]
    up = PairFolders(str(tmp_path), mismatched_size="resize_ir", masks="masks", class_names=("bg", "fg"))[0]
    assert up["ir"].shape == up["vi"].shape == (1, 12, 16) and up["mask"].shape == (12, 16)
    assert torch.allclose(up["ir"], torch.tensor(200 / 255)) and torch.allclose(up["vi"], torch.tensor(100 / 255))
    down = PairFolders(str(tmp_path), mismatched_size="resize_vi")[0]
    assert down["ir"].shape == down["vi"].shape == (1, 6, 8)
    assert torch.allclose(down["vi"], torch.tensor(100 / 255), atol=1e-6)
    with pytest.raises(DatasetError, match=r"masks/a\.png is \(12, 16\) but its images are \(6, 8\)"):
        PairFolders(str(tmp_path), mismatched_size="resize_vi", masks="masks")[0]
    # the option is a validated config key
    cfg = {
        "data": {"name": "folders", "root": str(tmp_path), "mismatched_size": "resize_ir"},
        "loss_generator": {"name": "conv"},
        "objective": {"name": "reconstruction"},
    }
    assert load_config(cfg).data.options["mismatched_size"] == "resize_ir"
    cfg["data"]["mismatched_size"] = "stretch"
    with pytest.raises(ConfigError, match=r"data\.mismatched_size.*'error', 'resize_ir' or 'resize_vi'"):
        load_config(cfg)
