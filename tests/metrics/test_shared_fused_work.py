"""Work shared between metrics on the same fused image (``evaluate`` gives every metric of a chunk
the same tensor objects): NMI, Qncie and TE count the same joint histograms, Qc and Qy use the same
SSIM maps. Evaluated together they give each metric's own value, and a chunk's fused work does not
stay in the cache for the next chunk."""

from __future__ import annotations

import pytest
import torch

from metaloss.metrics import api, evaluate
from metaloss.metrics.api import _drop_fused_work

SHARING = ["NMI", "Qncie", "TE", "Qc", "Qy"]


def _image(seed: int, batch: int = 1, h: int = 29, w: int = 35) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand((batch, 3, h, w), generator=g, dtype=torch.float64) * 255.0)


@pytest.mark.parametrize("chunk_pixels", [api.CPU_CHUNK_PIXELS, 1])  # one chunk; one image per chunk
def test_metrics_together_match_each_alone(monkeypatch, chunk_pixels: int) -> None:
    monkeypatch.setattr(api, "CPU_CHUNK_PIXELS", chunk_pixels)
    fused, a, b = _image(1, batch=3), _image(2), _image(3)
    together = evaluate(fused, a, b, "mefb", SHARING)
    for name in SHARING:
        alone = evaluate(fused, a, b, "mefb", [name])[name]
        torch.testing.assert_close(together[name], alone, rtol=0, atol=0)


def test_drop_fused_work_keeps_source_entries() -> None:
    fused, source = torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    chunk = fused[0:1]
    cache: dict = {
        "chunk": (chunk, 1),
        "channel": (chunk[:, :1], 2),
        "source": (source, 3),
        "source-channel": (source[:, :1], 4),
    }
    _drop_fused_work(cache, [fused])
    assert sorted(cache) == ["source", "source-channel"]
