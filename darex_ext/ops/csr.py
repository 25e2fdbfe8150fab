"""The csr storage op (schema: csrc/ops/csr.cpp): compressed sparse rows over the 2-D view of a
tensor, column indices in the narrowest unsigned dtype for the column count.

Dispatcher ops `csr_pack`, `csr_scatter_`: typed wrappers and fake kernels.
Reference: darex_ext/reference/csr.py.

Thin on purpose: SparseDelta and compress/compress_dare (darex_ext.storage) check arguments
and turn kernel errors into FormatError. The scatter op validates every index it is given before it
writes, so calling it directly with untrusted tensors is safe (it raises ValueError).
"""

from __future__ import annotations

import torch

from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)
from ._row_view import column_dtype, row_view

__all__ = ["csr_pack", "csr_scatter_"]


def csr_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow, col, values) of the 2-D view of `dense`: int64 [rows + 1] row starts, column
    indices in the narrowest unsigned dtype for the column count, nonzero values."""
    _checks.tensor(dense, "dense")
    return torch.ops.darex.csr_pack(dense.detach())


def csr_scatter_(out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, *,
                 alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    """Decode (accumulate=False) or add (accumulate=True) a CSR delta into `out`."""
    torch.ops.darex.csr_scatter_(out, crow, col, values, float(alpha), bool(accumulate))
    return out


# ---- fake kernels: the value count depends on the data, so it is a dynamic size.
@torch.library.register_fake("darex::csr_pack")
def _csr_pack_fake(dense):
    rows, cols = row_view(dense.shape)
    k = torch.library.get_ctx().new_dynamic_size()
    return (dense.new_empty((rows + 1,), dtype=torch.int64),
            dense.new_empty((k,), dtype=column_dtype(cols)), dense.new_empty((k,)))


@torch.library.register_fake("darex::csr_scatter_")
def _csr_scatter_fake(out, crow, col, values, alpha, accumulate):
    return None
