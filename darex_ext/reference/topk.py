"""Twin of the topk op (darex_ext/ops/topk.py): exact top-k by a stable sort, magnitude and WANDA."""

from __future__ import annotations

import torch

from .mask import acc_dtype, inverse_q, to_storage

__all__ = ["topk_mask", "magnitude_prune", "wanda_prune"]


def topk_mask(scores: torch.Tensor, k: int, dim=None, largest: bool = True) -> torch.Tensor:
    """k per slice by a stable sort: equal scores keep index order, so the lower index wins."""
    if dim is None:
        flat = scores.reshape(1, -1)
    else:
        flat = scores.movedim(dim, -1).reshape(-1, scores.shape[dim]) if scores.numel() else None
        if flat is None:
            return torch.zeros_like(scores, dtype=torch.bool)
    order = torch.sort(flat.double(), dim=-1, descending=largest, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, order[:, :k], True)
    if dim is None:
        return mask.reshape(scores.shape)
    return mask.reshape(scores.movedim(dim, -1).shape).movedim(-1, dim)


def magnitude_prune(delta: torch.Tensor, p: float, scope: str = "tensor", q=None) -> torch.Tensor:
    rows = delta.reshape(1, -1) if scope == "tensor" else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    keep = topk_mask(rows.abs(), n - round(p * n), dim=1)
    return _keep_scaled(rows, keep, q).reshape(delta.shape)


def wanda_prune(delta: torch.Tensor, act_norm: torch.Tensor, p: float, q=None) -> torch.Tensor:
    acc = acc_dtype(delta.dtype)
    scores = delta.to(acc).abs() * act_norm.to(acc)
    n = delta.shape[1]
    keep = topk_mask(scores, n - round(p * n), dim=1)
    return _keep_scaled(delta, keep, q)


def _keep_scaled(x: torch.Tensor, keep: torch.Tensor, q) -> torch.Tensor:
    if q is not None:
        x = to_storage(x.to(acc_dtype(x.dtype)) * inverse_q(q, x.dtype, x.device), x.dtype)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
