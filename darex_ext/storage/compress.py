"""Encoders: compress(pruned) for any pruned delta, compress_dare(delta, p, ...) fused."""

from __future__ import annotations

import torch

from ..ops import _checks, bitmask_pack, csr_pack, prune_, seeded_pack
from ..seeds import resolve_seed
from .formats import format_nbytes
from .sparse_delta import SparseDelta

__all__ = ["compress", "compress_dare"]

_COMPRESS_FORMATS = ("auto", "bitmask", "csr")


def _q_json(q):
    """q as JSON: None, a float, or a list of per-row floats."""
    if q is None:
        return None
    if isinstance(q, torch.Tensor):
        return float(q.item()) if q.dim() == 0 else [float(x) for x in q.detach().double().cpu().tolist()]
    return float(q)


def _smaller_is_csr(pruned: torch.Tensor, kept: int) -> bool:
    sizes = {f: format_nbytes(f, pruned.shape, pruned.dtype, kept) for f in ("bitmask", "csr")}
    return sizes["csr"] < sizes["bitmask"]


def compress(pruned: torch.Tensor, format: str = "auto", *, method: str | None = None,
             p: float | None = None, q=None) -> SparseDelta:
    """Pack an already pruned delta: its zeros (and -0.0) are the dropped entries.

    Args:
        pruned: float32/float64/float16/bfloat16 tensor of any shape, CPU or CUDA.
        format: "bitmask" (compressed-tensors' sparse-bitmask layout), "csr", or "auto" (the
            smaller of the two for this tensor's nonzero count; ties go to bitmask).
        method, p, q: recorded in meta (how the delta was pruned), not used to decode; p and
            q are checked as darex_ext.prune_ checks them (p in [0, 1); q finite, > 0 and
            normal in the accumulation type, per-row q of length pruned.shape[0]).

    Returns:
        A SparseDelta whose to_dense() equals `pruned` (with -0.0 read back as +0.0).
    """
    _checks.tensor(pruned, "pruned")
    if format not in _COMPRESS_FORMATS:
        raise ValueError(f"format must be one of {_COMPRESS_FORMATS}, got {format!r}")
    if method is not None and not isinstance(method, str):
        raise TypeError(f"method must be a string or None, got {type(method).__name__}")
    p = None if p is None else _checks.drop_rate(p)
    # Recorded only, yet held to the rule the ops apply, so a file never claims an impossible q.
    _checks.rescale_q(q, 0.0 if p is None else p, pruned)
    meta = {"method": method, "p": p, "q": _q_json(q)}
    fmt = format
    if format in ("auto", "bitmask"):
        # The bitmask pack is cheaper than counting nonzeros first; its count decides "auto".
        values, bitmask, row_offsets = bitmask_pack(pruned)
        fmt = "csr" if format == "auto" and _smaller_is_csr(pruned, values.numel()) else "bitmask"
        payload = {"compressed": values, "bitmask": bitmask, "row_offsets": row_offsets}
    if fmt == "csr":
        crow, col, values = csr_pack(pruned)
        payload = {"crow": crow, "col": col, "values": values}
    return SparseDelta(fmt, tuple(pruned.shape), pruned.dtype, payload, meta)


def compress_dare(delta: torch.Tensor, p: float, q=None, *, seed, format: str = "seeded",
                  method: str = "dare", offset: int = 0, mask: str = _checks.DEFAULT_MASK) -> SparseDelta:
    """DARE-prune `delta` (drop with probability p, rescale kept by 1/q) straight into a
    compact format. `delta` is not modified.

    format="seeded" (default) runs one fused pass (keep test, rescale, prefix-sum compaction)
    and stores only the kept values; the mask is regenerated from (seed, p, offset) when
    decoding. ``compress_dare(d, p, q, seed=s).to_dense()`` equals
    ``darex_ext.prune_(d.clone(), p, q, seed=s)`` bit for bit (with the same `mask`, which the
    delta records in meta["mask"]). format="bitmask" / "csr" prune
    a copy, then pack it (for tools that cannot regenerate masks).

    Args:
        delta: float32/float64/float16/bfloat16 tensor, CPU or CUDA.
        p, q, seed, offset, mask: as in darex_ext.prune_ (q: None = 1 - p, a float, or per-row
            q; mask: "skip", spec v2, the default, or "philox", spec v1).
        format: "seeded" | "bitmask" | "csr" | "auto" (auto: the smaller of bitmask and csr).
        method: recorded in meta.
    """
    _checks.tensor(delta, "delta")
    p = _checks.drop_rate(p)
    _checks.rescale_q(q, p, delta)
    seed = resolve_seed(seed)
    offset = _checks.offset(offset)
    _checks.mask_spec(mask)
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if format == "seeded":
        values = seeded_pack(delta, p, q, seed=seed, offset=offset, mask=mask)
        meta = {"method": method, "p": p, "q": _q_json(q), "seed": seed, "offset": offset, "mask": mask}
        return SparseDelta("seeded", tuple(delta.shape), delta.dtype, {"values": values}, meta)
    if format not in _COMPRESS_FORMATS:
        raise ValueError(f"format must be one of ('seeded',) + {_COMPRESS_FORMATS}, got {format!r}")
    with torch.no_grad():
        pruned = prune_(delta.detach().clone(), p, q, seed=seed, offset=offset, mask=mask)
    sd = compress(pruned, format, method=method, p=p, q=q)
    sd.meta.update(seed=seed, offset=offset, mask=mask)
    return sd
