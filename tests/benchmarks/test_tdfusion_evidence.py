"""The evidence script's summary (no training: results as a finished run writes them)."""

from __future__ import annotations

import json

from benchmarks.tdfusion_evidence import main


def _row(task: str, seed: int, variant: str, metric: float, obj: float, bg: float) -> dict:
    return {
        "task": task,
        "seed": seed,
        "variant": variant,
        "metric": metric,
        "seconds": 10.0,
        "w_ir_objects": obj,
        "w_ir_background": bg,
        "w_ir_markings": 0.4,
        "w_ir_objects_swapped": 0.5,
        "w_ir_background_swapped": 0.5,
    }


def test_combine_summarises_runs_of_several_processes(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps(
            [_row("segmentation", s, "learned", 0.5 + s / 10, 0.8, 0.4) for s in (0, 1)]
            + [_row("segmentation", s, "fixed", 0.4, 0.5, 0.5) for s in (0, 1)]
        )
    )
    b.write_text(
        json.dumps([_row("detection", 0, "learned", 0.2, 0.6, 0.5), _row("detection", 0, "fixed", 0.3, 0.5, 0.5)])
    )
    assert main(["--combine", str(a), str(b), "--no-doc"]) == 0
    out = capsys.readouterr().out
    assert "| segmentation | mIoU | 0.550 | 0.400 | 0.800 | 0.400 | +0.400 |" in out
    assert "| detection | mAP50 | 0.200 | 0.300 | 0.600 | 0.500 | +0.100 |" in out
    assert "seeds [0, 1]" in out
