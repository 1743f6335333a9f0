"""Batching of paired samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def collate_pairs(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape; ``boxes`` ([N_i, 5] per sample) become one [sum N_i, 6] tensor whose
    first column is the image index in the batch (the ultralytics batch layout); strings become lists."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "boxes":
            out[key] = (
                torch.cat(
                    [
                        torch.cat([torch.full((len(b), 1), float(i)), b.reshape(-1, 5)], dim=1)
                        for i, b in enumerate(values)
                    ]
                )
                if values
                else torch.zeros(0, 6)
            )
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                names = [s.get("name", "?") for s in samples]
                raise ValueError(
                    f"cannot batch {key!r} of different sizes {sorted(shapes)} (samples {names}); "
                    "use batch_size = 1 or a dataset option that resizes"
                )
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
