"""Keep glibc from turning a streaming job into a model-sized heap.

glibc serves large allocations with mmap only until the first such block is freed; then it
raises its mmap threshold to that size and serves tensor-sized buffers from the heap. A delta
job frees a tensor-sized buffer per tensor while keeping a small compressed payload, which lands
in the freed hole: every hole is then too small for the next tensor, the heap grows by about a
tensor each time and resident memory approaches the model's size. A fixed threshold (which also
turns the dynamic adjustment off) sends every buffer of 1 MiB or more to mmap, returned to the
system when freed. No-op where mallopt is not glibc's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["fixed_mmap_threshold"]

_M_MMAP_THRESHOLD = -3
_done = False


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Set glibc's mmap threshold once per process; True if it took effect."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        _done = False
    return _done
