"""Plain-PyTorch twins of every darex op: slow, obviously correct, device-agnostic.

They follow the spec in DESIGN.md literally (Philox4x32-10 in int64 arithmetic, the float64
threshold, one rounding to the storage dtype) and are what the tests compare kernels against.
"""

from __future__ import annotations

import torch

__all__ = [
    "philox4x32_10",
    "mask_words",
    "drop_threshold",
    "keep_mask",
    "acc_dtype",
    "inverse_q",
    "prune",
    "dare",
    "prune_l1",
    "topk_mask",
    "magnitude_prune",
    "wanda_prune",
]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a: int64 holding uint32 values. Split m in 16-bit halves so no product leaves int64.
    m_hi, m_lo = m >> 16, m & 0xFFFF
    x = a * m_lo  # < 2^48
    y = a * m_hi  # < 2^48
    lo = (((y & 0xFFFF) << 16) + x) & _U32
    hi = (y + (x >> 16)) >> 16
    return hi, lo


def philox4x32_10(ctr: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 counter words; key is two uint32 ints."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _U32, (k1 + _W1) & _U32
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def mask_words(numel: int, seed: int, *, offset: int = 0, device=None) -> torch.Tensor:
    """u_i for flat indices offset .. offset+numel-1, as int64 tensor of uint32 values."""
    seed &= _U64
    idx = torch.arange(offset, offset + numel, device=device, dtype=torch.int64)
    block = idx >> 2
    zeros = torch.zeros_like(block)
    words = philox4x32_10((block & _U32, block >> 32, zeros, zeros), (seed & _U32, seed >> 32))
    stacked = torch.stack(words, dim=-1)  # [numel, 4]
    return stacked.gather(1, (idx & 3).unsqueeze(1)).squeeze(1)


def drop_threshold(p: float) -> int:
    """T(p) = min(floor(p * 2^32), 2^32 - 1) in float64; keep iff u >= T."""
    scaled = float(p) * 4294967296.0
    if not scaled > 0.0:
        return 0
    return min(int(scaled), _U32)


def keep_mask(shape, p: float, seed: int, *, offset: int = 0, device=None) -> torch.Tensor:
    shape = torch.Size(shape)
    u = mask_words(shape.numel(), seed, offset=offset, device=device)
    return (u >= drop_threshold(p)).reshape(shape)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def inverse_q(q, dtype: torch.dtype, device=None) -> torch.Tensor:
    """1/q as the kernels compute it: q rounded to the accumulation dtype, then one division."""
    acc = acc_dtype(dtype)
    qt = torch.as_tensor(q, dtype=acc, device=device)
    return torch.ones((), dtype=acc, device=device) / qt


def _rows_view(t: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    # Broadcast a per-row inverse over the flattened trailing dims.
    if inv.dim() == 0:
        return inv
    return inv.reshape((-1,) + (1,) * (t.dim() - 1))


def prune(delta: torch.Tensor, p: float, q=None, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """DARE drop-and-rescale, out of place: kept * (1/q), dropped 0. q: None (1-p), float, 1-D tensor."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device)
    acc = acc_dtype(delta.dtype)
    inv = _rows_view(delta, inverse_q(q, delta.dtype, delta.device))
    scaled = (delta.to(acc) * inv).to(delta.dtype)
    return torch.where(mask, scaled, torch.zeros((), dtype=delta.dtype, device=delta.device))


def dare(finetuned: torch.Tensor, base: torch.Tensor, p: float, q=None, *, seed: int = 0,
         offset: int = 0) -> torch.Tensor:
    """base + prune(finetuned - base), in the accumulation dtype with one final rounding."""
    q = 1.0 - p if q is None else q
    mask = keep_mask(finetuned.shape, p, seed, offset=offset, device=finetuned.device)
    acc = acc_dtype(finetuned.dtype)
    f, b = finetuned.to(acc), base.to(acc)
    inv = _rows_view(finetuned, inverse_q(q, finetuned.dtype, finetuned.device))
    kept = b + (f - b) * inv
    return torch.where(mask, kept, b).to(finetuned.dtype)


def prune_l1(delta: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Drop, then scale kept entries so the L1 norm is unchanged (no scaling if nothing is kept)."""
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device)
    a = delta.to(torch.float64).abs()
    total, kept = a.sum().item(), a[mask].sum().item()
    q = kept / total if kept > 0 and total > 0 else 1.0
    return prune(delta, p, q, seed=seed, offset=offset)


def topk_mask(scores: torch.Tensor, k: int, dim=None, largest: bool = True) -> torch.Tensor:
    """k per slice by a stable sort: equal scores keep index order, so the lower index wins."""
    if dim is None:
        flat = scores.reshape(1, -1)
    else:
        flat = scores.movedim(dim, -1).reshape(-1, scores.shape[dim]) if scores.numel() else None
        if flat is None:
            return torch.zeros_like(scores, dtype=torch.bool)
    order = torch.sort(flat.double(), dim=-1, descending=largest, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, order[:, :k], True)
    if dim is None:
        return mask.reshape(scores.shape)
    return mask.reshape(scores.movedim(dim, -1).shape).movedim(-1, dim)


def magnitude_prune(delta: torch.Tensor, p: float, scope: str = "tensor", q=None) -> torch.Tensor:
    rows = delta.reshape(1, -1) if scope == "tensor" else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    keep = topk_mask(rows.abs(), n - round(p * n), dim=1)
    return _keep_scaled(rows, keep, q).reshape(delta.shape)


def wanda_prune(delta: torch.Tensor, act_norm: torch.Tensor, p: float, q=None) -> torch.Tensor:
    acc = acc_dtype(delta.dtype)
    scores = delta.to(acc).abs() * act_norm.to(acc)
    n = delta.shape[1]
    keep = topk_mask(scores, n - round(p * n), dim=1)
    return _keep_scaled(delta, keep, q)


def _keep_scaled(x: torch.Tensor, keep: torch.Tensor, q) -> torch.Tensor:
    if q is not None:
        x = (x.to(acc_dtype(x.dtype)) * inverse_q(q, x.dtype, x.device)).to(x.dtype)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


# ---- storage (darex_ext.storage): the formats written out with plain tensor ops.
__all__ += ["row_view_2d", "seeded_pack", "keep_count", "seeded_scatter", "bitmask_pack",
            "bitmask_unpack", "bitmask_scatter", "csr_pack", "csr_scatter"]


def row_view_2d(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view of the storage formats: rows = dim 0, the rest flattened; 0-d/1-d: one row."""
    if t.dim() <= 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1) if t.shape[0] else t.reshape(0, int(torch.Size(t.shape[1:]).numel()))


def seeded_pack(delta: torch.Tensor, p: float, q=None, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Kept entries of prune(delta, p, q) in flat order."""
    mask = keep_mask(delta.shape, p, seed, offset=offset, device=delta.device)
    return prune(delta, p, q, seed=seed, offset=offset)[mask]


def keep_count(numel: int, p: float, seed: int, *, offset: int = 0) -> int:
    return int(keep_mask((numel,), p, seed, offset=offset).sum())


def _accumulate(out: torch.Tensor, mask: torch.Tensor, dense: torch.Tensor, alpha: float) -> torch.Tensor:
    # round(out + alpha * v) in the accumulation dtype at kept positions; the rest unchanged.
    acc = acc_dtype(out.dtype)
    a = torch.tensor(alpha, dtype=acc, device=out.device)
    summed = (out.to(acc) + a * dense.to(acc)).to(out.dtype)
    return torch.where(mask, summed, out)


def seeded_scatter(out: torch.Tensor, values: torch.Tensor, p: float, *, seed: int = 0, offset: int = 0,
                   alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    """Out of place: the decoded tensor (accumulate=False) or out + alpha * delta."""
    mask = keep_mask(out.shape, p, seed, offset=offset, device=out.device)
    dense = torch.zeros_like(out)
    dense[mask] = values
    return _accumulate(out, mask, dense, alpha) if accumulate else dense


def bitmask_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, bitmask, row_offsets) as compressed-tensors builds them, in torch."""
    view = row_view_2d(dense)
    rows, cols = view.shape
    mask = view != 0
    bpr = (cols + 7) // 8
    padded = torch.zeros((rows, bpr * 8), dtype=torch.int64, device=dense.device)
    padded[:, :cols] = mask.to(torch.int64)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.int64, device=dense.device)
    bitmask = (padded.reshape(rows, bpr, 8) * weights).sum(-1).to(torch.uint8)
    counts = mask.sum(1)
    return view[mask], bitmask, torch.cumsum(counts, 0) - counts


def bitmask_unpack(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    rows, bpr = bitmask.shape
    bits = (bitmask.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=bitmask.device)) & 1
    return bits.reshape(rows, bpr * 8)[:, :cols].bool()


def bitmask_scatter(out: torch.Tensor, values: torch.Tensor, bitmask: torch.Tensor, *,
                    alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    view = row_view_2d(out)
    mask = bitmask_unpack(bitmask, view.shape[1])
    dense = torch.zeros_like(view)
    dense[mask] = values
    res = _accumulate(view, mask, dense, alpha) if accumulate else dense
    return res.reshape(out.shape)


def csr_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    view = row_view_2d(dense)
    rows, cols = view.shape
    mask = view != 0
    idx = mask.nonzero()
    counts = mask.sum(1)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=dense.device), torch.cumsum(counts, 0)])
    col_dtype = torch.uint8 if cols <= 256 else torch.uint16 if cols <= 65536 else torch.uint32
    return crow, idx[:, 1].to(col_dtype), view[mask]


def csr_scatter(out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, *,
                alpha: float = 1.0, accumulate: bool = False) -> torch.Tensor:
    view = row_view_2d(out)
    rows = torch.repeat_interleave(torch.arange(view.shape[0], device=out.device), crow.diff())
    mask = torch.zeros(view.shape, dtype=torch.bool, device=out.device)
    mask[rows, col.to(torch.int64)] = True
    dense = torch.zeros_like(view)
    dense[rows, col.to(torch.int64)] = values
    res = _accumulate(view, mask, dense, alpha) if accumulate else dense
    return res.reshape(out.shape)
