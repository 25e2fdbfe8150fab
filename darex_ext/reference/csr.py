"""Twin of the csr storage op (darex_ext/ops/csr.py): compressed sparse rows."""

from __future__ import annotations

import torch

from ._storage import add_at, row_view_2d

__all__ = ["csr_pack", "csr_scatter"]


def csr_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    view = row_view_2d(dense)
    rows, cols = view.shape
    mask = view != 0
    idx = mask.nonzero()
    counts = mask.sum(1)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=dense.device), torch.cumsum(counts, 0)])
    col_dtype = torch.uint8 if cols <= 256 else torch.uint16 if cols <= 65536 else torch.uint32
    return crow, idx[:, 1].to(col_dtype), view[mask]


def csr_scatter(out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, *,
                alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    view = row_view_2d(out)
    rows = torch.repeat_interleave(torch.arange(view.shape[0], device=out.device), crow.diff())
    mask = torch.zeros(view.shape, dtype=torch.bool, device=out.device)
    mask[rows, col.to(torch.int64)] = True
    dense = torch.zeros_like(view)
    dense[rows, col.to(torch.int64)] = values
    res = add_at(view, mask, dense, alpha) if accumulate else dense
    return res.reshape(out.shape)
