"""A real TDFusion detection run end to end: LLVIP's images and Pascal-VOC boxes (../shared/data/llvip_voc),
tiny crops and task images, a few steps, to its mAP50."""

import json

import pytest

from metaloss.config import load_config
from metaloss.experiment import run

pytest.importorskip("ultralytics")


@pytest.mark.shared_data
def test_detection_run_on_llvip_reports_map50(shared_data, tmp_path):
    cfg = load_config(
        {
            "name": "llvip-detection",
            "device": "cpu",
            "data": {"name": "llvip", "root": str(shared_data / "llvip_voc"), "crop_size": 32, "task_size": [64, 80]},
            "learner": {"name": "dense", "width": 4, "growth": 4, "layers": 1},
            "loss_generator": {"name": "tdfusion"},
            "objective": {"name": "detection"},
            "meta": {"epochs": 1, "meta_steps": 1, "learner_steps": 2},
            "eval": {"num_images": 2, "metrics": []},
        }
    )
    summary = run(cfg, tmp_path / "run", quiet=True)
    assert 0.0 <= summary["metrics"]["task/mAP50"] <= 1.0
    assert summary["metrics"]["task/mAP50-95"] <= summary["metrics"]["task/mAP50"]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records].count("learner") == 2
