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
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    assert peak_rss_bytes() > 600 * 2**20
    code = "from metaloss.utils.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 400 * 2**20, child  # a bare interpreter with metaloss.utils imported
    del ballast
