"""The benchmark entry point's document handling and tables (the runs themselves are benchmarks)."""

from benchmarks import inference_speed, meta_step
from benchmarks.__main__ import machine, write_section


def test_write_section_replaces_only_its_block(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\nintro\n\n<!-- BEGIN meta -->\nold\n<!-- END meta -->\n\nkept text\n")
    write_section(doc, "meta", "new table")
    write_section(doc, "inference", "first run")
    text = doc.read_text()
    assert "old" not in text and "<!-- BEGIN meta -->\nnew table\n<!-- END meta -->" in text
    assert "intro" in text and "kept text" in text
    assert text.rstrip().endswith("<!-- BEGIN inference -->\nfirst run\n<!-- END inference -->")
    write_section(doc, "inference", "second run")
    assert doc.read_text().count("BEGIN inference") == 1 and "second run" in doc.read_text()


def test_tables_and_machine():
    row = lambda impl, t, m: {
        "impl": impl,
        "inner_steps": 1,
        "cpu_s": [t],
        "wall_s": [t],
        "peak_bytes": m * 2**30,
        "rss_before_bytes": 2**30,
        "peak_kind": "rss",
    }
    data = {
        "results": [row("torch.func", 8.0, 4.0), row("reference", 10.0, 8.0)],
        "grad_rel_diff": {"1": {"torch.func": 0.0, "reference": 1e-6}},
    }
    text = meta_step.table(data)
    assert "| `torch.func` | 1 | 8.00 | 8.00 | 4.00 | 1.00 | 0.80 | 0.50 | 0.0e+00 |" in text
    inf = {
        "threads": 1,
        "device": "cpu",
        "flops_per_pixel": 1e5,
        "matmul_rates": [1e11, 2e11],
        "results": [
            {
                "engine": "fast",
                "size": [100, 200],
                "cpu_s": [0.05],
                "wall_s": [0.06],
                "peak_rss_bytes": 2**30,
                "max_abs_diff": 1e-7,
            }
        ],
    }
    assert "| 100×200 | `fast` | 0.05 | 0.01 | 5.0 | – | 1.00 | 1e-07 |" in inference_speed.table(inf)
    # paired samples: 2e9 FLOPs per pair against the rate measured just before each
    inf["results"][0]["paired"] = [
        {"rate": 1e11, "seconds": 0.05},
        {"rate": 2e11, "seconds": 0.04},
        {"rate": 1e11, "seconds": 0.06},
    ]
    assert inference_speed.paired_ratios(inf["results"][0], 1e5) == [2.5, 4.0, 3.0]
    assert "| 100×200 | `fast` | 0.05 | 0.01 | 5.0 | 3.0 (2.5–4.0) | 1.00 | 1e-07 |" in inference_speed.table(inf)
    assert "cores" in machine()


def test_sections_render_from_saved_results(tmp_path):
    import json

    from benchmarks.__main__ import main

    cond = {
        "date": "2026-01-01 00:00 UTC",
        "machine": "m",
        "versions": "v",
        "device": "cpu",
        "threads": 1,
        "repeats": 2,
        "quick": False,
        "load_start": "1.0/1.0/1.0",
        "load_end": "2.0/2.0/2.0",
    }
    row = lambda impl, t, m: {
        "impl": impl,
        "inner_steps": 1,
        "cpu_s": [t],
        "wall_s": [t],
        "peak_bytes": m * 2**30,
        "rss_before_bytes": 2**30,
        "peak_kind": "rss",
    }
    meta = {
        "crop": 256,
        "task": [240, 320],
        "conditions": cond,
        "results": [row("torch.func", 7.0, 4.0), row("higher", 9.0, 8.0), row("reference", 10.0, 8.0)],
        "grad_rel_diff": {"1": {"torch.func": 0.0, "higher": 1e-7, "reference": 2e-6}},
        "float64_check": {
            "crop": 64,
            "task": [64, 64],
            "grad_rel_diff": {"1": {"torch.func": 0.0, "reference": 3e-15}},
        },
    }
    inference = {
        "threads": 1,
        "device": "cpu",
        "flops_per_pixel": 1.2e5,
        "matmul_rates": [8e10, 9e10],
        "conditions": cond,
        "results": [
            {
                "engine": "fast",
                "size": [480, 640],
                "cpu_s": [1.0],
                "wall_s": [1.1],
                "peak_rss_bytes": 2**30,
                "max_abs_diff": 1e-7,
            }
        ],
    }
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps({"meta": meta, "inference": inference}))
    doc = tmp_path / "b.md"
    assert main(["--from-json", str(saved), "--doc", str(doc), "--parts", "meta", "inference"]) == 0
    text = doc.read_text()
    assert "time 0.70× the reference-style step (target ≤ 0.8: met), peak memory 0.50× (target ≤ 0.8: met)" in text
    assert "no slower than `higher` (7.00 vs 9.00 s)" in text
    assert "`reference` 3.0e-15" in text
    assert "`fast` at 480×640: 2.4× the floor (best pair / best rate) (target ≤ 3: met)" in text
    # the paired median over the target: not met, whatever the best pair says
    inference["results"][0]["paired"] = [
        {"rate": 8e10, "seconds": 1.5},
        {"rate": 9e10, "seconds": 1.3},
        {"rate": 9e10, "seconds": 1.2},
    ]
    saved.write_text(json.dumps({"meta": meta, "inference": inference}))
    assert main(["--from-json", str(saved), "--doc", str(doc), "--parts", "inference"]) == 0
    assert "2.4× the floor (best pair / best rate), 3.2× paired (median of 3) (target ≤ 3: not met)" in doc.read_text()
    assert "load average (1/5/15 min) 1.0/1.0/1.0 at the start, 2.0/2.0/2.0 at the end" in text
