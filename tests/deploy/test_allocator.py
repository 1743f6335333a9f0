"""The C-heap policy of a fusing process: keep for the fast engine alone, release otherwise, or as asked."""

import pytest

from metaloss.deploy.allocator import fusing_allocator_policy


def test_auto_keeps_for_the_fast_engine_and_releases_otherwise():
    assert fusing_allocator_policy({"fast"}) == "keep"
    assert fusing_allocator_policy({"fast", "torch"}) == "release"
    assert fusing_allocator_policy({"torch"}) == "release"
    assert fusing_allocator_policy({"fast"}, "system") == "system"
    with pytest.raises(ValueError, match="unknown allocator policy 'fast'"):
        fusing_allocator_policy({"fast"}, "fast")
