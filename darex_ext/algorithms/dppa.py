"""DPPA (Zhu, Xia and Zhang, 2024): dynamic per-module densities, magnitude pruning at them, and
partition amplification of what survives.

Dynamic pruning (DP), for a model pruned at drop rate p (keep 1 - p on average):

- Deltas are grouped into blocks (transformer layers). For block l, D_l is the percentage of
  |delta| entries of all its matrices, pooled, that lie strictly above ``block_outlier`` (3) times
  the pooled mean |delta| (OWL's layer outlier ratio, on deltas).
- rho_l = (1 - p) + lam * (D_l - mean_l D) / max_l |D_l - mean_l D|: blocks with more outliers
  keep more; the block most away from the mean moves by exactly lam (0.08).
- Inside block l, O_m is the percentage of |delta_m| entries strictly above ``module_outlier``
  (5) times mean |delta_m|; o_m = O_m / mean(O); c = the parameter-weighted mean of o (weights:
  numel); r_m = lam * (o_m - c) / max_m |o_m - c|. The weighting keeps the block's kept count at
  rho_l * numel: sum n_m (rho_l + r_m) = rho_l sum n_m.
- density_m = rho_l + r_m, clipped to [min_density, 1]; every matrix is then magnitude-pruned
  (exact top-k, :func:`darex_ext.magnitude_prune_`) at p_m = 1 - density_m, without rescaling.

A deviation term whose denominator is 0 (all D equal, all o equal, or all O zero) is 0: no
evidence to move a density.

Partition amplification (DPA): for each matrix, P_hi = the entries kept at density_m (the top
round-half-even count of |delta|), P_lo = those kept at min(density_m + width, 1) but not at
density_m; the amplified delta is alpha_hi * delta on P_hi, alpha_lo * delta on P_lo, 0
elsewhere. The alphas are found by a coordinate search on a grid of `step` (0.1) from
(alpha_hi, alpha_lo) = (1.8, 0.0) against a user metric (see :func:`search_amplification`).

The authors' code was not available to us; the search is our reading of the paper: greedy
coordinate ascent on the 0.1 grid, one coordinate at a time, alpha_hi first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..ops import _checks, count_from_rate, magnitude_prune_, topk_mask, topk_threshold

__all__ = [
    "BLOCK_PATTERN",
    "group_by_block",
    "DPPADensities",
    "dppa_densities",
    "dynamic_prune_",
    "Partitions",
    "partitions",
    "amplify",
    "AmplificationSearch",
    "search_amplification",
]

# The block prefix of HF-style names: "model.layers.3.", "encoder.layer.5.", "transformer.h.0.",
# "encoder.block.2.", "blocks.7." -> "model.layers.3", ... (the first match from the left).
BLOCK_PATTERN = r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)\."


def group_by_block(deltas: Mapping[str, torch.Tensor], pattern: str = BLOCK_PATTERN, *,
                   min_dim: int = 2) -> dict[str, list[str]]:
    """Group tensor names into blocks by the regex `pattern` (group 1 is the block name).

    Only tensors with at least `min_dim` dimensions are grouped (the Linear weight matrices;
    biases and norms are left out). Names that do not match are left out. Blocks and their
    members keep the order of `deltas`.
    """
    regex = re.compile(pattern)
    blocks: dict[str, list[str]] = {}
    for name, t in deltas.items():
        if not isinstance(t, torch.Tensor) or t.dim() < min_dim:
            continue
        m = regex.match(name)
        if m:
            blocks.setdefault(m.group(1), []).append(name)
    return blocks


@dataclass
class DPPADensities:
    """Per-module densities of dynamic pruning and the intermediate quantities, for inspection.

    Percentages are in [0, 100]. `density` is clipped; `unclipped` is rho_l + r_m as computed.
    """

    density: dict[str, float]
    unclipped: dict[str, float]
    block_of: dict[str, str]
    D: dict[str, float]
    rho: dict[str, float]
    O: dict[str, float]
    r: dict[str, float]
    p: float
    lam: float

    def drop_rates(self) -> dict[str, float]:
        """1 - density per module: the p each matrix is magnitude-pruned at."""
        return {name: 1.0 - d for name, d in self.density.items()}


def _outlier_percent(tensors: Sequence[torch.Tensor], factor: float) -> float:
    """Percent of pooled |x| strictly above factor * pooled mean |x| (float64 statistics)."""
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return 0.0
    abs_sum = sum(float(t.detach().abs().sum(dtype=torch.float64)) for t in tensors)
    threshold = factor * abs_sum / total
    acc = lambda t: t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)  # noqa: E731
    # Compare in the accumulation dtype: a half tensor compared with a Python float would
    # round the threshold to half first.
    count = sum(int((acc(t).abs() > threshold).sum()) for t in tensors)
    return 100.0 * count / total


def _scaled_deviation(values: Sequence[float], center: float, lam: float) -> list[float]:
    dev = [v - center for v in values]
    largest = max((abs(d) for d in dev), default=0.0)
    if largest == 0.0:
        return [0.0] * len(values)
    return [lam * d / largest for d in dev]


def _check_blocks(deltas: Mapping[str, torch.Tensor], blocks) -> dict[str, list[str]]:
    if not isinstance(deltas, Mapping):
        raise TypeError(f"deltas must be a mapping of name -> tensor, got {type(deltas).__name__}")
    for name, t in deltas.items():
        _checks.tensor(t, f"deltas[{name!r}]")
    if blocks is None:
        blocks = group_by_block(deltas)
    if not isinstance(blocks, Mapping):
        raise TypeError(f"blocks must be a mapping of block name -> tensor names, "
                        f"got {type(blocks).__name__}")
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for block, names in blocks.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"blocks[{block!r}] must be a sequence of tensor names")
        names = list(names)
        if not names:
            raise ValueError(f"blocks[{block!r}] is empty")
        for name in names:
            if name not in deltas:
                raise ValueError(f"blocks[{block!r}] names {name!r}, which is not in deltas")
            if name in seen:
                raise ValueError(f"blocks: {name!r} is in more than one block")
            seen.add(name)
        out[str(block)] = names
    if not out:
        raise ValueError("blocks: no tensor is grouped into a block (pass blocks= explicitly)")
    return out


def _positive(x, name: str) -> float:
    x = _checks.real(x, name)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return x


def dppa_densities(deltas: Mapping[str, torch.Tensor], p: float, *, blocks=None, lam: float = 0.08,
                   block_outlier: float = 3.0, module_outlier: float = 5.0,
                   min_density: float = 1e-3) -> DPPADensities:
    """DPPA's dynamic per-module densities (see the module docstring for the formulas).

    Args:
        deltas: name -> delta tensor (fine-tuned minus base). Read only.
        p: the target drop rate in [0, 1); the mean density is 1 - p.
        blocks: block name -> list of tensor names; None groups ``deltas`` with
            :func:`group_by_block` (HF names such as ``model.layers.<i>.`` or
            ``encoder.layer.<i>.``; matrices only).
        lam: lambda, the largest move of a block's and of a module's density (0.08).
        block_outlier: D_l counts |delta| above this times the block mean (3).
        module_outlier: O_m counts |delta| above this times the module mean (M = 5).
        min_density: lower clip of the densities (they must stay in (0, 1]).
    """
    p = _checks.drop_rate(p)
    lam = _checks.real(lam, "lam")
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    block_outlier = _positive(block_outlier, "block_outlier")
    module_outlier = _positive(module_outlier, "module_outlier")
    min_density = _checks.real(min_density, "min_density")
    if not 0.0 < min_density <= 1.0:
        raise ValueError(f"min_density must be in (0, 1], got {min_density}")
    groups = _check_blocks(deltas, blocks)

    D = {b: _outlier_percent([deltas[n] for n in names], block_outlier) for b, names in groups.items()}
    mean_d = sum(D.values()) / len(D)
    rho = {b: (1.0 - p) + s for b, s in zip(D, _scaled_deviation(list(D.values()), mean_d, lam))}

    O: dict[str, float] = {}
    r: dict[str, float] = {}
    block_of: dict[str, str] = {}
    for b, names in groups.items():
        o_pct = [_outlier_percent([deltas[n]], module_outlier) for n in names]
        mean_o = sum(o_pct) / len(o_pct)
        o_norm = [v / mean_o for v in o_pct] if mean_o > 0.0 else [0.0] * len(o_pct)
        sizes = [deltas[n].numel() for n in names]
        total = sum(sizes)
        center = sum(s * v for s, v in zip(sizes, o_norm)) / total if total else 0.0
        for n, o, rm in zip(names, o_pct, _scaled_deviation(o_norm, center, lam)):
            O[n], r[n], block_of[n] = o, rm, b

    unclipped = {n: rho[block_of[n]] + r[n] for n in block_of}
    density = {n: min(1.0, max(min_density, d)) for n, d in unclipped.items()}
    return DPPADensities(density=density, unclipped=unclipped, block_of=block_of, D=D, rho=rho, O=O, r=r,
                         p=p, lam=lam)


def dynamic_prune_(deltas: Mapping[str, torch.Tensor], p: float, *, blocks=None, lam: float = 0.08,
                   block_outlier: float = 3.0, module_outlier: float = 5.0,
                   min_density: float = 1e-3) -> DPPADensities:
    """DPPA dynamic pruning in place: densities by :func:`dppa_densities`, then each grouped
    matrix keeps its ``numel - round((1 - density) * numel)`` largest |delta| (exact top-k,
    ties to the lower index) and the rest become 0. No rescaling (that is DPA's job).

    Tensors not in any block are not touched. Returns the densities.
    """
    result = dppa_densities(deltas, p, blocks=blocks, lam=lam, block_outlier=block_outlier,
                            module_outlier=module_outlier, min_density=min_density)
    with torch.no_grad():
        for name, density in result.density.items():
            magnitude_prune_(deltas[name], 1.0 - density)
    return result


@dataclass
class Partitions:
    """Boolean masks of DPA's two partitions per tensor: `hi` (kept at the density) and `lo`
    (kept at density + width, not at density). Disjoint by construction.

    `cut` holds, per tensor, the |delta| at the density's cut (the smallest kept magnitude,
    from :func:`darex_ext.topk_threshold`; None when nothing is kept), for inspection.
    """

    hi: dict[str, torch.Tensor]
    lo: dict[str, torch.Tensor]
    cut: dict[str, float | None] = field(default_factory=dict)


def _kept_count(density: float, n: int) -> int:
    # The count magnitude_prune_ keeps at drop rate 1 - density, so P_hi is exactly its survivors.
    return n - count_from_rate(1.0 - density, n)


def partitions(deltas: Mapping[str, torch.Tensor], densities, *, width: float = 0.1) -> Partitions:
    """The DPA partitions of every tensor named in `densities`.

    Args:
        deltas: name -> delta *before* dynamic pruning: P_lo lives in what pruning at the
            density removes, so an already pruned delta has only zeros there.
        densities: a :class:`DPPADensities` or a mapping name -> density in (0, 1].
        width: the density width of the second partition (0.1).
    """
    dens = densities.density if isinstance(densities, DPPADensities) else densities
    if not isinstance(dens, Mapping):
        raise TypeError(f"densities must be a DPPADensities or a mapping, got {type(densities).__name__}")
    width = _checks.real(width, "width")
    if not (math.isfinite(width) and width >= 0.0):
        raise ValueError(f"width must be a finite number >= 0, got {width}")
    hi: dict[str, torch.Tensor] = {}
    lo: dict[str, torch.Tensor] = {}
    cut: dict[str, float | None] = {}
    for name, d in dens.items():
        if name not in deltas:
            raise ValueError(f"densities names {name!r}, which is not in deltas")
        t = _checks.tensor(deltas[name], f"deltas[{name!r}]")
        d = _checks.real(d, f"densities[{name!r}]")
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"densities[{name!r}] must be in [0, 1], got {d}")
        scores = t.detach().abs()
        n = t.numel()
        k_hi = _kept_count(d, n)
        k_lo = max(k_hi, _kept_count(min(1.0, d + width), n))
        # Top-k with ties to the lower index is nested in k, so hi is a subset of the wider set.
        keep_hi = topk_mask(scores, k_hi)
        keep_wide = topk_mask(scores, k_lo)
        hi[name], lo[name] = keep_hi, keep_wide & ~keep_hi
        cut[name] = topk_threshold(scores, k_hi)[0] if k_hi > 0 else None
    return Partitions(hi=hi, lo=lo, cut=cut)


def amplify(deltas: Mapping[str, torch.Tensor], parts: Partitions, alpha_hi: float,
            alpha_lo: float) -> dict[str, torch.Tensor]:
    """New tensors: alpha_hi * delta on P_hi, alpha_lo * delta on P_lo, 0 elsewhere (computed in
    float32, float64 for float64 deltas, one rounding to the dtype)."""
    a_hi = _checks.real(alpha_hi, "alpha_hi")
    a_lo = _checks.real(alpha_lo, "alpha_lo")
    missing = sorted(set(parts.hi) - set(deltas))
    if missing:
        raise ValueError(f"deltas has no tensor for the partitions of {missing}")
    out: dict[str, torch.Tensor] = {}
    for name, keep_hi in parts.hi.items():
        t = deltas[name].detach()
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        scale = torch.zeros(t.shape, dtype=acc, device=t.device)
        scale.masked_fill_(keep_hi, a_hi).masked_fill_(parts.lo[name], a_lo)
        out[name] = (t.to(acc) * scale).to(t.dtype)
    return out


@dataclass
class AmplificationSearch:
    """Result of :func:`search_amplification`: the best alphas, their score, and every
    evaluation in order as (alpha_hi, alpha_lo, score)."""

    alpha_hi: float
    alpha_lo: float
    score: float
    history: list[tuple[float, float, float]]


def search_amplification(evaluate: Callable[[float, float], float], *, alpha_hi: float = 1.8,
                         alpha_lo: float = 0.0, step: float = 0.1, bounds_hi=(0.0, 10.0),
                         bounds_lo=(0.0, 10.0), max_evals: int = 200) -> AmplificationSearch:
    """Coordinate ascent over (alpha_hi, alpha_lo) on a grid of `step`, maximizing `evaluate`.

    From the start point, alpha_hi moves first: one step up; if that does not beat the best
    score, one step down; it keeps walking in the direction that improved while each step
    strictly improves. Then alpha_lo does the same from the new point. Rounds alternate until a
    round improves neither, or `max_evals` evaluations are spent. Grid points are
    ``start + k * step`` (computed by multiplication, no drift), clipped to the bounds, and no
    point is evaluated twice.

    Args:
        evaluate: (alpha_hi, alpha_lo) -> score, higher is better (e.g. validation accuracy of
            base + amplify(deltas, parts, alpha_hi, alpha_lo)). NaN counts as the worst score.
        alpha_hi, alpha_lo: start point (1.8 and 0.0 as in DPPA).
        step: grid step (0.1).
        bounds_hi, bounds_lo: inclusive (low, high) range of each alpha.
        max_evals: evaluation budget.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    start = (_checks.real(alpha_hi, "alpha_hi"), _checks.real(alpha_lo, "alpha_lo"))
    step = _positive(step, "step")
    bounds = (_bounds(bounds_hi, "bounds_hi"), _bounds(bounds_lo, "bounds_lo"))
    for s, (lo, hi), name in zip(start, bounds, ("alpha_hi", "alpha_lo")):
        if not lo <= s <= hi:
            raise ValueError(f"{name} start {s} is outside its bounds [{lo}, {hi}]")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be an int >= 1, got {max_evals!r}")

    history: list[tuple[float, float, float]] = []
    cache: dict[tuple[int, int], float] = {}

    def point(idx: tuple[int, int]) -> tuple[float, float]:
        return tuple(round(s + k * step, 12) for s, k in zip(start, idx))  # type: ignore[return-value]

    def inside(idx: tuple[int, int]) -> bool:
        return all(lo <= v <= hi for v, (lo, hi) in zip(point(idx), bounds))

    def score(idx: tuple[int, int]) -> float:
        if idx not in cache:
            a, b = point(idx)
            value = float(evaluate(a, b))
            value = -math.inf if math.isnan(value) else value
            cache[idx] = value
            history.append((a, b, value))
        return cache[idx]

    best = (0, 0)
    best_score = score(best)
    improved = True
    while improved and len(history) < max_evals:
        improved = False
        for axis in (0, 1):
            for direction in (1, -1):
                moved = False
                while len(history) < max_evals:
                    nxt = tuple(k + (direction if i == axis else 0) for i, k in enumerate(best))
                    if not inside(nxt) or nxt in cache:  # cached points never beat the best
                        break
                    value = score(nxt)
                    if value <= best_score:
                        break
                    best, best_score, moved, improved = nxt, value, True, True
                if moved:
                    break  # this axis found its direction; the other direction would go back
    a, b = point(best)
    return AmplificationSearch(alpha_hi=a, alpha_lo=b, score=best_score, history=history)


def _bounds(b, name: str) -> tuple[float, float]:
    if not isinstance(b, Sequence) or len(b) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {b!r}")
    lo, hi = _checks.real(b[0], name), _checks.real(b[1], name)
    if not lo <= hi:
        raise ValueError(f"{name} must have low <= high, got {b!r}")
    return lo, hi
