"""Twin of the row_moments op (darex_ext/ops/row_moments.py), in float64."""

from __future__ import annotations

import torch

__all__ = ["row_moments"]


def row_moments(delta: torch.Tensor, x: torch.Tensor, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """S_i = sum_j c_ij, Q_i = sum_j c_ij^2 with c = delta * x in float64 (bias: one more column)."""
    c = delta.to(torch.float64) * x.to(torch.float64)
    if bias is not None:
        c = torch.cat([c, bias.to(torch.float64).reshape(-1, 1)], dim=1)
    return c.sum(dim=1), (c * c).sum(dim=1)
