"""The label scan before a run, as ultralytics scans its labels: problems with the data are found
before the first step, and reported together, each naming its file.

A dataset says which label keys its samples hold (``label_keys``), can be told to read only some
(``use_labels(keys)``) and reads every label file once (``scan_labels() -> problem lines``); a task
names the label keys it trains on (``targets``).  The core compares the two and knows no task:
a third-party dataset or task without these attributes is taken as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metaloss.data.folders import DatasetError

#: problem lines shown in the message; the rest are counted
SHOWN = 10


def check_labels(dataset: Any, targets: Sequence[str] | None, what: str) -> None:
    """Fit ``dataset`` to a task that trains on the label keys ``targets`` (None: every key the
    dataset gives) and scan those labels; one ``DatasetError`` naming ``what`` (e.g. ``data (train)``)
    and the files at fault when the task needs labels the dataset lacks or a label file is missing,
    unreadable or holds a class id out of range."""
    provided = getattr(dataset, "label_keys", None)
    if targets is not None and provided is not None:
        lacking = [key for key in targets if key not in provided]
        if lacking:
            has = f"only {', '.join(provided)}" if provided else "no labels"
            raise DatasetError(
                f"{what}: the objective trains on {', '.join(lacking)} but the dataset gives {has}; "
                "use a labelled dataset (or its labels option), or an objective that needs no labels"
            )
        use = getattr(dataset, "use_labels", None)
        if use is not None:
            use(targets)
    scan = getattr(dataset, "scan_labels", None)
    problems = scan() if scan is not None else []
    if problems:
        raise DatasetError(format_problems(what, problems))


def format_problems(what: str, problems: Sequence[str]) -> str:
    """The first :data:`SHOWN` problem lines under a heading with their count, then how many more."""
    more = len(problems) - SHOWN
    return (
        f"{what}: {len(problems)} label problem(s) found before training:\n"
        + "\n".join(f"  {line}" for line in problems[:SHOWN])
        + (f"\n  ... and {more} more" if more > 0 else "")
    )
