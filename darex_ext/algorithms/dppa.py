"""DPPA (Zhu, Xia and Zhang 2024, arXiv:2403.02799): dynamic pruning (DP) at per-module densities,
then dynamic partition amplification (DPA) of what survives, as the authors' code does it:
github.com/northsky0307/DPPA-Pruning-Method-for-Large-Language-Model-to-Model-Merging.

- Densities: :func:`dppa_densities` (module ``dppa_stats``; ``scrips/pruning/lib/prune_all.py``,
  ``prune_mag_outlier_layer_wei``).
- The cut (cut="threshold", the authors'): a matrix of n entries pruned at drop rate
  s = 1 - density loses every entry with |delta| <= t, t the ``int(n * s)``-th smallest |delta|
  (0-based; their ``sort(|W|)[int(W.numel() * sparsity)]``): ``int(n * s) + 1`` entries plus
  every tie of t. A density of 1 keeps everything (their index would drop the smallest entry,
  and wrap around above 1). cut="topk" is darex's earlier cut, kept as an option: exactly
  ``n - round(n * s)`` kept (halves to even), ties to the lower index (``magnitude_prune_``).
- Partitions: P_hi = kept at the density of drop rate p, P_wide = kept at the density of
  p - width (the authors run DP twice, at 0.9 and 0.8, ``run.sh``), P_lo = P_wide minus P_hi.
- Amplification (combine="max", ``scrips/enhance_offset.py``): x = alpha_lo * delta on P_wide,
  y = alpha_hi * delta on P_hi (0 elsewhere); the result takes y where |y| > |x| (or y != 0 and
  x == 0), else x. So P_hi gets the larger-magnitude factor, max(alpha_hi, alpha_lo) for the
  non-negative alphas of the search, P_lo gets alpha_lo, the rest 0. Every delta outside the
  partitions (embeddings, norms, biases, lm_head: both pruned models keep it whole) gets the same
  rule, i.e. max(alpha) times the delta. combine="sum" is darex's earlier reading, kept as an
  option: alpha_hi on P_hi, alpha_lo on P_lo, deltas outside the partitions unchanged.
- The alpha search: :func:`search_amplification` (module ``dppa_search``;
  ``scrips/python_contral.py``).

Products are computed in float32 (float64 for float64 deltas), as the authors' float32 models
do, and rounded once to the delta's dtype (they save float32; darex keeps the checkpoint's dtype).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..ops import _checks, count_from_rate, magnitude_prune_, topk_mask, topk_threshold
from .dppa_search import SEARCHES, AmplificationSearch, geometric_mean_ratio, search_amplification
from .dppa_stats import (
    BLOCK_PATTERN,
    NORMALIZATIONS,
    DPPADensities,
    dppa_densities,
    group_by_block,
    group_shapes_by_block,
)

__all__ = [
    "BLOCK_PATTERN", "NORMALIZATIONS", "CUTS", "COMBINES", "SEARCHES",
    "group_by_block", "group_shapes_by_block", "DPPADensities", "dppa_densities",
    "dppa_keep_mask", "dppa_prune_", "dynamic_prune_",
    "Partitions", "partitions", "wide_drop_rate", "amplify_tensor", "amplify",
    "AmplificationSearch", "search_amplification", "geometric_mean_ratio",
]

CUTS = ("threshold", "topk")
COMBINES = ("max", "sum")


def _choice(value, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _rate(x, name: str) -> float:
    x = _checks.real(x, name)
    if not x <= 1.0:  # also rejects NaN; <= 0 means keep everything (a clipped density of 1)
        raise ValueError(f"{name} must be a drop rate <= 1, got {x}")
    return x


def dppa_keep_mask(delta: torch.Tensor, drop_rate: float, *, cut: str = "threshold") -> torch.Tensor:
    """Boolean mask of the entries DP keeps when `delta` is pruned at `drop_rate` (1 - density).

    cut="threshold" (the authors'): drop every |delta| <= the ``int(n * drop_rate)``-th smallest
    |delta|; cut="topk": keep the ``n - round(n * drop_rate)`` largest, ties to the lower index.
    A drop rate <= 0 keeps everything. NaN raises ValueError (the top-k kernels refuse it).
    """
    _checks.tensor(delta, "delta")
    rate = _rate(drop_rate, "drop_rate")
    _choice(cut, CUTS, "cut")
    scores = delta.detach().abs()
    n = scores.numel()
    if rate <= 0.0 or n == 0:
        return torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
    if cut == "topk":
        return topk_mask(scores, n - count_from_rate(rate, n))
    dropped = int(n * rate)  # the authors' int(W.numel() * sparsity): float64 product, truncated
    if dropped >= n:
        return torch.zeros(delta.shape, dtype=torch.bool, device=delta.device)
    # The dropped-th smallest is the (n - dropped)-th largest; t is a value of `scores`, so the
    # compare is exact in any dtype.
    t, _, _ = topk_threshold(scores, n - dropped)
    return scores > t


def dppa_prune_(delta: torch.Tensor, drop_rate: float, *, cut: str = "threshold", q=None) -> torch.Tensor:
    """Prune one matrix in place at its DP drop rate (see :func:`dppa_keep_mask`); no rescale
    unless `q` is given (kept -> x / q, as ``magnitude_prune_``). Returns `delta`."""
    _checks.tensor(delta, "delta")
    _checks.not_tracking_grad(delta, "delta")
    if cut == "topk":
        return magnitude_prune_(delta, max(0.0, _rate(drop_rate, "drop_rate")), q=q)
    keep = dppa_keep_mask(delta, drop_rate, cut=cut)
    with torch.no_grad():
        delta.masked_fill_(~keep, 0)
        if q is not None:
            magnitude_prune_(delta, 0.0, q=q)  # keeps all; the kernels' x / q arithmetic
    return delta


def dynamic_prune_(deltas: Mapping[str, torch.Tensor], p: float, *, blocks=None, lam: float = 0.08,
                   block_outlier: float = 3.0, module_outlier: float = 5.0, min_density: float = 1e-3,
                   normalize: str = "global", cut: str = "threshold") -> DPPADensities:
    """DPPA dynamic pruning in place: densities by :func:`dppa_densities`, then every grouped
    matrix pruned at 1 - density by `cut` (no rescaling: that is DPA's job). Tensors in no
    block are not touched. Returns the densities."""
    _choice(cut, CUTS, "cut")
    result = dppa_densities(deltas, p, blocks=blocks, lam=lam, block_outlier=block_outlier,
                            module_outlier=module_outlier, min_density=min_density, normalize=normalize)
    for name, rate in result.drop_rates().items():
        dppa_prune_(deltas[name], rate, cut=cut)
    return result


@dataclass
class Partitions:
    """Boolean masks of DPA's two partitions per tensor: `hi` (kept at the density) and `lo`
    (kept at the wider density, not at the density). Disjoint by construction.

    `cut` holds, per tensor, the smallest |delta| in `hi` (None when `hi` is empty), for
    inspection.
    """

    hi: dict[str, torch.Tensor]
    lo: dict[str, torch.Tensor]
    cut: dict[str, float | None] = field(default_factory=dict)


def wide_drop_rate(p: float, width: float) -> float:
    """The drop rate of DPA's second DP run: p - width, rounded to 12 decimals so that
    0.8 - 0.1 is the 0.7 the authors would pass (their run.sh lists the rates 0.9 0.8)."""
    return round(p - width, 12)


def _width(width) -> float:
    width = _checks.real(width, "width")
    if not (math.isfinite(width) and width >= 0.0):
        raise ValueError(f"width must be a finite number >= 0, got {width}")
    return width


def partitions(deltas: Mapping[str, torch.Tensor], densities, *, width: float = 0.1,
               cut: str = "threshold") -> Partitions:
    """The DPA partitions of every tensor named in `densities`.

    Args:
        deltas: name -> delta *before* dynamic pruning: P_lo lives in what pruning at the
            density removes, so an already pruned delta has only zeros there.
        densities: a :class:`DPPADensities` (the wide densities are then ``densities.at(p -
            width)``, the authors' second DP run) or a mapping name -> density in [0, 1] (the
            wide density is then min(density + width, 1)).
        width: the gap between the two runs' drop rates (0.1: run.sh's 0.9 and 0.8).
        cut: "threshold" (the authors') or "topk" (darex's earlier cut).
    """
    width = _width(width)
    _choice(cut, CUTS, "cut")
    if isinstance(densities, DPPADensities):
        dens = densities.density
        wide = densities.at(wide_drop_rate(densities.p, width)).density
    elif isinstance(densities, Mapping):
        dens = dict(densities)
        for name, d in dens.items():
            d = _checks.real(d, f"densities[{name!r}]")
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"densities[{name!r}] must be in [0, 1], got {d}")
        wide = {name: min(1.0, d + width) for name, d in dens.items()}
    else:
        raise TypeError(f"densities must be a DPPADensities or a mapping, got {type(densities).__name__}")
    hi: dict[str, torch.Tensor] = {}
    lo: dict[str, torch.Tensor] = {}
    smallest: dict[str, float | None] = {}
    for name, d in dens.items():
        if name not in deltas:
            raise ValueError(f"densities names {name!r}, which is not in deltas")
        t = _checks.tensor(deltas[name], f"deltas[{name!r}]")
        keep_hi = dppa_keep_mask(t, 1.0 - d, cut=cut)
        keep_wide = dppa_keep_mask(t, 1.0 - wide[name], cut=cut) | keep_hi
        hi[name], lo[name] = keep_hi, keep_wide & ~keep_hi
        smallest[name] = (float(torch.where(keep_hi, t.detach().abs(), math.inf).min())
                          if bool(keep_hi.any()) else None)
    return Partitions(hi=hi, lo=lo, cut=smallest)


def _alphas(alpha_hi, alpha_lo) -> tuple[float, float]:
    a_hi, a_lo = _checks.real(alpha_hi, "alpha_hi"), _checks.real(alpha_lo, "alpha_lo")
    for value, name in ((a_hi, "alpha_hi"), (a_lo, "alpha_lo")):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    return a_hi, a_lo


def amplify_tensor(delta: torch.Tensor, hi: torch.Tensor | None, wide: torch.Tensor | None, alpha_hi: float,
                   alpha_lo: float, *, combine: str = "max") -> torch.Tensor:
    """One tensor's amplified delta, in float32 (float64 for float64): not rounded to the
    delta's dtype, so a merge can add it to the base with one rounding.

    `hi` / `wide` are the masks kept at the density and at the wider density (P_lo = wide & ~hi);
    both None: a tensor outside the partitions, kept whole by both DP runs.
    """
    a_hi, a_lo = _alphas(alpha_hi, alpha_lo)
    _choice(combine, COMBINES, "combine")
    if (hi is None) != (wide is None):
        raise ValueError("hi and wide must both be masks or both be None")
    d = delta.detach()
    acc = torch.float64 if d.dtype == torch.float64 else torch.float32
    if combine == "sum":
        if hi is None:
            return d.to(acc, copy=True)
        scale = torch.zeros(d.shape, dtype=acc, device=d.device)
        scale.masked_fill_(wide, a_lo).masked_fill_(hi, a_hi)
        return d.to(acc) * scale
    # enhance_offset.py's my_max, applied as there: first to zeros and alpha_lo * (delta pruned
    # at the wider density), then to that and alpha_hi * (delta pruned at the density).
    x = d.to(acc) * a_lo
    keep_x = x != 0 if wide is None else wide & (x != 0)
    x = torch.where(keep_x, x, torch.zeros((), dtype=acc, device=d.device))
    y = d.to(acc) * a_hi
    take = (y.abs() > x.abs()) | ((y != 0) & (x == 0))
    if hi is not None:
        take &= hi
    return torch.where(take, y, x)


def amplify(deltas: Mapping[str, torch.Tensor], parts: Partitions, alpha_hi: float, alpha_lo: float, *,
            combine: str = "max") -> dict[str, torch.Tensor]:
    """DPA of every tensor in `deltas`: the partition tensors by `combine`, the others (outside
    the partitions) scaled by max(alpha) for combine="max" and returned unchanged for "sum".
    New tensors in the deltas' dtypes (one rounding from float32 / float64)."""
    _alphas(alpha_hi, alpha_lo)
    _choice(combine, COMBINES, "combine")
    missing = sorted(set(parts.hi) - set(deltas))
    if missing:
        raise ValueError(f"deltas has no tensor for the partitions of {missing}")
    out: dict[str, torch.Tensor] = {}
    for name, t in deltas.items():
        _checks.tensor(t, f"deltas[{name!r}]")
        if name in parts.hi:
            hi = parts.hi[name]
            amplified = amplify_tensor(t, hi, hi | parts.lo[name], alpha_hi, alpha_lo, combine=combine)
        else:
            amplified = amplify_tensor(t, None, None, alpha_hi, alpha_lo, combine=combine)
        out[name] = amplified.to(t.dtype)
    return out
