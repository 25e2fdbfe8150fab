"""Typed wrappers of the storage ops (torch.ops.darex.*): encode, decode and add per format.

Thin on purpose: SparseDelta and compress/compress_dare check arguments and turn kernel errors
into FormatError. The scatter ops validate every index they are given before they write, so
calling them directly with untrusted tensors is safe (they raise ValueError).
"""

from __future__ import annotations

import torch

from .. import _checks
from .. import _loader  # noqa: F401  (registers torch.ops.darex)
from ..seeds import as_int64, resolve_seed

__all__ = [
    "seeded_pack", "keep_count", "seeded_scatter_", "bitmask_pack", "bitmask_scatter_",
    "csr_pack", "csr_scatter_",
]


def seeded_pack(delta: torch.Tensor, p: float, q=None, *, seed=0, offset: int = 0) -> torch.Tensor:
    """The kept entries of ``prune_(delta.clone(), p, q, seed=seed, offset=offset)`` in flat
    order, computed in one fused pass (keep test, rescale, compaction) without the dense result.

    Returns a 1-D tensor of delta's dtype with ``keep_count(delta, p, seed=seed)`` entries.
    """
    _checks.tensor(delta, "delta")
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    q_rows, q_scalar = _checks.rescale_q(q, p, delta)
    return torch.ops.darex.seeded_pack(delta.detach(), p, as_int64(resolve_seed(seed)), offset,
                                       q_rows, q_scalar)


def keep_count(like: torch.Tensor, p: float, *, seed=0, offset: int = 0) -> int:
    """How many of like.numel() elements the mask of (seed, p, offset) keeps (data not read)."""
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    return int(torch.ops.darex.keep_count(like, p, as_int64(resolve_seed(seed)), offset))


def seeded_scatter_(out: torch.Tensor, values: torch.Tensor, p: float, *, seed=0, offset: int = 0,
                    alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    """Decode seeded values into `out` (accumulate=False: every element written, dropped ones 0)
    or add ``alpha * values`` at the kept positions (accumulate=True). Returns `out`."""
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    torch.ops.darex.seeded_scatter_(out, values, p, as_int64(resolve_seed(seed)), offset,
                                    float(alpha), bool(accumulate))
    return out


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
