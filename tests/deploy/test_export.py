"""ONNX export of the fusion network: dynamic height and width, onnxruntime vs PyTorch."""

import os

import numpy as np
import pytest
import torch

from metaloss.deploy.export import export_onnx, verify_onnx
from metaloss.models.dense import DenseFusion
from metaloss.models.restormer import RestormerFusion

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, ir, vi):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["fused"], {"ir": ir.numpy(), "vi": vi.numpy()})[0]


def test_restormer_exports_with_dynamic_size_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    net = RestormerFusion()  # the reference size (59,856 parameters)
    for name, p in net.named_parameters():
        if "temperature" in name:
            p.data.uniform_(0.5, 4.0)  # not all ones, as after training
    path = export_onnx(net, tmp_path / "fusion.onnx")
    assert net.training  # the module's mode is restored
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "height", "width"], (value.name, dims)
    net.eval()
    g = torch.Generator().manual_seed(1)
    for h, w in ((48, 64), (75, 53)):  # two sizes, neither the 64×64 traced one; odd sizes included
        ir, vi = torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)
        with torch.no_grad():
            expected = net(ir, vi).numpy()
        got = _run(path, ir, vi)
        assert got.shape == (1, 1, h, w)
        assert np.abs(got - expected).max() <= 1e-4
    diffs = verify_onnx(net, path, sizes=[(40, 40), (33, 70)])
    assert max(diffs.values()) <= 1e-4


def test_batch_is_dynamic_too(tmp_path):
    torch.manual_seed(0)
    net = DenseFusion(width=4, growth=4, layers=2).eval()
    path = export_onnx(net, tmp_path / "d.onnx", opset=18)
    ir, vi = torch.rand(3, 1, 20, 30), torch.rand(3, 1, 20, 30)
    with torch.no_grad():
        assert np.abs(_run(path, ir, vi) - net(ir, vi).numpy()).max() <= 1e-5
    assert os.listdir(tmp_path) == ["d.onnx"]  # written atomically, no temporary file left
