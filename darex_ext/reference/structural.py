"""Twin of the structural op (darex_ext/ops/structural.py): whole slices kept by a 1-D mask."""

from __future__ import annotations

import torch

from .mask import acc_dtype, inverse_q, keep_mask, to_storage

__all__ = ["structural_prune"]


def structural_prune(delta: torch.Tensor, p: float, dim: int = 0, q=None, *, seed: int = 0,
                     offset: int = 0, mask: str = "skip") -> torch.Tensor:
    """Whole slices along `dim` kept by the 1-D mask of the slice count, scaled by 1/q, out of place."""
    q = 1.0 - p if q is None else q
    n = delta.shape[dim]
    keep = keep_mask((n,), p, seed, offset=offset, device=delta.device, mask=mask)
    shape = [1] * delta.dim()
    shape[dim] = n
    acc = acc_dtype(delta.dtype)
    scaled = to_storage(delta.to(acc) * inverse_q(q, delta.dtype, delta.device), delta.dtype)
    return torch.where(keep.reshape(shape), scaled, torch.zeros((), dtype=delta.dtype, device=delta.device))
