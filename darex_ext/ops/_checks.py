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
    # A meta tensor has no data for a kernel to read. FakeTensors (torch.compile, opcheck) report
    # the device they stand for, never "meta", so they pass.
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data); pass a CPU or CUDA tensor")
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


# The mask specs of docs/mask_spec.md by name, and the version number the dispatcher ops take.
MASK_SPECS = {"philox": 1, "skip": 2}
DEFAULT_MASK = "skip"


def mask_spec(mask) -> int:
    """The dispatcher's `mask_spec` for a `mask=` name ("skip" = version 2, "philox" = version 1)."""
    if not isinstance(mask, str):
        raise TypeError(f"mask must be a string, one of {tuple(MASK_SPECS)}, got {type(mask).__name__}")
    if mask not in MASK_SPECS:
        raise ValueError(f"mask must be one of {tuple(MASK_SPECS)}, got {mask!r}")
    return MASK_SPECS[mask]


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


# Plain floats computed once, so the checks trace under torch.compile as constants.
_Q_BOUNDS = {dt: (float(torch.finfo(dt).tiny), float(torch.finfo(dt).max)) for dt in (torch.float32, torch.float64)}


def acc_dtype(like: torch.Tensor) -> torch.dtype:
    """The type the kernels compute 1/q and x/q in: float64 for float64 tensors, else float32."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def q_bounds(like: torch.Tensor) -> tuple[float, float]:
    """[smallest, largest] q for a tensor like `like`: the positive normal numbers of its
    accumulation type, so q and 1/q are both finite there (a subnormal q has 1/q = inf)."""
    return _Q_BOUNDS[acc_dtype(like)]


def _q_rule(like: torch.Tensor, where: str = "") -> str:
    lo, hi = q_bounds(like)
    return (f"q must be in [{lo:.8g}, {hi:.8g}]{where} for a {like.dtype} tensor (positive, finite and "
            f"normal in {acc_dtype(like)}, so 1/q is finite)")


def rescale_q(q, p: float, like: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """Normalize q to (per-row tensor or None, scalar q) as the ops take them.

    One rule for a scalar and for every entry of a per-row q: q_bounds(like), compared exactly
    (in float64, which holds every floating dtype's values), so a value accepted here is a
    normal number of the accumulation type after rounding too.
    """
    if q is None:
        return None, 1.0 - p
    lo, hi = q_bounds(like)
    if isinstance(q, torch.Tensor) and q.dim() >= 1:
        if q.dtype not in VALUE_DTYPES:
            raise TypeError(f"q must be a floating tensor, got {q.dtype}")
        if q.dim() != 1 or like.dim() == 0 or q.shape[0] != like.shape[0]:
            rows = like.shape[0] if like.dim() else "n/a (0-d tensor)"
            raise ValueError(f"q must be 1-D with length delta.shape[0] = {rows}, got shape {tuple(q.shape)}")
        if q.device != like.device:
            raise ValueError(f"q must be on {like.device}, got {q.device}")
        q = q.detach()
        if q.numel():
            q64 = q.to(torch.float64)
            if not bool(torch.all((q64 >= lo) & (q64 <= hi))):  # also rejects NaN
                raise ValueError(_q_rule(like, " in every row"))
        return q.to(acc_dtype(like)).contiguous(), 1.0
    value = real(q, "q")
    # Pure Python, so the check traces under torch.compile.
    if not (lo <= value <= hi):  # also rejects NaN and inf
        raise ValueError(f"{_q_rule(like)}, got {value}")
    return None, value
