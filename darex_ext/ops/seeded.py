"""The seeded storage op (schema: csrc/ops/seeded.cpp): a DARE delta stored as its kept values
only; the mask is regenerated from (seed, p, offset) by docs/mask_spec.md, spec version 2
(mask="skip", the default: for p > 7/8 decode and count cost O(kept); for 1/8 <= p <= 7/8 it is
version 1's mask) or 1 (mask="philox").

Dispatcher ops `seeded_pack`, `keep_count`, `seeded_scatter_`: typed wrappers and fake kernels.
Reference: darex_ext/reference/seeded.py.

Thin on purpose: SparseDelta and compress/compress_dare (darex_ext.storage) check arguments
and turn kernel errors into FormatError. The scatter op validates every index it is given before it
writes, so calling it directly with untrusted tensors is safe (it raises ValueError).
"""

from __future__ import annotations

import torch

from ..seeds import as_int64, resolve_seed
from . import _checks
from . import _library  # noqa: F401  (registers torch.ops.darex)

__all__ = ["seeded_pack", "keep_count", "seeded_scatter_"]


def seeded_pack(delta: torch.Tensor, p: float, q=None, *, seed=0, offset: int = 0,
                mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """The kept entries of ``prune_(delta.clone(), p, q, seed=seed, offset=offset, mask=mask)``
    in flat order, computed in one fused pass (keep test, rescale, compaction) without the dense
    result.

    Returns a 1-D tensor of delta's dtype with ``keep_count(delta, p, seed=seed)`` entries.
    """
    _checks.tensor(delta, "delta")
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    q_rows, q_scalar = _checks.rescale_q(q, p, delta)
    return torch.ops.darex.seeded_pack(delta.detach(), p, as_int64(resolve_seed(seed)), offset,
                                       q_rows, q_scalar, spec)


def keep_count(like: torch.Tensor, p: float, *, seed=0, offset: int = 0, mask: str = _checks.DEFAULT_MASK) -> int:
    """How many of like.numel() elements the mask of (seed, p, offset) keeps (data not read)."""
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    return int(torch.ops.darex.keep_count(like, p, as_int64(resolve_seed(seed)), offset, spec))


def seeded_scatter_(out: torch.Tensor, values: torch.Tensor, p: float, *, seed=0, offset: int = 0,
                    alpha: float = 1.0, accumulate: bool = False, mask: str = _checks.DEFAULT_MASK) -> torch.Tensor:
    """Decode seeded values into `out` (accumulate=False: every element written, dropped ones 0)
    or add ``alpha * values`` at the kept positions (accumulate=True). Returns `out`."""
    p = _checks.drop_rate(p)
    offset = _checks.offset(offset)
    spec = _checks.mask_spec(mask)
    torch.ops.darex.seeded_scatter_(out, values, p, as_int64(resolve_seed(seed)), offset,
                                    float(alpha), bool(accumulate), spec)
    return out


# ---- fake kernels: the packed size depends on the data, so it is a dynamic size.
@torch.library.register_fake("darex::seeded_pack")
def _seeded_pack_fake(delta, p, seed, offset, q_rows, q, mask_spec=2):
    k = torch.library.get_ctx().new_dynamic_size()
    return delta.new_empty((k,))


@torch.library.register_fake("darex::keep_count")
def _keep_count_fake(like, p, seed, offset, mask_spec=2):
    return torch.empty((), dtype=torch.int64, device=like.device)


@torch.library.register_fake("darex::seeded_scatter_")
def _seeded_scatter_fake(out, values, p, seed, offset, alpha, accumulate, mask_spec=2):
    return None
