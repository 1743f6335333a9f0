"""``metaloss export`` (metaloss.cli.export): a checkpoint to ONNX, checked with onnxruntime."""

import pytest
import torch

import metaloss.pretrained as pretrained
from metaloss import cli
from metaloss.checkpoint import write_model_checkpoint
from metaloss.models.restormer import RestormerFusion

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def main(argv):
    return cli.main(["export", *argv])


def test_cli_exports_a_checkpoint_and_verifies(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    options = {"dim": 8, "heads": 2}
    ck = write_model_checkpoint(tmp_path / "ck.pt", RestormerFusion(**options), {"name": "restormer", **options})
    out = tmp_path / "sub" / "model.onnx"
    assert main(["--checkpoint", str(ck), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "onnxruntime vs PyTorch at 72×96" in text and "at 101×67" in text
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--onnx", str(out)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    monkeypatch.setattr(pretrained, "PACKAGE", "no_such_package_xyz")  # a metaloss without its pretrained model
    assert main(["--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "metaloss/pretrained/default.pt is not installed" in capsys.readouterr().err
