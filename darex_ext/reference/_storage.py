"""What the three storage twins share: the 2-D row view and the accumulate rule of the scatters."""

from __future__ import annotations

import torch

from .mask import acc_dtype, to_storage

__all__ = ["row_view_2d", "add_at"]


def row_view_2d(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view of the storage formats: rows = dim 0, the rest flattened; 0-d/1-d: one row."""
    if t.dim() <= 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1) if t.shape[0] else t.reshape(0, int(torch.Size(t.shape[1:]).numel()))


def add_at(out: torch.Tensor, mask: torch.Tensor, dense: torch.Tensor, alpha: float) -> torch.Tensor:
    # round(out + alpha * v) in the accumulation dtype at kept positions (NaN -> canonical); the
    # rest unchanged (bits copied).
    acc = acc_dtype(out.dtype)
    a = torch.tensor(alpha, dtype=acc, device=out.device)
    summed = to_storage(out.to(acc) + a * dense.to(acc), out.dtype)
    return torch.where(mask, summed, out)
