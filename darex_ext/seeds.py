"""Seeds: per-tensor seeds for models, and the int64 form the ops take.

tensor_seed(seed, name) = splitmix64(seed XOR fnv1a64(utf8(name))), so a tensor's mask does not
depend on processing order, sharding or worker count (docs/mask_spec.md).
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["fnv1a64", "splitmix64", "tensor_seed", "resolve_seed"]

_U64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bit: offset 0xcbf29ce484222325, prime 0x100000001b3."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _U64
    return h


def splitmix64(x: int) -> int:
    """One splitmix64 output for state x (mod 2^64)."""
    z = (x + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def tensor_seed(seed: int, name: str) -> int:
    """The seed of the tensor called `name` in a model pruned with `seed`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return splitmix64(resolve_seed(seed) ^ fnv1a64(name.encode("utf-8")))


def resolve_seed(seed) -> int:
    """Validate a seed (int in [0, 2^64) or torch.Generator) and return it as an unsigned int."""
    if isinstance(seed, torch.Generator):
        halves = torch.randint(0, 1 << 32, (2,), generator=seed, dtype=torch.int64, device=seed.device)
        lo, hi = (int(v) for v in halves.tolist())
        return lo | (hi << 32)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= _U64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def as_int64(seed: int) -> int:
    """The int64 bit pattern of an unsigned 64-bit seed (the dispatcher's `int`)."""
    return seed - (1 << 64) if seed >= (1 << 63) else seed
