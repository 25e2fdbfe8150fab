"""New large CPU tensors on transparent huge pages, for outputs allocated in Python
(``SparseDelta.to_dense``): the same rule as the ops' outputs in csrc/ops/fresh_output.cpp, which
says why. Outputs of 32 MiB or more, on Linux, get MADV_HUGEPAGE before anything writes them;
``DAREX_HUGE_PAGES=0`` turns it off (read once per process, as in C++)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

MADV_HUGEPAGE = 14  # linux/mman.h
ADVISE_MIN_BYTES = 32 << 20  # glibc serves these from a fresh mmap: no heap memory is advised
HUGE_PAGE = 2 << 20


@functools.cache
def _madvise():
    """libc's madvise, or None where huge pages are off or cannot be advised."""
    if not sys.platform.startswith("linux") or os.environ.get("DAREX_HUGE_PAGES") == "0":
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def huge_pages_on() -> bool:
    """Can large new CPU tensors be advised to use huge pages in this process?"""
    return _madvise() is not None


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Advise the whole 2 MiB pages inside t's memory to be huge pages (before t is first written).
    True when the advice was given; it is a hint, so False only costs speed."""
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu":
        return False
    begin = t.data_ptr()
    first = -(-begin // HUGE_PAGE) * HUGE_PAGE
    last = (begin + t.untyped_storage().nbytes()) // HUGE_PAGE * HUGE_PAGE
    return last > first and madvise(first, last - first, MADV_HUGEPAGE) == 0


def fresh_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype, device=device), on huge pages when 32 MiB or more on the CPU."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type == "cpu" and out.untyped_storage().nbytes() >= ADVISE_MIN_BYTES:
        advise_huge_pages(out)
    return out
