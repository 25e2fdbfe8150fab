"""The structural op (schema: csrc/ops/structural.cpp): structural DARE drops whole rows or
columns (slices along one dim) and rescales the rest. Wrapper and fake kernel here; reference:
darex_ext/reference/structural.py.

The mask follows docs/mask_spec.md with slices in place of elements: slice j (every element
whose index along `dim` is j) is kept iff element j of ``keep_mask(delta.shape[dim], p,
seed=seed)`` is True, so the structural mask of a tensor is the ordinary mask of a vector as
long as its slice count, and ``keep_mask`` regenerates it.
"""

from __future__ import annotations

import numbers

import torch

from ..seeds import as_int64, resolve_seed
from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["structural_prune_"]


def structural_prune_(delta: torch.Tensor, p: float, *, dim: int = 0, q=None, seed=0,
                      offset: int = 0, mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """Drop each slice of `delta` along `dim` with probability p; scale kept slices by 1/q.

    One Bernoulli draw per slice: with dim=0 a slice is a row (``delta[j]``), with dim=1 of a
    matrix a column (``delta[:, j]``); in general the slice j is ``delta.select(dim, j)``.
    Kept entries become ``x * (1/q)`` with 1/q computed in float32 (float64 for a float64
    delta) and one rounding to delta's dtype; dropped slices become exactly 0. The number of
    kept slices is Binomial(delta.shape[dim], 1 - p).

    Args:
        delta: float32/float64/float16/bfloat16 tensor with at least one dimension, CPU or CUDA.
            Mutated (a non-contiguous delta is processed through a contiguous copy).
        p: drop rate in [0, 1). p = 0 keeps everything.
        dim: the dimension whose indices are the slices (negative counts from the end).
        q: None (= 1 - p) or a number > 0: kept slices are scaled by 1/q.
        seed: int in [0, 2**64) or a torch.Generator to draw one from.
        offset: index of delta's first slice in a larger logical tensor, so a tensor pruned in
            pieces along `dim` gets the mask of the whole.
        mask: the mask spec, "skip" (version 2, default) or "philox" (version 1), as in
            :func:`darex_ext.prune_`.

    Returns:
        `delta`, for chaining. The kept slices are ``keep_mask(delta.shape[dim], p, seed=seed,
        offset=offset, mask=mask)``.
    """
    _checks.tensor(delta, "delta")
    _checks.not_tracking_grad(delta, "delta")
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if delta.dim() == 0:
        raise ValueError("dim: structural pruning needs a tensor with at least one dimension, "
                         "got a 0-d tensor")
    if not -delta.dim() <= int(dim) < delta.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor of {delta.dim()} dimensions")
    dim = int(dim) % delta.dim()
    if isinstance(q, torch.Tensor) and q.dim() >= 1:
        raise TypeError("q must be None or a number (per-slice q is not supported by this op)")
    _, q_scalar = _checks.rescale_q(q, p, delta)
    seed64 = as_int64(resolve_seed(seed))
    torch.ops.darex.structural_prune_(delta, p, dim, seed64, offset, q_scalar, spec)
    return delta


@torch.library.register_fake("darex::structural_prune_")
def _structural_prune_fake(delta, p, dim, seed, offset, q, mask_spec=2):
    return None
