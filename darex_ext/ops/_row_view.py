"""The 2-D view every storage format works on, and the narrowest CSR column-index dtype.

Shared by the storage op wrappers, their fakes and darex_ext.storage, so the packed sizes are
defined once (see csrc/ops/storage_args.h for the kernels' side).
"""

from __future__ import annotations

import math

import torch

__all__ = ["row_view", "column_dtype"]


def row_view(shape) -> tuple[int, int]:
    """(rows, cols) of the 2-D view of a tensor of this shape: rows = shape[0], cols = the other
    dims flattened; 0-d and 1-d tensors are one row."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 1:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def column_dtype(cols: int) -> torch.dtype:
    """Narrowest dtype that holds every column index 0 .. cols - 1."""
    for dtype, limit in ((torch.uint8, 1 << 8), (torch.uint16, 1 << 16), (torch.uint32, 1 << 32)):
        if cols <= limit:
            return dtype
    return torch.int64
