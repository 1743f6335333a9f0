"""The allocator policies: applied on glibc, refused when unknown, and numerically invisible."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metaloss.utils import memory

_STEP = """
import sys, torch
from metaloss.utils.memory import set_allocator_policy, allocator_policy
applied = set_allocator_policy(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
from metaloss.models.restormer import RestormerFusion
net = RestormerFusion(dim=8, heads=2, blocks_per_modality=1, fused_blocks=1)
a, b = torch.rand(2, 1, 40, 36), torch.rand(2, 1, 40, 36)
for _ in range(2):  # the second step reuses (or not) the first step's freed blocks
    net.zero_grad()
    y = net(a, b)
    y.square().mean().backward()
grads = torch.cat([p.grad.flatten() for p in net.parameters()])
print(applied, allocator_policy(), repr(float(y.sum())), repr(float(grads.double().sum())))
"""


def _run(policy: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _STEP, policy], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown allocator policy 'fast'"):
        memory.set_allocator_policy("fast")  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_policies_apply_and_leave_results_bitwise_equal() -> None:
    keep, release, system = _run("keep"), _run("release"), _run("system")
    assert keep[:2] == ["True", "keep"]
    assert release[:2] == ["True", "release"]
    assert system[:2] == ["False", "system"]
    assert keep[2:] == release[2:] == system[2:]


def test_peak_rss_is_this_processs_own_not_its_parents():
    """A child spawned by a process holding a large buffer reports its own peak, not the parent's
    (``ru_maxrss`` carries the parent's high-water mark across exec on Linux)."""
    import subprocess
    import sys

    import pytest

    from metaloss.utils.memory import peak_rss_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("the inherited high-water mark is a Linux behaviour")
    ballast = bytearray(600 * 2**20)  # resident: written below
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert peak_rss_bytes() > 600 * 2**20
    code = "from metaloss.utils.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 400 * 2**20, child  # a bare interpreter with metaloss.utils imported
    del ballast


_THREADS = """
import ctypes, sys, threading, torch
from metaloss.utils.memory import set_allocator_policy
set_allocator_policy(sys.argv[1])
torch.set_num_threads(1)
n = 6
ready, done = threading.Barrier(n + 1), threading.Event()

def work():  # six threads at once, each holding tensors while the others allocate theirs
    ts = [torch.ones(2**18) for _ in range(4)]
    ready.wait()
    done.wait()
    del ts

threads = [threading.Thread(target=work) for _ in range(n)]
for t in threads:
    t.start()
ready.wait()
ctypes.CDLL("libc.so.6").malloc_stats()  # per-heap ("Arena i:") statistics, on stderr
done.set()
for t in threads:
    t.join()
"""


def _heaps(policy: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _THREADS, policy], capture_output=True, text=True, check=True)
    return proc.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_allows_two_heaps_not_one_per_thread() -> None:
    """Under "keep" nothing is trimmed, so whatever a heap once held stays resident; with glibc's
    default of a heap (arena) per thread, the kept memory of the fast engine's band workers grew with
    their number (a 1280×1024 pair: 1.37–1.58 GiB with two workers, 1.35 with the cap)."""
    assert _heaps("system") > 2  # the default: threads get heaps of their own
    assert _heaps("keep") <= 2
