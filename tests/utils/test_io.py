"""Atomic writes: an interruption at any point leaves the old file or the new one, never a mix."""

from __future__ import annotations

import pytest
import torch

import metaloss.utils.io as io_mod
from metaloss.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

_REAL_FDOPEN = io_mod.os.fdopen


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, where):
    target = tmp_path / "state.pt"
    atomic_write_bytes(target, b"old contents")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "write":
        monkeypatch.setattr(io_mod.os, "fdopen", lambda fd, mode: _Breaking(fd))
    else:
        monkeypatch.setattr(io_mod.os, where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new contents that never land")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


class _Breaking:
    """A file object that writes half the data, then is interrupted."""

    def __init__(self, fd):
        self.f = _REAL_FDOPEN(fd, "wb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise KeyboardInterrupt


def test_atomic_writes_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"b": 1})
    assert (tmp_path / "a" / "x.json").read_text() == '{\n  "b": 1\n}\n'
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt")["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "w.pt"]


def test_atomic_writes_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    import os

    from metaloss.utils.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_same_path_sees_through_dots_and_links(tmp_path):
    import os

    from metaloss.utils.io import clashing_input, same_path

    (tmp_path / "src").mkdir()
    image = tmp_path / "src" / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "src")
    os.link(image, tmp_path / "hard.png")
    assert same_path(tmp_path / "other" / ".." / "src", tmp_path / "src")  # '..' over a folder that does not exist
    assert same_path(tmp_path / "link" / "a.png", image)
    assert same_path(tmp_path / "hard.png", image)  # only os.path.samefile sees a hard link
    assert not same_path(tmp_path / "new.png", image)
    assert not same_path(tmp_path / "out" / "a.png", image)  # same name, other folder
    inputs = [tmp_path / "src", image]
    assert clashing_input(tmp_path / "link", inputs) == tmp_path / "src"
    assert clashing_input(tmp_path / "link" / "a.png", inputs) == image
    assert clashing_input(tmp_path / "results.json", inputs) is None
