"""The mask spec of docs/mask_spec.md in plain PyTorch: Philox4x32-10 in int64 arithmetic, the
float64 drop threshold, and the numerics every op shares (accumulation dtype, 1/q, the NaN rule).
"""

from __future__ import annotations

import torch

__all__ = ["philox4x32_10", "mask_words", "drop_threshold", "keep_mask", "acc_dtype", "inverse_q",
           "canonical_nan", "to_storage"]


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


def keep_mask(shape, p: float, seed: int, *, offset: int = 0, device=None, mask: str = "skip") -> torch.Tensor:
    """The keep mask of spec version 2 (mask="skip", skip_mask.py) or version 1 ("philox").
    Version 2 is the stripe walk for p < 1/8 or p > 7/8 and version 1's mask in between
    (skip_mask.effective_mask, docs/mask_spec.md "Version 2")."""
    if mask == "skip":
        from .skip_mask import effective_mask, skip_keep_mask  # skip_mask imports this module's Philox

        if effective_mask(mask, p) == "skip":
            return skip_keep_mask(shape, p, seed, offset=offset, device=device)
        mask = "philox"
    if mask != "philox":
        raise ValueError(f"mask must be 'skip' or 'philox', got {mask!r}")
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


# The canonical NaN of each dtype (docs/mask_spec.md, "Numerics"): positive, quiet, no payload.
_CANONICAL_NAN_BITS = {
    torch.bfloat16: (0x7FC0, torch.int16),
    torch.float16: (0x7E00, torch.int16),
    torch.float32: (0x7FC00000, torch.int32),
    torch.float64: (0x7FF8000000000000, torch.int64),
}


def canonical_nan(dtype: torch.dtype, device=None) -> torch.Tensor:
    """The 0-d canonical NaN of `dtype`, built from its bits (a conversion could change them)."""
    bits, int_dtype = _CANONICAL_NAN_BITS[dtype]
    return torch.tensor(bits, dtype=int_dtype, device=device).view(dtype)


def to_storage(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A computed value rounded once to `dtype`, NaN -> the canonical NaN.

    Needed because `.to(dtype)` keeps no rule for NaN: torch's vectorized CPU conversion gives
    bf16 0xFFFF and fp16 sign | 0x7E00 | payload, its scalar one 0x7FC0, CUDA's 0x7FFF.
    `torch.where` only selects, so it copies bits.
    """
    return torch.where(value.isnan(), canonical_nan(dtype, value.device), value.to(dtype))
