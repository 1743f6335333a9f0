"""metaloss.plot: panels per logged quantity, per-phase segments on an epoch axis, several runs."""

import json
from pathlib import Path

import pytest

from metaloss.cli import main
from metaloss.plot import PlotError, plot_runs, read_curves


def write_log(run_dir: Path, epochs: int = 2, meta: int = 2, learner: int = 3, scale: float = 1.0) -> Path:
    """A log as a run writes it: per epoch ``meta`` meta steps, ``learner`` learner steps, an epoch record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = [{"phase": "start"}]
    for e in range(1, epochs + 1):
        records += [{"phase": "meta", "epoch": e, "step": s, "outer_loss": scale * (e + s)} for s in range(1, meta + 1)]
        records += [
            {"phase": "learner", "epoch": e, "step": s, "learner_loss": scale * s} for s in range(1, learner + 1)
        ]
        records.append({"phase": "epoch", "epoch": e, "val/fusion/EN": 6.0 + e, "lr/learner": 1e-3})
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_each_phase_of_each_epoch_is_its_own_segment_within_its_epoch(tmp_path):
    curves = read_curves(write_log(tmp_path / "run", epochs=2, meta=2, learner=3))
    meta, learner = curves.steps["meta/outer_loss"], curves.steps["learner/learner_loss"]
    assert [len(s) for s in meta] == [2, 2] and [len(s) for s in learner] == [3, 3]
    for epoch, (m, lr) in enumerate(zip(meta, learner, strict=True), start=1):
        xs_meta, xs_learner = [x for x, _ in m], [x for x, _ in lr]
        assert all(epoch - 1 < x <= epoch for x in xs_meta + xs_learner)
        assert max(xs_meta) < min(xs_learner)  # the meta phase first; no segment crosses the other phase
    assert xs_learner[-1] == 2.0  # the last step ends its epoch
    assert curves.evals == {"fusion/EN": [(1, 7.0), (2, 8.0)]}  # validation per epoch; lr not plotted


def test_a_resumed_epoch_keeps_its_last_records(tmp_path):
    run_dir = write_log(tmp_path / "run", epochs=2, meta=2, learner=1)
    repeat = [{"phase": "resume", "epoch": 1}]
    repeat += [{"phase": "meta", "epoch": 2, "step": s, "outer_loss": -s} for s in (1, 2)]
    with (run_dir / "log.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in repeat))
    segments = read_curves(run_dir).steps["meta/outer_loss"]
    assert [[y for _, y in s] for s in segments] == [[2.0, 3.0], [-1.0, -2.0]]


def test_several_runs_in_one_figure(tmp_path, capsys):
    a, b = write_log(tmp_path / "a"), write_log(tmp_path / "b", epochs=3, scale=2.0)
    with pytest.raises(PlotError, match="several runs go into one figure: name it with --out"):
        plot_runs([a, b])
    out = tmp_path / "compare.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_runs([a]) == a / "curves.png"


def test_a_log_without_records_to_plot(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text(json.dumps({"phase": "start"}) + "\n")
    with pytest.raises(PlotError, match="has no step records to plot"):
        read_curves(run_dir)
