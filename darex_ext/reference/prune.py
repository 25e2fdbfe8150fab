"""Twin of the prune op (darex_ext/ops/prune.py): DARE drop-and-rescale and the fused dare."""

from __future__ import annotations

import torch

from .mask import acc_dtype, canonical_nan, inverse_q, keep_mask, to_storage

__all__ = ["prune", "dare", "prune_l1", "kept_abs_sum"]

# The summation order of kept_abs_sum (docs/mask_spec.md, "Numerics"; csrc/common/abs_sum.h).
ABS_SUM_LANES, ABS_SUM_GROUP, ABS_SUM_STEPS = 256, 4, 64
ABS_SUM_CHUNK = ABS_SUM_LANES * ABS_SUM_GROUP * ABS_SUM_STEPS


def _rows_view(t: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    # Broadcast a per-row inverse over the flattened trailing dims.
    if inv.dim() == 0:
        return inv
    return inv.reshape((-1,) + (1,) * (t.dim() - 1))


def prune(delta: torch.Tensor, p: float, q=None, *, seed: int = 0, offset: int = 0,
          mask: str = "skip") -> torch.Tensor:
    """DARE drop-and-rescale, out of place: kept * (1/q), dropped 0. q: None (1-p), float, 1-D tensor."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device, mask=mask)
    acc = acc_dtype(delta.dtype)
    inv = _rows_view(delta, inverse_q(q, delta.dtype, delta.device))
    scaled = to_storage(delta.to(acc) * inv, delta.dtype)
    return torch.where(mask, scaled, torch.zeros((), dtype=delta.dtype, device=delta.device))


def dare(finetuned: torch.Tensor, base: torch.Tensor, p: float, q=None, *, seed: int = 0,
         offset: int = 0, mask: str = "skip") -> torch.Tensor:
    """base + prune(finetuned - base), in the accumulation dtype with one final rounding; dropped
    entries are base's own bits."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(finetuned.shape, p, seed, offset=offset, device=finetuned.device, mask=mask)
    acc = acc_dtype(finetuned.dtype)
    f, b = finetuned.to(acc), base.to(acc)
    inv = _rows_view(finetuned, inverse_q(q, finetuned.dtype, finetuned.device))
    kept = to_storage(b + (f - b) * inv, finetuned.dtype)
    return torch.where(mask, kept, base)


def prune_l1(delta: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0, mask: str = "skip") -> torch.Tensor:
    """Drop, then scale kept entries so the L1 norm is unchanged (no scaling if nothing is kept)."""
    kept, total = kept_abs_sum(delta, p, seed=seed, offset=offset, mask=mask).tolist()
    q = kept / total if kept > 0 and total > 0 else 1.0
    return prune(delta, p, q, seed=seed, offset=offset, mask=mask)


def _ordered_sum(a: torch.Tensor) -> float:
    # The order of docs/mask_spec.md: chunks of ABS_SUM_CHUNK; in a chunk, lane j takes groups
    # j, j + LANES, ... of GROUP consecutive elements and adds them one by one from +0.0; a tree
    # combines the lanes; the chunk sums are added in order. Zero padding adds +0.0 to lanes
    # that are >= +0.0 (or NaN): no change.
    chunks = -(-a.numel() // ABS_SUM_CHUNK)
    padded = torch.zeros(chunks * ABS_SUM_CHUNK, dtype=torch.float64, device=a.device)
    padded[: a.numel()] = a
    steps = padded.reshape(chunks, ABS_SUM_STEPS, ABS_SUM_LANES, ABS_SUM_GROUP)
    lanes = torch.zeros(chunks, ABS_SUM_LANES, dtype=torch.float64, device=a.device)
    for s in range(ABS_SUM_STEPS):
        for g in range(ABS_SUM_GROUP):
            lanes = lanes + steps[:, s, :, g]
    width = ABS_SUM_LANES
    while width > 1:
        width //= 2
        lanes = lanes[:, :width] + lanes[:, width : 2 * width]
    total = 0.0
    for chunk_sum in lanes[:, 0].tolist():
        total += chunk_sum
    return total


def kept_abs_sum(delta: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0,
                 mask: str = "skip") -> torch.Tensor:
    """float64 [sum of |x| over kept entries, sum of |x|], in the documented order, bit for bit."""
    a = delta.reshape(-1).to(torch.float64).abs()
    keep = keep_mask((a.numel(),), p, seed, offset=offset, device=delta.device, mask=mask)
    kept = torch.where(keep, a, torch.zeros((), dtype=torch.float64, device=a.device))
    result = torch.tensor([_ordered_sum(kept), _ordered_sum(a)], dtype=torch.float64, device=delta.device)
    return torch.where(result.isnan(), canonical_nan(torch.float64, delta.device), result)
