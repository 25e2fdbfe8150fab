"""DPPA dynamic pruning (DP): per-module densities from outlier statistics of the deltas.

DPPA (Zhu, Xia and Zhang 2024, arXiv:2403.02799). The authors' code,
github.com/northsky0307/DPPA-Pruning-Method-for-Large-Language-Model-to-Model-Merging, runs DP as
``scrips/pruning/main.py --prune_method magnitude_owl_layer_wei --Lamda 0.08 --Hyper_m 5``
(``run.sh``), i.e. ``prune_mag_outlier_layer_wei`` in ``scrips/pruning/lib/prune_all.py``. For a
drop rate p (their ``--sparsity_ratio``):

- D_l, per block (transformer layer): the percentage of the |delta| entries of all the block's
  Linear weights, pooled, strictly above 3 times their pooled mean (``new_check_outlier_mean``;
  the 3 is fixed there, ``block_outlier`` here).
- rho_l = (D_l - mean D) * (lam / max_l |D_l - mean D|) + (1 - p).
- O_m, per matrix: the percentage of its |delta| strictly above M = 5 times its mean
  (``check_outlier_mean`` with ``--Hyper_m 5``; ``module_outlier`` here).
- normalize="global" (the authors'): over *all* matrices of the model, o = O / mean(O);
  c = the numel-weighted mean of o; r_m = (o_m - c) * (lam / max_m |o_m - c|).
- density_m = r_m + rho_l(m); each matrix is then magnitude-pruned at 1 - density_m
  (see :func:`darex_ext.algorithms.dppa.dppa_keep_mask`).

The global densities repeat the authors' float64 arithmetic step for step with numpy, so equal
outlier counts, with the matrices in the model's module order, give bit-equal densities.
Deliberate differences: means are taken in float64 on the deltas in the checkpoint's dtype (the
authors load the deltas as bfloat16 and take means in it, so an entry within rounding of a
threshold may be counted differently); a deviation with nothing to normalize by (one block, all
D equal, all O equal or all zero) is 0, where their arithmetic gives NaN or rounding noise; a
density is clipped to [min_density, 1], where their index would leave the sorted tensor.

normalize="block" is darex's earlier reading of the paper, kept as an option: the module
deviations are normalized within each block (mean O, weighted center and largest deviation of the
block's matrices), which keeps every block's kept count at rho_l times its size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..ops import _checks

__all__ = ["BLOCK_PATTERN", "NORMALIZATIONS", "group_by_block", "group_shapes_by_block", "DPPADensities",
           "dppa_densities"]

NORMALIZATIONS = ("global", "block")

# The block prefix of HF-style names: "model.layers.3.", "encoder.layer.5.", "transformer.h.0.",
# "encoder.block.2.", "blocks.7." -> "model.layers.3", ... (the first match from the left).
BLOCK_PATTERN = r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)\."


def group_by_block(deltas: Mapping[str, torch.Tensor], pattern: str = BLOCK_PATTERN, *,
                   min_dim: int = 2) -> dict[str, list[str]]:
    """Group tensor names into blocks by the regex `pattern` (group 1 is the block name).

    Only tensors with at least `min_dim` dimensions are grouped (the Linear weight matrices the
    authors' ``find_layers`` finds; biases and norms are left out). Names that do not match are
    left out. Blocks and their members keep the order of `deltas`.
    """
    return group_shapes_by_block({n: t.shape for n, t in deltas.items() if isinstance(t, torch.Tensor)},
                                 pattern, min_dim=min_dim)


def group_shapes_by_block(shapes: Mapping[str, Sequence[int]], pattern: str = BLOCK_PATTERN, *,
                          min_dim: int = 2) -> dict[str, list[str]]:
    """:func:`group_by_block` from name -> shape, so a checkpoint is grouped from its header
    without computing a delta."""
    regex = re.compile(pattern)
    blocks: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        if len(shape) < min_dim:
            continue
        m = regex.match(name)
        if m:
            blocks.setdefault(m.group(1), []).append(name)
    return blocks


@dataclass
class DPPADensities:
    """Per-module densities of dynamic pruning and the quantities behind them.

    Percentages (D, O) are in [0, 100]. `density` is clipped to [min_density, 1]; `unclipped` is
    r_m + rho_l as computed. `block_dev` and `r` do not depend on p, so :meth:`at` gives the
    densities of another drop rate from the same statistics (DPA's second, wider run).
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
    normalize: str = "global"
    block_dev: dict[str, float] | None = None
    min_density: float = 1e-3

    def drop_rates(self) -> dict[str, float]:
        """1 - density per module: the drop rate each matrix is pruned at (the authors'
        ``layer_sparsity_ratio``)."""
        return {name: 1.0 - d for name, d in self.density.items()}

    def at(self, p: float) -> DPPADensities:
        """The densities at drop rate `p` with the same statistics (the authors run DP a second
        time at p - width for DPA; the statistics, hence the deviations, are the same)."""
        p = _checks.real(p, "p")
        if not math.isfinite(p) or p >= 1.0:
            raise ValueError(f"p must be a finite number < 1, got {p}")
        if self.block_dev is None:
            raise ValueError("these densities carry no block deviations (build them with dppa_densities)")
        rho = _rho(self.block_dev, p)
        unclipped = {n: self.r[n] + rho[b] for n, b in self.block_of.items()}
        return DPPADensities(density=_clip(unclipped, self.min_density), unclipped=unclipped,
                             block_of=dict(self.block_of), D=dict(self.D), rho=rho, O=dict(self.O),
                             r=dict(self.r), p=p, lam=self.lam, normalize=self.normalize,
                             block_dev=dict(self.block_dev), min_density=self.min_density)


def _acc(t: torch.Tensor) -> torch.Tensor:
    # Compare in the accumulation dtype: a half tensor compared with a Python float would round
    # the threshold to half first.
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _percent(count: int, total: int) -> float:
    # The authors' order of operations: float(count) / total_params * 100.
    return float(count) / total * 100 if total else 0.0


def _abs_sum(t: torch.Tensor) -> float:
    return float(t.detach().abs().sum(dtype=torch.float64))


def _count_above(t: torch.Tensor, threshold: float) -> int:
    return int((_acc(t).abs() > threshold).sum())


@dataclass
class _Statistics:
    D: dict[str, float]
    O: dict[str, float]


def _statistics(deltas: Mapping[str, torch.Tensor], groups: dict[str, list[str]], block_outlier: float,
                module_outlier: float) -> _Statistics:
    """D per block and O per matrix, holding one tensor at a time (`deltas` may compute each
    lookup, as the pipeline's lazy deltas do): pass 1 takes each matrix's |delta| sum and its own
    outliers, pass 2 counts the block's pooled outliers once the pooled mean is known."""
    D: dict[str, float] = {}
    O: dict[str, float] = {}
    for block, names in groups.items():
        sums: list[float] = []
        sizes: list[int] = []
        for name in names:
            t = _checks.tensor(deltas[name], f"deltas[{name!r}]")
            n, s = t.numel(), _abs_sum(t)
            O[name] = _percent(_count_above(t, module_outlier * s / n) if n else 0, n)
            sums.append(s)
            sizes.append(n)
        total = sum(sizes)
        threshold = block_outlier * math.fsum(sums) / total if total else 0.0
        count = sum(_count_above(deltas[name], threshold) for name in names) if total else 0
        D[block] = _percent(count, total)
    return _Statistics(D=D, O=O)


def _all_equal(v: np.ndarray) -> bool:
    return v.size == 0 or bool((v == v[0]).all())


def _reference_deviation(values: Sequence[float], lam: float) -> np.ndarray:
    """(v - mean v) * (lam / max |v - mean v|): the authors' layer-level step, in numpy."""
    v = np.array(values, dtype=np.float64)
    if _all_equal(v):  # the mean of equal values can miss them by an ulp: noise, not evidence
        return np.zeros_like(v)
    v = v - v.mean()
    return v * (lam / np.absolute(v).max())


def _reference_module_deviation(values: Sequence[float], sizes: Sequence[int], lam: float) -> np.ndarray:
    """o = O / mean O; o - (sum o * n) / (sum n); times lam / max |.|: the authors' module-level
    step over all matrices of the model, in numpy."""
    o = np.array(values, dtype=np.float64)
    if _all_equal(o):  # all zero, or equal: see _reference_deviation
        return np.zeros_like(o)
    o = o / o.mean()
    w = np.array(sizes, dtype=np.int64)
    o = o - (o * w).sum() / w.sum()
    largest = np.absolute(o).max()
    if largest == 0.0:
        return np.zeros_like(o)
    return o * (lam / largest)


def _scaled_deviation(values: Sequence[float], center: float, lam: float) -> list[float]:
    # normalize="block": darex's earlier arithmetic.
    dev = [v - center for v in values]
    largest = max((abs(d) for d in dev), default=0.0)
    if largest == 0.0:
        return [0.0] * len(values)
    return [lam * d / largest for d in dev]


def _rho(block_dev: Mapping[str, float], p: float) -> dict[str, float]:
    # The authors' layer_ratio + (1 - sparsity_ratio): one float64 addition.
    return {b: dev + (1.0 - p) for b, dev in block_dev.items()}


def _clip(unclipped: Mapping[str, float], min_density: float) -> dict[str, float]:
    return {n: min(1.0, max(min_density, d)) for n, d in unclipped.items()}


def _check_blocks(deltas: Mapping[str, torch.Tensor], blocks) -> dict[str, list[str]]:
    if not isinstance(deltas, Mapping):
        raise TypeError(f"deltas must be a mapping of name -> tensor, got {type(deltas).__name__}")
    if blocks is None:  # grouping looks at every tensor: check them all first
        for name, t in deltas.items():
            _checks.tensor(t, f"deltas[{name!r}]")
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
                   block_outlier: float = 3.0, module_outlier: float = 5.0, min_density: float = 1e-3,
                   normalize: str = "global") -> DPPADensities:
    """DPPA's dynamic per-module densities (see the module docstring for the formulas).

    Args:
        deltas: name -> delta tensor (fine-tuned minus base). Read only; each tensor is looked
            up twice, one at a time.
        p: the target drop rate in [0, 1); the mean density is 1 - p.
        blocks: block name -> list of tensor names; None groups ``deltas`` with
            :func:`group_by_block` (HF names such as ``model.layers.<i>.`` or
            ``encoder.layer.<i>.``; matrices only).
        lam: lambda, the largest move of a block's and of a module's density (0.08, run.sh).
        block_outlier: D_l counts |delta| above this times the block mean (3, fixed by the authors).
        module_outlier: O_m counts |delta| above this times the module mean (M = 5, run.sh).
        min_density: lower clip of the densities (they must stay in (0, 1]).
        normalize: "global" (the authors': module deviations over the whole model) or "block"
            (darex's earlier variant: within each block).
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
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    groups = _check_blocks(deltas, blocks)
    stats = _statistics(deltas, groups, block_outlier, module_outlier)
    block_of = {n: b for b, names in groups.items() for n in names}
    sizes = {n: deltas[n].numel() for n in block_of}

    if normalize == "global":
        dev = _reference_deviation(list(stats.D.values()), lam)
        block_dev = {b: float(d) for b, d in zip(stats.D, dev)}
        names = list(block_of)
        module_dev = _reference_module_deviation([stats.O[n] for n in names], [sizes[n] for n in names], lam)
        r = {n: float(d) for n, d in zip(names, module_dev)}
    else:
        mean_d = sum(stats.D.values()) / len(stats.D)
        block_dev = dict(zip(stats.D, _scaled_deviation(list(stats.D.values()), mean_d, lam)))
        r = {}
        for b, names in groups.items():
            o_pct = [stats.O[n] for n in names]
            mean_o = sum(o_pct) / len(o_pct)
            o_norm = [v / mean_o for v in o_pct] if mean_o > 0.0 else [0.0] * len(o_pct)
            total = sum(sizes[n] for n in names)
            center = sum(sizes[n] * v for n, v in zip(names, o_norm)) / total if total else 0.0
            r.update(zip(names, _scaled_deviation(o_norm, center, lam)))

    rho = _rho(block_dev, p)
    unclipped = {n: r[n] + rho[block_of[n]] for n in block_of}
    return DPPADensities(density=_clip(unclipped, min_density), unclipped=unclipped, block_of=block_of,
                         D=stats.D, rho=rho, O=stats.O, r=r, p=p, lam=lam, normalize=normalize,
                         block_dev=block_dev, min_density=min_density)
