"""The prune op (schema: csrc/ops/prune.cpp): DARE's seeded drop-and-rescale.

Dispatcher ops `prune_`, `dare`, `dare_out`, `keep_mask`, `kept_abs_sum`: their typed wrappers,
fake kernels (torch.compile, opcheck) and the autograd of `dare`. Every random mask is the pure
function of (seed, flat index) of docs/mask_spec.md, so the same seed gives the same mask on CPU
and CUDA, for any thread count, and `keep_mask` regenerates it. `mask=` picks the spec: "skip"
(version 2, the default: cost proportional to the rarer outcome for p < 1/8 or p > 7/8, version
1's mask for 1/8 <= p <= 7/8) or "philox" (version 1). Reference: darex_ext/reference/prune.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..seeds import as_int64, resolve_seed
from . import _checks
from . import _library  # noqa: F401  (loads _C, which registers torch.ops.darex)

__all__ = ["prune_", "dare", "keep_mask"]

_RESCALE_MODES = ("q", "none", "l1")


def prune_(delta: torch.Tensor, p: float, q=None, *, seed=0, rescale: str = "q",
           offset: int = 0, mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """Drop each entry of `delta` with probability p and rescale the kept ones, in place.

    One fused pass over memory, no temporaries (a non-contiguous `delta` is processed through a
    contiguous copy). The mask is `keep_mask(delta, p, seed=seed, offset=offset, mask=mask)`.

    Args:
        delta: float32/float64/float16/bfloat16 tensor of any shape, CPU or CUDA. Mutated.
        p: drop rate in [0, 1). p = 0 keeps everything.
        q: rescale so kept entries become x / q. None means 1 - p (plain DARE); a float (DAREx-q);
            or a 1-D tensor of per-row q with length delta.shape[0] (rows = dim 0, the other dims
            flattened), e.g. from ``darex_ext.algorithms.analytic_q``.
        seed: int in [0, 2**64) or a torch.Generator to draw one from.
        rescale: "q" (default, scale by 1/q), "none" (kept entries unchanged; q must be None), or
            "l1" (kept entries scaled so the L1 norm of delta is unchanged, as mergekit's
            rescale_norm="l1"; q must be None; nothing is scaled when every entry is dropped).
        offset: flat index of delta's first element in a larger logical tensor, for streaming a
            tensor in pieces with the mask of the whole.
        mask: the mask spec (docs/mask_spec.md): "skip" (version 2, default: the stripe walk
            for p < 1/8 or p > 7/8, version 1's mask for 1/8 <= p <= 7/8; at p > 7/8 only the
            kept entries are read, the rest is zero-filled) or "philox" (version 1).

    Returns:
        `delta`, for chaining.
    """
    _checks.tensor(delta, "delta")
    _checks.not_tracking_grad(delta, "delta")
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    if rescale not in _RESCALE_MODES:
        raise ValueError(f"rescale must be one of {_RESCALE_MODES}, got {rescale!r}")
    if rescale != "q" and q is not None:
        raise ValueError(f"q must be None when rescale={rescale!r}")
    seed64 = as_int64(resolve_seed(seed))
    if rescale == "none":
        q_rows, q_scalar = None, 1.0
    elif rescale == "l1":
        kept, total = torch.ops.darex.kept_abs_sum(delta, p, seed64, offset, spec).tolist()
        q_rows, q_scalar = None, (kept / total if kept > 0.0 and total > 0.0 else 1.0)
    else:
        q_rows, q_scalar = _checks.rescale_q(q, p, delta)
    torch.ops.darex.prune_(delta, p, seed64, offset, q_rows, q_scalar, spec)
    return delta


def dare(finetuned: torch.Tensor, base: torch.Tensor, p: float, q=None, *, seed=0,
         out: torch.Tensor | None = None, offset: int = 0, mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """``base + prune(finetuned - base, p, q)`` fused: reads two tensors, writes one.

    Computed in float32 (float64 for float64 inputs) with one rounding to the dtype; dropped
    entries are exactly `base`. Same mask and q semantics as :func:`prune_`. Differentiable:
    gradients flow to both inputs through the same seeded mask.

    Args:
        finetuned, base: tensors of the same shape, dtype and device.
        p, q, seed, offset, mask: as in :func:`prune_`.
        out: optional tensor (same shape, dtype, device) to write into; may be `finetuned` or
            `base` itself. With mask="skip" and p > 7/8, ``out=base`` reads and writes only
            the kept entries.

    Returns:
        The merged tensor (`out` when given).
    """
    _checks.tensor(finetuned, "finetuned")
    _checks.tensor(base, "base")
    _checks.same_layout(finetuned, "finetuned", base, "base")
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    q_rows, q_scalar = _checks.rescale_q(q, p, finetuned)
    seed64 = as_int64(resolve_seed(seed))
    if out is None:
        return torch.ops.darex.dare(finetuned, base, p, seed64, offset, q_rows, q_scalar, spec)
    _checks.tensor(out, "out")
    _checks.same_layout(finetuned, "finetuned", out, "out")
    _checks.not_tracking_grad(out, "out")
    for name, t in (("finetuned", finetuned), ("base", base)):
        if _partially_overlaps(out, t):
            raise ValueError(f"out partially overlaps {name}; pass {name} itself or a separate tensor")
    torch.ops.darex.dare_out(finetuned, base, p, seed64, offset, q_rows, q_scalar, out, spec)
    return out


def keep_mask(like_or_shape, p: float, *, seed=0, device=None, offset: int = 0,
              mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """The exact boolean keep mask that :func:`prune_` and :func:`dare` use.

    Args:
        like_or_shape: a tensor (its shape and device are used, its data is not read) or a shape.
        p, seed, offset, mask: as in :func:`prune_`.
        device: where to build the mask (default: the tensor's device, else CPU).
    """
    if isinstance(like_or_shape, torch.Tensor):
        shape, dev = like_or_shape.shape, like_or_shape.device
    else:
        shape, dev = _shape_arg(like_or_shape), torch.device("cpu")
    dev = torch.device(device) if device is not None else dev
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    seed64 = as_int64(resolve_seed(seed))
    like = torch.empty((), dtype=torch.bool, device=dev).expand(shape)  # no storage per element
    return torch.ops.darex.keep_mask(like, p, seed64, offset, spec)


def _shape_arg(shape) -> torch.Size:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"like_or_shape must be a tensor or a sequence of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"like_or_shape has a negative size: {tuple(shape)}")
    return torch.Size(shape)


def _partially_overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    same = a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape
    return not same


# ---- fake kernels: shapes, dtypes and devices only.
@torch.library.register_fake("darex::prune_")
def _prune_fake(delta, p, seed, offset, q_rows, q, mask_spec=2):
    return None


@torch.library.register_fake("darex::dare")
def _dare_fake(finetuned, base, p, seed, offset, q_rows, q, mask_spec=2):
    return torch.empty(finetuned.shape, dtype=finetuned.dtype, device=finetuned.device)


@torch.library.register_fake("darex::dare_out")
def _dare_out_fake(finetuned, base, p, seed, offset, q_rows, q, out, mask_spec=2):
    return None


@torch.library.register_fake("darex::keep_mask")
def _keep_mask_fake(like, p, seed, offset, mask_spec=2):
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


@torch.library.register_fake("darex::kept_abs_sum")
def _kept_abs_sum_fake(delta, p, seed, offset, mask_spec=2):
    return torch.empty((2,), dtype=torch.float64, device=delta.device)


# ---- autograd of darex::dare: linear in both inputs, so the backward regenerates the seeded mask
# instead of saving it. d out/d finetuned = mask / q, d out/d base = 1 - mask / q.
def _dare_setup_context(ctx, inputs, output):
    _, _, p, seed, offset, q_rows, q, *rest = inputs
    ctx.args = (p, seed, offset, q_rows, q, rest[0] if rest else 2)


def _dare_backward(ctx, grad):
    p, seed, offset, q_rows, q, mask_spec = ctx.args
    grad = grad.contiguous()
    # dare(g, 0) = 0 + (g - 0) / q on kept entries, 0 elsewhere: exactly prune(g).
    grad_ft = torch.ops.darex.dare(grad, torch.zeros_like(grad), p, seed, offset, q_rows, q, mask_spec)
    return grad_ft, grad - grad_ft, None, None, None, None, None, None


torch.library.register_autograd("darex::dare", _dare_backward, setup_context=_dare_setup_context)
