"""The rank_mask op (schema: csrc/ops/rank_mask.cpp): a seeded keep mask whose per-element keep
probability is linear in the element's magnitude rank within its row, the keep test of DELLA's
MAGPRUNE (Deep et al. 2024, https://github.com/declare-lab/della; mergekit's `della_magprune`).

Wrapper and fake kernel here; reference: darex_ext/reference/rank_mask.py; the keep rule is
docs/mask_spec.md, "Rank mask". Same seed, same mask on CPU and CUDA, for any thread count.
"""

from __future__ import annotations

import torch

from ..seeds import as_int64, resolve_seed
from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["magnitude_rank_mask"]


def _probability(v, name: str) -> float:
    v = _checks.real(v, name)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return v


def magnitude_rank_mask(delta: torch.Tensor, p_lo: float, p_hi: float, *, seed=0,
                        offset: int = 0) -> torch.Tensor:
    """Boolean keep mask: the element of magnitude rank k in its row is kept with probability
    ``p_lo + (p_hi - p_lo) * k / (cols - 1)``.

    Rows are ``delta.shape[0]`` rows of ``numel / shape[0]`` elements (a 1-D tensor is rows of one
    element: pass ``delta.reshape(1, -1)`` to rank it as a whole). Ranks count from 0 for the
    smallest |x|; equal |x| (-0.0 and +0.0 included) are ranked by column, lower first. A row of
    one element is kept with probability ``(p_lo + p_hi) / 2``. The keep test of element i is
    word ``offset + i`` of the mask spec against the drop threshold of one minus its probability,
    all in float64 (docs/mask_spec.md), so the mask is a pure function of (|x| order, seed).

    Args:
        delta: float32/float64/float16/bfloat16 tensor with at least one dimension, CPU or CUDA.
            Not modified; NaN raises ValueError.
        p_lo: keep probability of the smallest |x| of a row, in [0, 1].
        p_hi: keep probability of the largest |x| of a row, in [0, 1].
        seed: int in [0, 2**64) or a torch.Generator to draw one from.
        offset: flat index of delta's first element in a larger logical tensor (the ranks are
            still taken within delta's own rows).

    Returns:
        A bool tensor shaped like `delta`.
    """
    _checks.tensor(delta, "delta")
    p_lo = _probability(p_lo, "p_lo")
    p_hi = _probability(p_hi, "p_hi")
    offset = _checks.offset(offset)
    if delta.dim() == 0:
        raise ValueError("delta must have at least one dimension (reshape a 0-d tensor to (1, 1))")
    seed64 = as_int64(resolve_seed(seed))
    return torch.ops.darex.magnitude_rank_mask(delta.detach(), p_lo, p_hi, seed64, offset)


# ---- fake kernel: shape, dtype and device only.
@torch.library.register_fake("darex::magnitude_rank_mask")
def _magnitude_rank_mask_fake(delta, p_lo, p_hi, seed, offset):
    return torch.empty(delta.shape, dtype=torch.bool, device=delta.device)
