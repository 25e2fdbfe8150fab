"""Mask spec v2 ("skip") of docs/mask_spec.md in plain Python and torch: the twin of
csrc/common/skip_mask.h, written from the spec, not from the kernels.

Each stripe's draws do not depend on the walk: draw d gives the gap G_d = the smallest g with
w_d < table[g] (4096 if none), and the stripe's rare positions are the partial sums
sum_{j <= k} (G_j + 1) - 1 that stay below 4096. That is the walk of the spec (a gap that does
not fit in what is left of the stripe ends it), computed for all stripes at once.
"""

from __future__ import annotations

import torch

from .mask import philox4x32_10

__all__ = ["STRIPE", "WALK_MAX_RHO", "uses_walk", "effective_mask", "skip_table", "rare_is_keep",
           "skip_rare_positions", "skip_keep_mask"]

STRIPE = 4096
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

# Spec v2 is hybrid (docs/mask_spec.md, "Version 2", "Which mask"): the stripe walk only when the
# rare outcome is rare, rho = min(p, 1 - p) < 1/8; for p in [1/8, 7/8] (both ends included) the
# v2 mask is the v1 mask (same Philox words, same threshold). Twin of kSkipWalkMaxRho in
# csrc/ops/prune_args.h.
WALK_MAX_RHO = 0.125


def uses_walk(p: float) -> bool:
    """Whether spec v2's mask at p is the stripe walk (p < 1/8 or p > 7/8) rather than v1's."""
    p = float(p)
    return not (p >= WALK_MAX_RHO and p <= 1.0 - WALK_MAX_RHO)


def effective_mask(mask: str, p: float) -> str:
    """The spec whose mask `mask` gives at p: "philox" for "skip" at 1/8 <= p <= 7/8, else `mask`."""
    return "philox" if mask == "skip" and not uses_walk(p) else mask


def rare_is_keep(p: float) -> bool:
    """For p >= 0.5 the rare outcome is keep, otherwise drop."""
    return float(p) >= 0.5


def skip_table(p: float) -> list[int]:
    """table[g] = min(floor(2^32 (1 - (1 - rho)^(g + 1))), 2^32 - 1), rho = min(p, 1 - p), the
    power by repeated float64 multiplication (Python floats are IEEE float64)."""
    p = float(p)
    rho = p if p < 1.0 - p else 1.0 - p
    stay = 1.0 - rho
    none = 1.0
    table = []
    for _ in range(STRIPE):
        none = none * stay
        scaled = (1.0 - none) * 4294967296.0
        table.append(_U32 if scaled >= 4294967295.0 else int(scaled))
    return table


def _stripe_words(seed: int, stripes: torch.Tensor, draws: int) -> torch.Tensor:
    """[len(stripes), draws] int64: word d % 4 of block (s lo, s hi, d // 4, 1), key = seed."""
    seed &= _U64
    blocks = (draws + 3) // 4
    s = stripes.unsqueeze(1).expand(-1, blocks)
    c = torch.arange(blocks, dtype=torch.int64, device=stripes.device).unsqueeze(0).expand_as(s)
    ones = torch.ones_like(s)
    words = philox4x32_10((s & _U32, s >> 32, c, ones), (seed & _U32, seed >> 32))
    return torch.stack(words, dim=-1).reshape(len(stripes), blocks * 4)[:, :draws]


def skip_rare_positions(seed: int, p: float, first: int, n: int, *, device=None) -> torch.Tensor:
    """The flat indices in [first, first + n) whose outcome is the rare one, increasing (int64)."""
    if n <= 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    table = torch.tensor(skip_table(p), dtype=torch.int64, device=device)
    stripes = torch.arange(first // STRIPE, (first + n - 1) // STRIPE + 1, dtype=torch.int64, device=device)
    draws = 64
    while True:
        w = _stripe_words(seed, stripes, draws)
        gaps = torch.searchsorted(table, w, right=True)  # smallest g with w < table[g]; 4096 if none
        ends = torch.cumsum(gaps + 1, dim=1) - 1
        if draws > STRIPE or bool((ends[:, -1] >= STRIPE).all()):
            break  # every stripe ended within these draws (a stripe takes at most 4097)
        draws = min(2 * draws, STRIPE + 1)
    local = ends[ends < STRIPE]
    which = (ends < STRIPE).nonzero()[:, 0]
    flat = stripes[which] * STRIPE + local
    return flat[(flat >= first) & (flat < first + n)]


def skip_keep_mask(shape, p: float, seed: int, *, offset: int = 0, device=None) -> torch.Tensor:
    """The boolean keep mask of the stripe walk for a tensor of `shape` whose first element has
    flat index `offset`, at any p. Spec v2's mask is this only where uses_walk(p); mask.keep_mask
    (mask="skip") applies the whole rule."""
    shape = torch.Size(shape)
    n = shape.numel()
    rare = torch.zeros(n, dtype=torch.bool, device=device)
    rare[skip_rare_positions(seed, p, offset, n, device=device) - offset] = True
    return (rare if rare_is_keep(p) else ~rare).reshape(shape)
