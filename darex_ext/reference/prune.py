"""Twin of the prune op (darex_ext/ops/prune.py): DARE drop-and-rescale and the fused dare."""

from __future__ import annotations

import torch

from .mask import acc_dtype, inverse_q, keep_mask

__all__ = ["prune", "dare", "prune_l1"]


def _rows_view(t: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    # Broadcast a per-row inverse over the flattened trailing dims.
    if inv.dim() == 0:
        return inv
    return inv.reshape((-1,) + (1,) * (t.dim() - 1))


def prune(delta: torch.Tensor, p: float, q=None, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """DARE drop-and-rescale, out of place: kept * (1/q), dropped 0. q: None (1-p), float, 1-D tensor."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device)
    acc = acc_dtype(delta.dtype)
    inv = _rows_view(delta, inverse_q(q, delta.dtype, delta.device))
    scaled = (delta.to(acc) * inv).to(delta.dtype)
    return torch.where(mask, scaled, torch.zeros((), dtype=delta.dtype, device=delta.device))


def dare(finetuned: torch.Tensor, base: torch.Tensor, p: float, q=None, *, seed: int = 0,
         offset: int = 0) -> torch.Tensor:
    """base + prune(finetuned - base), in the accumulation dtype with one final rounding."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(finetuned.shape, p, seed, offset=offset, device=finetuned.device)
    acc = acc_dtype(finetuned.dtype)
    f, b = finetuned.to(acc), base.to(acc)
    inv = _rows_view(finetuned, inverse_q(q, finetuned.dtype, finetuned.device))
    kept = b + (f - b) * inv
    return torch.where(mask, kept, b).to(finetuned.dtype)


def prune_l1(delta: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Drop, then scale kept entries so the L1 norm is unchanged (no scaling if nothing is kept)."""
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device)
    a = delta.to(torch.float64).abs()
    total, kept = a.sum().item(), a[mask].sum().item()
    q = kept / total if kept > 0 and total > 0 else 1.0
    return prune(delta, p, q, seed=seed, offset=offset)
