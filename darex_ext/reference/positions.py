"""Twin of the kept-position ops (darex_ext/ops/positions.py), out of place."""

from __future__ import annotations

import torch

from ._storage import add_at

__all__ = ["positions_add", "positions_put"]


def positions_add(target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor):
    """(target with values added at the flat positions, the old values there)."""
    flat = target.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=target.device)
    mask[positions] = True
    dense = torch.zeros_like(flat)
    dense[positions] = values
    return add_at(flat, mask, dense, 1.0).view(target.shape), flat[positions].clone()


def positions_put(target: torch.Tensor, positions: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """target with the flat positions set to saved (the bits)."""
    int_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[target.element_size()]
    out = target.reshape(-1).clone()
    out.view(int_dtype)[positions] = saved.view(int_dtype)
    return out.view(target.shape)
