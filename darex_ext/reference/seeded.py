"""Twin of the seeded storage op (darex_ext/ops/seeded.py): kept values in flat order."""

from __future__ import annotations

import torch

from ._storage import add_at
from .mask import keep_mask
from .prune import prune

__all__ = ["seeded_pack", "keep_count", "seeded_scatter"]


def seeded_pack(delta: torch.Tensor, p: float, q=None, *, seed: int = 0, offset: int = 0,
                mask: str = "skip") -> torch.Tensor:
    """Kept entries of prune(delta, p, q) in flat order."""
    keep = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device, mask=mask)
    return prune(delta, p, q, seed=seed, offset=offset, mask=mask)[keep]


def keep_count(numel: int, p: float, seed: int, *, offset: int = 0, mask: str = "skip") -> int:
    return int(keep_mask((numel,), p, seed, offset=offset, mask=mask).sum())


def seeded_scatter(out: torch.Tensor, values: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0,
                   alpha: float = 1.0, accumulate: bool = False, mask: str = "skip") -> torch.Tensor:
    """Out of place: the decoded tensor (accumulate=False) or out + alpha * delta."""
    keep = keep_mask(out.shape, p, seed, offset=offset, device=out.device, mask=mask)
    dense = torch.zeros_like(out)
    dense[keep] = values
    return add_at(out, keep, dense, alpha) if accumulate else dense
