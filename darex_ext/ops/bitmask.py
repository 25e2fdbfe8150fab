"""The bitmask storage op (schema: csrc/ops/bitmask.cpp): compressed-tensors' sparse-bitmask
layout (nonzero values, per-row packed bits, row offsets) over the 2-D view of a tensor.

Dispatcher ops `bitmask_pack`, `bitmask_scatter_`: typed wrappers and fake kernels.
Reference: darex_ext/reference/bitmask.py.

Thin on purpose: SparseDelta and compress/compress_dare (darex_ext.storage) check arguments
and turn kernel errors into FormatError. The scatter op validates every index it is given before it
writes, so calling it directly with untrusted tensors is safe (it raises ValueError).
"""

from __future__ import annotations

import torch

from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)
from ._row_view import row_view

__all__ = ["bitmask_pack", "bitmask_scatter_"]


def bitmask_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, bitmask, row_offsets) of `dense` in compressed-tensors' sparse-bitmask layout
    over the 2-D view: nonzeros in row-major order, uint8 [rows, ceil(cols / 8)] bits packed
    little-endian per row, int64 [rows] start of each row's values. Zeros (and -0.0) are dropped."""
    _checks.tensor(dense, "dense")
    return torch.ops.darex.bitmask_pack(dense.detach())


def bitmask_scatter_(out: torch.Tensor, values: torch.Tensor, bitmask: torch.Tensor,
                     row_offsets: torch.Tensor, *, alpha: float = 1.0,
                     accumulate: bool = False) -> torch.Tensor:
    """Decode (accumulate=False) or add (accumulate=True) a bitmask delta into `out`."""
    torch.ops.darex.bitmask_scatter_(out, values, bitmask, row_offsets, float(alpha), bool(accumulate))
    return out


# ---- fake kernels: the value count depends on the data, so it is a dynamic size.
@torch.library.register_fake("darex::bitmask_pack")
def _bitmask_pack_fake(dense):
    rows, cols = row_view(dense.shape)
    k = torch.library.get_ctx().new_dynamic_size()
    return (dense.new_empty((k,)), dense.new_empty((rows, (cols + 7) // 8), dtype=torch.uint8),
            dense.new_empty((rows,), dtype=torch.int64))


@torch.library.register_fake("darex::bitmask_scatter_")
def _bitmask_scatter_fake(out, values, bitmask, row_offsets, alpha, accumulate):
    return None
