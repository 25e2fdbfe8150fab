"""The topk op (schema: csrc/ops/topk.cpp): exact top-k masks, magnitude and WANDA pruning.

Dispatcher ops `topk_mask`, `topk_threshold`, `magnitude_prune_`, `wanda_prune_` (radix select
kernels): their typed wrappers and fake kernels. Reference: darex_ext/reference/topk.py.

Every selection keeps exactly k elements per slice; among equal scores at the cut the lower
flat index wins. Counts derived from a rate use Python's round (halves to even), as
torch.nn.utils.prune does. No sort, no index tensor and no score tensor is built.
"""

from __future__ import annotations

import numbers

import torch

from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["topk_mask", "topk_threshold", "magnitude_prune_", "wanda_prune_", "count_from_rate"]


def count_from_rate(p: float, n: int) -> int:
    """round(p * n) with halves to even: the number of entries a drop rate p removes from n."""
    return round(p * n)


def _int_arg(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _rate(p) -> float:
    p = _checks.real(p, "p")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"p (the drop rate) must be in [0, 1], got {p}")
    return p


def _optional_q(q, like: torch.Tensor) -> float | None:
    if q is None:
        return None
    _, value = _checks.rescale_q(q, 0.0, like)
    if isinstance(q, torch.Tensor) and q.dim() >= 1:
        raise TypeError("q must be a number here (per-row q is not supported by this op)")
    return value


def topk_mask(scores: torch.Tensor, k: int, *, dim: int | None = None, largest: bool = True) -> torch.Tensor:
    """Boolean mask with exactly k True per slice: the k largest (or smallest) scores.

    Args:
        scores: float32/float64/float16/bfloat16 tensor, CPU or CUDA. NaN raises ValueError.
        k: how many to select per slice, 0 <= k <= slice size.
        dim: None selects over the whole tensor; an int selects along that dimension (each slice
            is the 1-D fiber along `dim`); -1 is per row of the last dimension.
        largest: select the largest (True) or the smallest (False) scores.

    Ties: among equal scores at the cut, the lower flat index (the earlier element of the
    slice) is selected. -0.0 and +0.0 are equal.
    """
    _checks.tensor(scores, "scores")
    k = _int_arg(k, "k")
    if dim is None:
        if not 0 <= k <= scores.numel():
            raise ValueError(f"k must be in [0, {scores.numel()}] (numel), got {k}")
        return torch.ops.darex.topk_mask(scores, k, bool(largest), False)
    dim = _int_arg(dim, "dim")
    if scores.dim() == 0 or not -scores.dim() <= dim < scores.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor of {scores.dim()} dimensions")
    moved = scores.movedim(dim, -1)
    cols = moved.shape[-1]
    if not 0 <= k <= cols:
        raise ValueError(f"k must be in [0, {cols}] (size of dim {dim}), got {k}")
    rows = moved.numel() // cols if cols else 1
    flat = moved.reshape(rows, cols)
    mask = torch.ops.darex.topk_mask(flat, k, bool(largest), True)
    return mask.reshape(moved.shape).movedim(-1, dim)


def topk_threshold(scores: torch.Tensor, k: int, *, largest: bool = True) -> tuple[float, int, int]:
    """The cut of a whole-tensor top-k: (threshold score, count strictly beyond it, ties taken).

    `topk_mask(scores, k)` selects every score beyond the threshold plus the first `ties taken`
    elements equal to it, so beyond + ties_taken == k.
    """
    _checks.tensor(scores, "scores")
    k = _int_arg(k, "k")
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be in [1, {scores.numel()}] (numel), got {k}")
    value, beyond, ties = torch.ops.darex.topk_threshold(scores, k, bool(largest)).tolist()
    return value, int(beyond), int(ties)


def magnitude_prune_(delta: torch.Tensor, p: float, *, scope: str = "tensor", q=None) -> torch.Tensor:
    """Zero the round(p * n) entries of smallest |x|, in place; scale the kept by 1/q if q is given.

    Args:
        delta: float tensor, CPU or CUDA. Mutated. NaN raises ValueError (nothing written).
        p: drop rate in [0, 1].
        scope: "tensor" (n = numel) or "row" (n = row length; rows are dim 0, the rest flattened).
        q: None (no rescale) or a number > 0.

    Among equal |x| at the cut the lower index is kept.
    """
    _checks.tensor(delta, "delta")
    _checks.not_tracking_grad(delta, "delta")
    p = _rate(p)
    if scope not in ("tensor", "row"):
        raise ValueError(f"scope must be 'tensor' or 'row', got {scope!r}")
    qv = _optional_q(q, delta)
    if scope == "row":
        if delta.dim() == 0:
            raise ValueError("scope='row' needs a tensor with at least one dimension")
        n = delta.numel() // delta.shape[0] if delta.shape[0] else 0
    else:
        n = delta.numel()
    keep = n - count_from_rate(p, n)
    torch.ops.darex.magnitude_prune_(delta, keep, scope == "row", qv)
    return delta


def wanda_prune_(delta: torch.Tensor, act_norm: torch.Tensor, p: float, *, q=None) -> torch.Tensor:
    """WANDA on a delta: per output row i, zero the round(p * cols) entries of lowest
    |delta_ij| * act_norm_j, in place; scale the kept by 1/q if q is given.

    Args:
        delta: 2-D [out_features, in_features] float tensor. Mutated.
        act_norm: 1-D [in_features], e.g. the L2 norm of each input channel over calibration
            tokens; converted to float32 (float64 for a float64 delta).
        p: drop rate in [0, 1].
        q: None or a number > 0.

    Scores are computed on the fly in float32 (float64) and never materialized.
    """
    _checks.tensor(delta, "delta")
    _checks.not_tracking_grad(delta, "delta")
    if not isinstance(act_norm, torch.Tensor):
        raise TypeError(f"act_norm must be a torch.Tensor, got {type(act_norm).__name__}")
    if not act_norm.is_floating_point():
        raise TypeError(f"act_norm must be a floating tensor, got {act_norm.dtype}")
    if delta.dim() != 2:
        raise ValueError(f"delta must be 2-D [out_features, in_features], got shape {tuple(delta.shape)}")
    if act_norm.dim() != 1 or act_norm.shape[0] != delta.shape[1]:
        raise ValueError(f"act_norm must be 1-D of length {delta.shape[1]} (delta.shape[1]), got shape {tuple(act_norm.shape)}")
    if act_norm.device != delta.device:
        raise ValueError(f"act_norm must be on {delta.device}, got {act_norm.device}")
    p = _rate(p)
    qv = _optional_q(q, delta)
    acc = torch.float64 if delta.dtype == torch.float64 else torch.float32
    cols = delta.shape[1]
    keep = cols - count_from_rate(p, cols)
    torch.ops.darex.wanda_prune_(delta, act_norm.detach().to(acc).contiguous(), keep, qv)
    return delta


# ---- fake kernels: shapes, dtypes and devices only.
@torch.library.register_fake("darex::topk_mask")
def _topk_mask_fake(scores, k, largest, per_row):
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)


@torch.library.register_fake("darex::topk_threshold")
def _topk_threshold_fake(scores, k, largest):
    return torch.empty((3,), dtype=torch.float64, device=scores.device)


@torch.library.register_fake("darex::magnitude_prune_")
def _magnitude_prune_fake(delta, keep, per_row, q):
    return None


@torch.library.register_fake("darex::wanda_prune_")
def _wanda_prune_fake(delta, act_norm, keep, q):
    return None
