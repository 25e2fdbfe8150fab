"""The row_moments op (schema and kernel notes: csrc/ops/row_moments.cpp): per-row first and
second moments of delta * x in one pass, the statistics of analytic q. Wrapper and fake kernel
here; reference: darex_ext/reference/row_moments.py.
"""

from __future__ import annotations

import torch

from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["row_moments"]


def side_vector(t, name: str, length: int, what: str, like: torch.Tensor) -> torch.Tensor:
    """A 1-D floating tensor of `length` on like's device, as float64; TypeError/ValueError naming
    `name` otherwise. Shared with analytic q, whose users call the same vector `x_mean`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must be 1-D of length {length} ({what}), got shape {tuple(t.shape)}")
    if t.device != like.device:
        raise ValueError(f"{name} must be on {like.device}, got {t.device}")
    return t.detach().to(torch.float64)


def row_moments(delta: torch.Tensor, x: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S_i = sum_j delta_ij * x_j and Q_i = sum_j (delta_ij * x_j)^2 per row, fused.

    The products c_ij = delta_ij * x_j are formed in registers and never stored: one read of
    `delta`, no temporaries of its size.

    Args:
        delta: 2-D [rows, cols] float32/float64/float16/bfloat16 tensor, CPU or CUDA (e.g. the
            weight delta of an nn.Linear, rows = out_features).
        x: 1-D [cols] floating tensor on delta's device (e.g. the signed mean input per channel);
            converted to float64.
        bias: optional 1-D [rows] floating tensor (e.g. the bias delta), treated as one more column
            whose input is 1: S_i += bias_i, Q_i += bias_i^2. Converted to float64.

    Returns:
        (S, Q), two float64 tensors of shape [rows] on delta's device. Accumulated in float64 for
        every input dtype: S is a signed sum that cancels (see csrc/ops/row_moments.cpp).
    """
    _checks.tensor(delta, "delta")
    if delta.dim() != 2:
        raise ValueError(f"delta must be 2-D [rows, cols], got shape {tuple(delta.shape)}")
    rows, cols = delta.shape
    x64 = side_vector(x, "x", cols, "delta.shape[1]", delta)
    b64 = None if bias is None else side_vector(bias, "bias", rows, "delta.shape[0]", delta)
    return torch.ops.darex.row_moments(delta.detach(), x64, b64)


@torch.library.register_fake("darex::row_moments")
def _row_moments_fake(delta, x, bias):
    rows = delta.shape[0]
    return (torch.empty((rows,), dtype=torch.float64, device=delta.device),
            torch.empty((rows,), dtype=torch.float64, device=delta.device))
