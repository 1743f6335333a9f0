"""How the process's C heap (glibc malloc) serves PyTorch's large CPU tensors.

PyTorch has no caching allocator on the CPU: every activation is a ``malloc``/``free``.  glibc serves
blocks above its mmap threshold (at most 32 MiB, and a 256×256×128 float map is 32 MiB) by ``mmap``
and unmaps them on ``free``, so the next step's identical allocation is new memory that the kernel
must fault in and zero page by page.  For the Restormer networks at full resolution that system
time is most of a training step.  Two policies:

- ``"keep"``: never ``mmap``, never trim the heap, at most two heaps (arenas): freed activations are
  reused by the next step.
  Training steps ~1.5–3× faster; the peak stays what the largest step needed (plus fragmentation).
- ``"release"``: ``mmap`` every block from 1 MiB up, so freed memory goes back at once; lowest
  resident memory for chunk-by-chunk inference (``metaloss fuse``), at the price of the faults.
- ``"system"``: leave glibc's defaults.

``docs/benchmarks.md`` has the measured effect.  Elsewhere than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Literal

AllocatorPolicy = Literal["keep", "release", "system"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied: AllocatorPolicy = "system"


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def set_allocator_policy(policy: AllocatorPolicy) -> bool:
    """Apply ``policy`` to this process's heap; True when it took effect (glibc), False otherwise.

    The setting lasts for the process; ``"system"`` is a no-op (it does not undo an earlier call).
    """
    global _applied
    if policy not in ("keep", "release", "system"):
        raise ValueError(f"unknown allocator policy {policy!r}; choose 'keep', 'release' or 'system'")
    if policy == "system":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if policy == "keep":
        # at most two heaps (the main thread's and one the others share): as nothing is trimmed, every
        # band worker of the fast engine would otherwise keep a heap of its own, so the kept memory
        # would grow with the core count (+0.2 GB for a 1280×1024 pair with two workers; one shared
        # heap for all threads cost ~8 % of the time)
        ok = (
            bool(mallopt(_M_MMAP_MAX, 0))
            and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            and bool(mallopt(_M_ARENA_MAX, 2))
        )
    else:
        ok = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 20))
    if ok:
        _applied = policy
    return ok


def allocator_policy() -> AllocatorPolicy:
    """The last policy :func:`set_allocator_policy` applied in this process (``"system"`` if none)."""
    return _applied


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (or last exec'd), in bytes.

    Read from ``VmHWM`` in ``/proc/self/status`` where there is one: ``getrusage``'s ``ru_maxrss``
    also counts the parent's resident memory at the moment it spawned this process (Linux carries the
    old address space's high-water mark across ``exec``), which made a small child of a large pytest
    worker report the worker's 2 GiB.  Elsewhere, ``ru_maxrss``.
    """
    hwm_kib = proc_status_field("VmHWM")
    if hwm_kib is not None:
        return int(hwm_kib) * 1024
    import resource
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def proc_status_field(name: str) -> str | None:
    """The value of ``name`` in ``/proc/self/status`` (e.g. ``"VmHWM"`` -> ``"1234"``, in kB), or
    None where there is no such file or field (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.split()[0]
    except OSError:
        pass
    return None
