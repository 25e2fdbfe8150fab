"""Twin of the rank_mask op (darex_ext/ops/rank_mask.py): ranks from a stable sort, thresholds in
float64 tensors, words from the mask spec's Philox (docs/mask_spec.md, "Rank mask")."""

from __future__ import annotations

import torch

from .mask import mask_words

__all__ = ["magnitude_ranks", "rank_keep_probability", "magnitude_rank_mask"]


def magnitude_ranks(delta: torch.Tensor) -> torch.Tensor:
    """int64 rank of every element within its row of ``delta.reshape(shape[0], -1)``: 0 for the
    smallest |x|, equal |x| by column."""
    rows = delta.reshape(delta.shape[0], -1)
    order = torch.sort(rows.abs(), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(rows.shape[1], device=delta.device).expand_as(order)
    return ranks.scatter_(1, order, positions).reshape(delta.shape)


def rank_keep_probability(ranks: torch.Tensor, cols: int, p_lo: float, p_hi: float) -> torch.Tensor:
    """p_lo + (p_hi - p_lo) * (rank / (cols - 1)) in float64, one IEEE op at a time."""
    fraction = ranks.double() / float(cols - 1) if cols > 1 else torch.full(ranks.shape, 0.5, dtype=torch.float64,
                                                                             device=ranks.device)
    return (fraction * (p_hi - p_lo)) + p_lo


def magnitude_rank_mask(delta: torch.Tensor, p_lo: float, p_hi: float, *, seed: int = 0,
                        offset: int = 0) -> torch.Tensor:
    if delta.numel() == 0:
        return torch.zeros(delta.shape, dtype=torch.bool, device=delta.device)
    cols = delta.numel() // delta.shape[0]
    keep_p = rank_keep_probability(magnitude_ranks(delta), cols, p_lo, p_hi)
    scaled = (1.0 - keep_p) * 4294967296.0  # exact: a power-of-two scale
    threshold = torch.where(scaled > 0.0, scaled.floor().clamp(max=4294967295.0), 0.0).to(torch.int64)
    u = mask_words(delta.numel(), seed, offset=offset, device=delta.device).reshape(delta.shape)
    return u >= threshold
