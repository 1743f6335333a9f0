"""The C-heap policy of a fusing process (``metaloss fuse --allocator``; see ``metaloss.utils.memory``).

The fast engine allocates the same full-size maps image after image: ``"keep"`` reuses freed memory
(no page faults; at most two heaps, so the band workers do not each keep one).  The torch engine's
chunk-by-chunk exact tiling otherwise fragments glibc's heap: ``"release"`` returns freed maps at
once (1280×1024 pair: 1.3 GiB peak instead of 2.1 GiB; docs/fuse.md).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from metaloss.utils.memory import AllocatorPolicy, set_allocator_policy

__all__ = ["fusing_allocator_policy", "set_fusing_allocator_policy"]


def fusing_allocator_policy(engines: Collection[Literal["torch", "fast"]], requested: str = "auto") -> AllocatorPolicy:
    """The policy for a process that runs networks with ``engines``: ``requested`` unless ``"auto"``,
    then ``"keep"`` when every network runs on the fast engine, else ``"release"``."""
    if requested == "auto":
        return "keep" if set(engines) == {"fast"} else "release"
    if requested not in ("keep", "release", "system"):
        raise ValueError(f"unknown allocator policy {requested!r}; choose 'auto', 'keep', 'release' or 'system'")
    return requested  # type: ignore[return-value]


def set_fusing_allocator_policy(
    engines: Collection[Literal["torch", "fast"]], requested: str = "auto"
) -> AllocatorPolicy:
    """Apply :func:`fusing_allocator_policy` to this process; returns the policy."""
    policy = fusing_allocator_policy(engines, requested)
    set_allocator_policy(policy)
    return policy
