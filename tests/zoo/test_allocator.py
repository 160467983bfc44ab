"""zoo.allocator: glibc's thresholds are raised once per process, and it never fails where it cannot apply."""
import ctypes.util
import platform

import pytest

from zoo import allocator


def test_applies_on_glibc_and_is_idempotent():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True


def test_without_a_c_library_it_is_a_no_op(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
