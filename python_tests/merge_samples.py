"""Merge test inputs whose exact answer does not depend on how ties are broken.

mergekit selects by an unstable argsort and PEFT by torch.topk: among equal |x| at the cut each
keeps an unspecified one, darex the lower index. In bf16 and fp16 equal magnitudes are common, so
the exact comparisons use models whose deltas (computed in the dtype, as the merges compute them)
have pairwise distinct magnitudes and no zeros. Everything is drawn from a seeded generator.
"""

from __future__ import annotations

import torch

__all__ = ["spread", "distinct_values", "distinct_magnitudes", "tie_free_models", "group"]


def spread(shape, dtype, gen: torch.Generator) -> torch.Tensor:
    """Normal values scaled by 2**U(-6, 6), no zeros: magnitudes over many binades, so few
    collide even in bf16."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x * torch.exp2(torch.rand(shape, generator=gen, dtype=torch.float64) * 12 - 6)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x)
    return x.to(dtype)


def distinct_values(shape, dtype, gen: torch.Generator) -> torch.Tensor:
    """Values with pairwise distinct magnitudes, exact in `dtype`: a random draw without
    replacement from 2**e * (1 + j / 128), e in [-6, 6), j in [0, 128) (exact even in bf16),
    with random signs. At most 1536 elements."""
    grid = (torch.exp2(torch.arange(-6, 6, dtype=torch.float64))[:, None]
            * (1 + torch.arange(128, dtype=torch.float64) / 128)).reshape(-1)
    n = torch.Size(shape).numel()
    if n > grid.numel():
        raise ValueError(f"at most {grid.numel()} distinct values, asked for {n}")
    picked = grid[torch.randperm(grid.numel(), generator=gen)[:n]]
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return (picked * signs).reshape(shape).to(dtype)


def distinct_magnitudes(t: torch.Tensor) -> bool:
    a = t.detach().abs().reshape(-1).double()
    return bool((a > 0).all()) and a.unique().numel() == a.numel()


def tie_free_models(shape, n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and n fine-tunes in `dtype`; each ft - base (in dtype) has distinct nonzero |x|."""
    gen = torch.Generator().manual_seed(seed)
    # A base 16x smaller than the deltas' spread: ft - base then keeps most of a delta's bits.
    base = (spread(shape, torch.float64, gen) / 16).to(dtype)
    fts = []
    for i in range(n):
        for _ in range(200):
            ft = (base.double() + distinct_values(shape, torch.float64, gen)).to(dtype)
            if distinct_magnitudes(ft - base):
                break
        else:
            raise AssertionError(f"no tie-free delta for model {i} of shape {shape} in {dtype}")
        fts.append(ft)
    return base, fts


def group(base: torch.Tensor, fts: list[torch.Tensor], name: str = "model.layers.0.mlp.up_proj.weight"):
    """A mergekit TensorGroup: base first, then the fine-tunes in order."""
    from mergekit.merge_methods import TensorGroup

    return TensorGroup.from_tensors([base, *fts], base_index=0, name=name)
