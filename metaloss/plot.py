"""Training curves of one or several runs (``metaloss plot RUN_DIR [RUN_DIR ...]``).

One small panel per logged quantity, as ultralytics' results.png: the step losses of the meta phase
(``meta/...``) and of the learner phase (``learner/...``), then the validation metrics of each
evaluation.  The x axis counts epochs: a step sits at its place within its epoch, so the meta phase
fills the first part of an epoch and the learner phase the rest; each phase of each epoch is its own
line segment, so no line is drawn across the other phase.  Several runs share the panels, one colour
each, with the legend above the panels, off the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the phases whose records are training steps, in the order they run within an epoch
STEP_PHASES = ("meta", "learner")
#: keys of a step record that are not plotted
_NOT_PLOTTED = {"time", "phase", "epoch", "step"}
#: panels per row of the figure
COLUMNS = 5


class PlotError(ValueError):
    pass


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: no such file (is {run_dir} a run directory?)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise PlotError(f"{path}:{number}: not a JSON record ({err.msg})") from None
    return records


@dataclass
class RunCurves:
    """What one run's log holds to plot: ``steps``: panel -> line segments of (epoch position, value)
    points, one per phase of an epoch; ``evals``: panel -> (epoch, value) points."""

    name: str
    steps: dict[str, list[list[tuple[float, float]]]] = field(default_factory=dict)
    evals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_curves(run_dir: str | Path) -> RunCurves:
    """The curves of ``run_dir``'s log.  A resumed run logs the steps of the epoch it was cut in again:
    the last record of each (phase, epoch, step) is kept."""
    records = read_log(run_dir)
    steps: dict[tuple[Any, ...], dict] = {}
    evals: dict[int, dict] = {}
    for index, r in enumerate(records):
        phase = r.get("phase")
        if phase in STEP_PHASES:
            steps[(phase, r.get("epoch", 1), r.get("step", f"#{index}"))] = r
        elif phase == "epoch" and isinstance(r.get("epoch"), int):
            evals[r["epoch"]] = r
    curves = RunCurves(Path(run_dir).resolve().name)
    by_epoch: dict[int, list[dict]] = {}
    for record in steps.values():
        by_epoch.setdefault(int(record.get("epoch", 1)), []).append(record)
    for epoch, epoch_records in sorted(by_epoch.items()):
        segments: dict[str, list[tuple[float, float]]] = {}
        previous = None
        for position, r in enumerate(epoch_records, start=1):
            if r["phase"] != previous:  # a new phase: new segments
                segments = {}
                previous = r["phase"]
            x = epoch - 1 + position / len(epoch_records)
            for key, value in r.items():
                if key in _NOT_PLOTTED or not _is_number(value):
                    continue
                panel = f"{r['phase']}/{key}"
                if panel not in segments:
                    segments[panel] = []
                    curves.steps.setdefault(panel, []).append(segments[panel])
                segments[panel].append((x, float(value)))
    for epoch, r in sorted(evals.items()):
        for key, value in r.items():
            if key.startswith("val/") and _is_number(value):
                curves.evals.setdefault(key[4:], []).append((epoch, float(value)))
    if not curves.steps and not curves.evals:
        raise PlotError(f"{Path(run_dir) / 'log.jsonl'} has no step records to plot")
    return curves


def _panels(runs: Sequence[RunCurves]) -> list[str]:
    """Step panels (meta phase first), then validation panels, each in the order first logged."""
    steps = list(dict.fromkeys(panel for run in runs for panel in run.steps))
    steps.sort(key=lambda panel: STEP_PHASES.index(panel.split("/", 1)[0]))
    evals = list(dict.fromkeys(panel for run in runs for panel in run.evals))
    return steps + [f"val/{panel}" for panel in evals]


def _last_epoch(runs: Sequence[RunCurves]) -> int:
    """The x axis' end: the last epoch any run logged (at least 1)."""
    xs = [x for run in runs for segments in run.steps.values() for segment in segments for x, _ in segment]
    xs += [epoch for run in runs for points in run.evals.values() for epoch, _ in points]
    return max([1, *(math.ceil(x) for x in xs)])


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """The curves of ``run_dirs`` in one figure, written to ``out`` (see :func:`_png_path`); one run
    may leave ``out`` out (its ``curves.png``), several need it."""
    if not run_dirs:
        raise PlotError("no run directory given")
    if len(run_dirs) > 1 and out is None:
        raise PlotError("several runs go into one figure: name it with --out FILE.png")
    runs = [read_curves(d) for d in run_dirs]
    out_path = _png_path(run_dirs[0], out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = _panels(runs)
    epochs = _last_epoch(runs)
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.0 * columns, 2.3 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        for index, run in enumerate(runs):
            colour = f"C{index % 10}"
            if panel.startswith("val/"):
                points = run.evals.get(panel[4:], [])
                if points:
                    ax.plot(*zip(*points, strict=True), color=colour, marker="o", markersize=3, linewidth=1)
            for segment in run.steps.get(panel, []):
                marker = "o" if len(segment) == 1 else None  # a phase of one step: a point, not a line
                ax.plot(*zip(*segment, strict=True), color=colour, marker=marker, markersize=2, linewidth=1)
        ax.set_title(panel, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, epochs + 0.1)  # the last epoch's points whole
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color=f"C{i % 10}", linewidth=2) for i in range(len(runs))]
    fig.legend(handles, [run.name for run in runs], loc="outside upper center", ncols=min(len(runs), 4), fontsize=9)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def _png_path(run_dir: str | Path, out: str | Path | None) -> Path:
    """Where the PNG goes: ``out``; ``out/curves.png`` when ``out`` is a folder (as ``cp`` puts a file
    into a folder); by default ``RUN_DIR/curves.png``.  Its folder is made now, before the plotting;
    a file in the way is a PlotError naming it."""
    path = Path(out) if out else Path(run_dir)
    if path.is_dir():
        path = path / "curves.png"
    in_the_way = next((p for p in path.parents if p.is_file()), None)
    if in_the_way is not None:
        raise PlotError(f"cannot write {path}: {in_the_way} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
