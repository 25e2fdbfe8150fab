"""Twin of the bitmask storage op (darex_ext/ops/bitmask.py): compressed-tensors' sparse-bitmask layout."""

from __future__ import annotations

import torch

from ._storage import add_at, row_view_2d

__all__ = ["bitmask_pack", "bitmask_unpack", "bitmask_scatter"]


def bitmask_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, bitmask, row_offsets) as compressed-tensors builds them, in torch."""
    view = row_view_2d(dense)
    rows, cols = view.shape
    mask = view != 0
    bpr = (cols + 7) // 8
    padded = torch.zeros((rows, bpr * 8), dtype=torch.int64, device=dense.device)
    padded[:, :cols] = mask.to(torch.int64)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.int64, device=dense.device)
    bitmask = (padded.reshape(rows, bpr, 8) * weights).sum(-1).to(torch.uint8)
    counts = mask.sum(1)
    return view[mask], bitmask, torch.cumsum(counts, 0) - counts


def bitmask_unpack(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    rows, bpr = bitmask.shape
    bits = (bitmask.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=bitmask.device)) & 1
    return bits.reshape(rows, bpr * 8)[:, :cols].bool()


def bitmask_scatter(out: torch.Tensor, values: torch.Tensor, bitmask: torch.Tensor, *,
                    alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    view = row_view_2d(out)
    mask = bitmask_unpack(bitmask, view.shape[1])
    dense = torch.zeros_like(view)
    dense[mask] = values
    res = add_at(view, mask, dense, alpha) if accumulate else dense
    return res.reshape(out.shape)
