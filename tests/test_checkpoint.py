"""The checkpoint format (atomic write, read as data only) and building plugins from config sections."""

import pytest
import torch

import metaloss
from metaloss.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    build_plugin,
    checkpoint_state,
    read_checkpoint,
    write_checkpoint,
    write_model_checkpoint,
)
from metaloss.models.dense import DenseFusion


def test_a_written_checkpoint_reads_back_as_data(tmp_path):
    state = checkpoint_state({"fusion": {"name": "dense"}}, {"learner": {"w": torch.ones(2)}, "epoch": 3}, world_size=1)
    write_checkpoint(tmp_path / "c.pt", state)
    back = read_checkpoint(tmp_path / "c.pt")
    assert back["format"] == CHECKPOINT_FORMAT and back["metaloss_version"] == metaloss.__version__
    assert (
        back["world_size"] == 1
        and back["trainer"]["epoch"] == 3
        and torch.equal(back["trainer"]["learner"]["w"], torch.ones(2))
    )
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_unusable_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        read_checkpoint(tmp_path / "empty.pt")
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a metaloss checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_a_model_checkpoint_builds_its_networks_back(tmp_path):
    torch.manual_seed(0)
    section = {"name": "dense", "width": 4, "growth": 4, "layers": 2}
    fusion = DenseFusion(width=4, growth=4, layers=2)
    state = read_checkpoint(write_model_checkpoint(tmp_path / "m.pt", fusion, section, stretch=False))
    assert state["config"] == {"learner": section, "eval": {"stretch": False}}
    built = build_plugin("fusion", state["config"]["learner"])
    built.load_state_dict(state["trainer"]["learner"])
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(built(x, x), fusion(x, x))
    with pytest.raises(ValueError, match="no fusion plugin section"):
        build_plugin("fusion", {"width": 4})
    with pytest.raises(ValueError):  # pydantic's ValidationError: an option the plugin does not have
        build_plugin("fusion", {"name": "dense", "nope": 1})
