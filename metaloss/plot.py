"""Loss curves of a run (``metaloss plot RUN_DIR``)."""

from __future__ import annotations

import json
from pathlib import Path


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


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Meta-phase losses (inner, outer), learner-phase losses (fusion, task) and validation metrics
    against the global step; written to ``out`` (see :func:`_png_path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    step = 0
    epochs: list[dict] = []
    for r in records:
        phase = r.get("phase")
        if phase in ("meta", "learner"):
            step += 1
            for key, value in r.items():
                if key.endswith("_loss") and isinstance(value, (int, float)):
                    xs, ys = series.setdefault((phase, key), ([], []))
                    xs.append(step)
                    ys.append(float(value))
        elif phase == "epoch":
            epochs.append({**r, "_step": step})
    if not series:
        raise PlotError(f"{Path(run_dir) / 'log.jsonl'} has no step records to plot")
    out_path = _png_path(run_dir, out)
    val_keys = sorted({k for e in epochs for k in e if k.startswith("val/")})
    fig, axes = plt.subplots(1, 3 if val_keys else 2, figsize=(15 if val_keys else 10, 4), squeeze=False)
    for ax, phase in zip(axes[0], ("meta", "learner"), strict=False):
        for (p, key), (xs, ys) in sorted(series.items()):
            if p == phase:
                ax.plot(xs, ys, label=key, linewidth=1)
        ax.set_title(f"{phase} phase")
        ax.set_xlabel("step")
        ax.set_yscale("log" if all(y > 0 for (p, _), (_, ys) in series.items() if p == phase for y in ys) else "linear")
        ax.legend(fontsize=8)
    if val_keys:
        ax = axes[0][2]
        for key in val_keys:
            pts = [(e["epoch"], e[key]) for e in epochs if key in e]
            ax.plot(*zip(*pts, strict=True), marker="o", label=key[4:])
        ax.set_title("validation")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
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
