"""The kept-position ops (schema: csrc/ops/positions.cpp) behind serving.DeltaBank: a sparse
delta added at explicit ascending flat positions of a parameter in one pass, the overwritten
bits kept so `positions_put_` can write them back bit for bit.

Dispatcher ops `positions_add_`, `positions_put_`: typed wrappers and fake kernels. Reference:
``saved = target.view(-1)[positions]`` (bit copy) then ``SparseDelta.add_to_``'s element rule
(float32 / float64 math, one rounding, canonical NaN). Both ops check their positions (strictly
increasing, inside target) before writing and raise ValueError otherwise.
"""

from __future__ import annotations

import torch

from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["positions_add_", "positions_put_"]


def _positions(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(t).__name__}")
    return t  # its dtype, shape and values are checked by the op


def positions_add_(target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor,
                   saved: torch.Tensor | None = None) -> torch.Tensor:
    """``saved = target.flat[positions]`` (the bits), then ``target.flat[positions] += values``
    (one rounding per element). `target` contiguous; `positions` int64, strictly increasing;
    `values` 1-D of target's dtype. Returns `saved` (allocated when not given)."""
    _checks.tensor(target, "target")
    _positions(positions)
    _checks.tensor(values, "values")
    if saved is None:
        saved = torch.empty(positions.numel() if positions.dim() == 1 else 0, dtype=target.dtype,
                            device=target.device)
    _checks.tensor(saved, "saved")
    torch.ops.darex.positions_add_(target.detach(), positions, values.detach(), saved)
    return saved


def positions_put_(target: torch.Tensor, positions: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """``target.flat[positions] = saved`` (the bits): undoes :func:`positions_add_`. Returns target."""
    _checks.tensor(target, "target")
    _positions(positions)
    _checks.tensor(saved, "saved")
    torch.ops.darex.positions_put_(target.detach(), positions, saved)
    return target


@torch.library.register_fake("darex::positions_add_")
def _positions_add_fake(target, positions, values, saved):
    return None


@torch.library.register_fake("darex::positions_put_")
def _positions_put_fake(target, positions, saved):
    return None
