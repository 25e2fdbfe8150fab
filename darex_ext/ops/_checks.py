"""Argument checks for the public wrappers: clear ValueError/TypeError naming the argument,
raised before any tensor is touched."""

from __future__ import annotations

import math
import numbers

import torch

VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in VALUE_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    return t


def not_tracking_grad(t: torch.Tensor, name: str) -> None:
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name} requires grad; an in-place prune would break autograd. "
            f"Call it under torch.no_grad() or pass {name}.detach()."
        )


def real(x, name: str) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


def drop_rate(p) -> float:
    p = real(p, "p")
    if not (0.0 <= p < 1.0):  # also rejects NaN
        raise ValueError(f"p (the drop rate) must be in [0, 1), got {p}")
    return p


def offset(o) -> int:
    if isinstance(o, bool) or not isinstance(o, numbers.Integral):
        raise TypeError(f"offset must be an int, got {type(o).__name__}")
    if not 0 <= int(o) < (1 << 63):
        raise ValueError(f"offset must be in [0, 2**63), got {o}")
    return int(o)


def same_layout(a: torch.Tensor, an: str, b: torch.Tensor, bn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{an} and {bn} must be on the same device, got {a.device} and {b.device}")


def rescale_q(q, p: float, like: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """Normalize q to (per-row tensor or None, scalar q) as the ops take them."""
    if q is None:
        return None, 1.0 - p
    if isinstance(q, torch.Tensor) and q.dim() >= 1:
        if q.dtype not in VALUE_DTYPES:
            raise TypeError(f"q must be a floating tensor, got {q.dtype}")
        if q.dim() != 1 or like.dim() == 0 or q.shape[0] != like.shape[0]:
            rows = like.shape[0] if like.dim() else "n/a (0-d tensor)"
            raise ValueError(f"q must be 1-D with length delta.shape[0] = {rows}, got shape {tuple(q.shape)}")
        if q.device != like.device:
            raise ValueError(f"q must be on {like.device}, got {q.device}")
        acc = torch.float64 if like.dtype == torch.float64 else torch.float32
        q_acc = q.detach().to(acc).contiguous()
        if q_acc.numel() and not bool(torch.all(torch.isfinite(q_acc) & (q_acc > 0))):
            raise ValueError("q must be finite and > 0 in every row")
        return q_acc, 1.0
    value = real(q, "q")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"q must be a finite number > 0, got {value}")
    # 1/q is computed in float32 for all but float64 tensors: keep it finite (pure Python,
    # so the check traces under torch.compile).
    smallest = 1e-300 if like.dtype == torch.float64 else 1e-30
    if value < smallest:
        raise ValueError(f"q must be >= {smallest:g} for a {like.dtype} tensor (1/q must be finite), got {value}")
    return None, value
