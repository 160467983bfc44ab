"""Keep freed memory in the process instead of handing it back to the kernel (glibc only; elsewhere a no-op).

Small-model training allocates and frees the same few-MB activation buffers thousands of times per second. glibc
serves each with a fresh ``mmap`` and returns it with ``munmap``, so every step pays page faults to touch memory
anew; this was ~15-20% of a training step on the 2-core test machine. Raising the mmap and trim thresholds lets
freed blocks be reused; the cost is that a worker's resident memory stays at its peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameters from glibc's malloc.h
_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB for this process; True if it applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
