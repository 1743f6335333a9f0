"""The one pairing rule (metaloss.data.pairs): same stem, any image extension, hidden files ignored,
two images of one stem in a folder refused."""

import pytest

from metaloss.data.pairs import PairingError, images_by_stem, list_images, pair_images


def _touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_images_pair_by_stem_whatever_their_extension(tmp_path):
    _touch(tmp_path / "a", "1.png", "2.JPG", "3.tif", "only_a.bmp", ".hidden.png", "notes.txt")
    _touch(tmp_path / "b", "1.jpg", "2.png", "3.tiff", "only_b.webp")
    (tmp_path / "a" / "sub.png").mkdir()  # a folder is not an image
    pairing = pair_images(tmp_path / "a", tmp_path / "b")
    assert [(s, a.name, b.name) for s, a, b in pairing.pairs] == [
        ("1", "1.png", "1.jpg"),
        ("2", "2.JPG", "2.png"),
        ("3", "3.tif", "3.tiff"),
    ]
    assert [p.name for p in pairing.only_a] == ["only_a.bmp"]
    assert [p.name for p in pairing.only_b] == ["only_b.webp"]
    assert [p.name for p in list_images(tmp_path / "a")] == ["1.png", "2.JPG", "3.tif", "only_a.bmp"]


def test_two_images_of_one_stem_and_a_missing_folder_are_refused(tmp_path):
    _touch(tmp_path / "a", "x.jpg", "x.png", "y.bmp", "y.png", "z.png")
    with pytest.raises(PairingError, match=r"several images with one name: x\.jpg and x\.png; y\.bmp and y\.png"):
        images_by_stem(tmp_path / "a")
    with pytest.raises(PairingError, match=rf"{tmp_path / 'nope'}: no such folder"):
        pair_images(tmp_path / "nope", tmp_path / "a")
