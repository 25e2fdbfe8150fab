"""Merging N fine-tunes of one base, one tensor at a time: mergekit's generalized task arithmetic
(arcee-ai/mergekit, `mergekit/merge_methods/generalized_task_arithmetic.py`, after the TIES paper,
Yadav et al. 2023) and SCE (`mergekit/merge_methods/sce.py`), with darex's sparsifiers
(`algorithms.merge_sparsify`).

| method (MERGE_METHODS) | sparsify each delta | sign election | normalize | rescale |
| --- | --- | --- | --- | --- |
| task-arithmetic | none | no | False | - |
| ties | magnitude | yes | True | none |
| dare-ties | random | yes | False | "q" (mergekit: "l1") |
| dare-linear | random | no | False | "q" (mergekit: "l1") |
| breadcrumbs | magnitude_outliers (gamma) | no | False | none |
| breadcrumbs-ties | magnitude_outliers (gamma) | yes | False | none |
| della | della_magprune (epsilon) | yes | True | "l1" |
| della-linear | della_magprune (epsilon) | no | False | "l1" |
| sce | top-variance entries (density = mergekit's select_topk) | yes | - | - |

Defaults are mergekit's except the DARE rescale: darex scales kept entries by 1/density (the DARE
paper; `rescale="l1"` or True is mergekit's). The arithmetic is mergekit's, op for op, in the
deltas' dtype (`accumulate="float32"` computes in float32, float64 inputs stay float64, and
`merge_tensor` rounds once at the end):

    d_i    = sparsify(delta_i) * w_i
    mask_i = sign(d_i) == elected sign   (consensus "sum": sign of sum_i d_i, "count": of
                                          sum_i sign(d_i); a tie elects +; ties family only)
    mixed  = sum_i d_i * mask_i / (sum_i w_i * mask_i, 0 -> 1)       (ties family)
           = sum_i d_i / (sum_i w_i, |.| < 1e-8 -> 1)                 (linear family)
    merged = mixed (divided only if normalize) * lam

so the deterministic methods equal mergekit's output bit for bit (where equal |x| straddle a cut,
darex keeps the lower index and mergekit's unstable sort an unspecified one) and gradients flow
as through mergekit's code. The random ones (DARE, DELLA) draw darex's seeded masks: the seed of fine-tune i
for tensor `name` is `merge_seed(seed, i, name)`, so a merged model does not depend on tensor
order or worker count; they equal mergekit in law, not in bits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..seeds import resolve_seed, tensor_seed
from .merge_sparsify import rescale_name, sparsify

__all__ = ["MERGE_METHODS", "merge_deltas", "merge_tensor", "task_arithmetic", "ties", "dare_ties",
           "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
           "merge_seed", "elect_sign", "consensus_mask"]

_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class _Method:
    sparsifier: str | None  # merge_sparsify method name
    sign_election: bool
    normalize: bool
    rescale: str | None


_METHODS = {
    "task-arithmetic": _Method(None, False, False, None),
    "ties": _Method("magnitude", True, True, None),
    "dare-ties": _Method("random", True, False, "q"),
    "dare-linear": _Method("random", False, False, "q"),
    "breadcrumbs": _Method("magnitude_outliers", False, False, None),
    "breadcrumbs-ties": _Method("magnitude_outliers", True, False, None),
    "della": _Method("della_magprune", True, True, "l1"),
    "della-linear": _Method("della_magprune", False, False, "l1"),
}
MERGE_METHODS = tuple(_METHODS) + ("sce",)
RANDOM_MERGE_METHODS = ("dare-ties", "dare-linear", "della", "della-linear")
_TIES_DEFAULT_DENSITY = 0.2  # darex's TIES default: keep the top 20% (p = 0.8)


def merge_seed(seed: int, index: int, name: str) -> int:
    """Seed of the random mask of fine-tune `index` for tensor `name`."""
    return tensor_seed((resolve_seed(seed) + index) & _U64, name)


# ---- arguments
def _per_model(value, n: int, name: str, default=None) -> list[float]:
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = [float(value)] * n
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} fine-tunes")
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value):
            raise TypeError(f"{name} must hold real numbers, got {list(value)!r}")
        values = [float(v) for v in value]
    else:
        raise TypeError(f"{name} must be a number or a sequence of {n} numbers, got {type(value).__name__}")
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def _densities(method: str, p, density, n: int) -> list[float] | None:
    if p is not None and density is not None:
        raise ValueError("give p (the drop rate) or density (the kept fraction), not both")
    if density is not None:
        ds = _per_model(density, n, "density")
        if any(d < 0 for d in ds):
            raise ValueError(f"density must be >= 0, got {ds}")
        return ds
    if p is not None:
        ps = _per_model(p, n, "p")
        if any(not 0.0 <= v <= 1.0 for v in ps):
            raise ValueError(f"p (the drop rate) must be in [0, 1], got {ps}")
        # 1 - p to 15 significant digits: p = 0.8 is density 0.2, not 0.19999999999999996,
        # whose int(density * n) would lose an entry wherever 0.2 * n is a whole number.
        return [float(f"{1.0 - v:.15g}") for v in ps]
    if method == "ties":
        return [_TIES_DEFAULT_DENSITY] * n
    if method == "sce":
        return [1.0] * n  # mergekit's select_topk default: no selection
    if method == "task-arithmetic":
        return None
    raise ValueError(f"method {method!r} needs p (the drop rate) or density (the kept fraction)")


def _work_dtype(dtypes: Sequence[torch.dtype], accumulate) -> torch.dtype:
    work = dtypes[0]
    for dt in dtypes[1:]:
        work = torch.promote_types(work, dt)
    if accumulate is None:
        return work
    acc = getattr(torch, accumulate, None) if isinstance(accumulate, str) else accumulate
    if acc not in (torch.float32, torch.float64):
        raise ValueError(f"accumulate must be None, 'float32' or 'float64', got {accumulate!r}")
    return torch.promote_types(work, acc)


def _check_tensors(tensors: Sequence[torch.Tensor], name: str) -> None:
    if len(tensors) == 0:
        raise ValueError(f"{name} must hold at least one tensor")
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}[{i}] must be a floating-point tensor")
        if t.shape != first.shape or t.device != first.device:
            raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)} on {t.device}, "
                             f"{name}[0] {tuple(first.shape)} on {first.device}")


# ---- sign election
def elect_sign(ds: Sequence[torch.Tensor], consensus: str = "sum") -> torch.Tensor:
    """+1/-1 per entry: the sign of the summed deltas ("sum", TIES) or of the summed signs
    ("count"); a tie (0) elects +1, as mergekit and PEFT do."""
    if consensus not in ("sum", "count"):
        raise ValueError(f"consensus must be 'sum' or 'count', got {consensus!r}")
    stacked = torch.stack(list(ds))
    total = stacked.sum(dim=0) if consensus == "sum" else stacked.sign().sum(dim=0)
    return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)


def consensus_mask(stacked: torch.Tensor, consensus: str = "sum",
                   mask_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Boolean [N, ...]: entry i agrees with the elected sign (mergekit's `get_mask`; a zero
    entry never agrees). `mask_dtype` is the dtype the signs are compared in (int8 = mergekit's
    int8_mask); the answer is the same."""
    if consensus not in ("sum", "count"):
        raise ValueError(f"consensus must be 'sum' or 'count', got {consensus!r}")
    dtype = stacked.dtype if mask_dtype is None else mask_dtype
    sign = stacked.sign().to(dtype)
    total = stacked.sum(dim=0) if consensus == "sum" else sign.sum(dim=0)
    majority = (total >= 0).to(dtype) * 2 - 1
    return sign == majority


def _agreement(stacked: torch.Tensor, consensus: str) -> torch.Tensor:
    """consensus_mask as 1.0 / 0.0 in stacked's dtype, by vectorized float ops (the boolean
    where / multiply run element by element): relu(sign(x) * elected) is 1 where x has the elected
    sign, 0 where not or x = 0. A NaN delta gives NaN where mergekit's mask gives 0; either way
    the merged entry is NaN (NaN * 0 is NaN)."""
    agree = stacked.sign()
    elected = agree.sum(dim=0) if consensus == "count" else stacked.sum(dim=0)
    # mergekit's (sum >= 0) * 2 - 1: sign(sign(s) + 0.5) is +1 for s >= 0, -1 below; NaN elects -1
    elected.sign_().add_(0.5).sign_().nan_to_num_(nan=-1.0)
    return agree.mul_(elected).clamp_(min=0)


# ---- the generalized task arithmetic core
def _gta(n: int, delta_at: Callable[[int], torch.Tensor],
         sparsify_at: Callable[[int, torch.Tensor], torch.Tensor] | None,
         weights: list[float], *, consensus: str | None, normalize: bool, lam: float, int8_mask: bool) -> torch.Tensor:
    first = sparsify_at(0, delta_at(0)) if sparsify_at else delta_at(0)
    # One [N, ...] buffer filled row by row, as mergekit: each sparsified delta is a separate
    # tensor first, so filling later rows cannot touch what autograd saved for earlier ones.
    stacked = first.new_empty((n, *first.shape))
    stacked[0] = first
    del first
    for i in range(1, n):
        d = delta_at(i)
        stacked[i] = sparsify_at(i, d) if sparsify_at else d
        del d
    grad = torch.is_grad_enabled() and stacked.requires_grad
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    while stacked.dim() > w.dim():
        w.unsqueeze_(-1)
    stacked.mul_(w)
    if consensus is not None:
        if grad:
            mask = consensus_mask(stacked, consensus, torch.int8 if int8_mask else stacked.dtype)
            mixed = (stacked * mask).sum(dim=0)
            divisor = (w * mask).sum(dim=0)
        else:
            # The same products in place: x * 1.0 and x * 0.0 are x * True and x * False, and
            # int8_mask changes only the dtype mergekit compares signs in.
            mask = _agreement(stacked, consensus)
            mixed = stacked.mul_(mask).sum(dim=0)
            divisor = mask.mul_(w).sum(dim=0)
        del mask
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    del stacked
    if normalize:
        mixed = mixed / divisor if grad else mixed.div_(divisor)
    if lam != 1:
        mixed = mixed * lam if grad else mixed.mul_(lam)
    return mixed


def _sce(n: int, delta_at: Callable[[int], torch.Tensor], density: float, *, int8_mask: bool) -> torch.Tensor:
    from .sparsify import sce_mask, sce_weight  # darex's SCE selection, loaded on first use

    mask_dtype = torch.int8 if int8_mask else None
    tvs = torch.stack([delta_at(i) for i in range(n)], dim=0)
    mask_dtype = mask_dtype or tvs.dtype
    if density < 1:
        tvs = tvs * sce_mask(tvs, density, mask_dtype).unsqueeze(0)
    erase = consensus_mask(tvs, "sum", mask_dtype)
    tv_w = sce_weight(tvs)
    while tv_w.dim() < tvs.dim():
        tv_w = tv_w.unsqueeze(-1)
    erased = tv_w * erase
    return (tvs * erased).sum(dim=0) / erased.sum(dim=0).clamp(min=1e-6)


def _merge(method: str, n: int, delta_at: Callable[[int], torch.Tensor], *, weights, p, density, seeds, q,
           rescale, gamma, epsilon, lam, normalize, consensus, int8_mask) -> torch.Tensor:
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    dens = _densities(method, p, density, n)
    if method == "sce":
        if weights is not None:
            raise ValueError("sce weighs the fine-tunes itself (by delta variance); weights must be None")
        if len(set(dens)) != 1:
            raise ValueError(f"sce selects one set of entries for all fine-tunes; density must be one number, "
                             f"got {dens}")
        return _sce(n, delta_at, dens[0], int8_mask=bool(int8_mask))
    spec = _METHODS[method]
    if consensus is not None and not spec.sign_election:
        raise ValueError(f"consensus applies to the sign-electing methods, not {method!r}")
    if consensus not in (None, "sum", "count"):
        raise ValueError(f"consensus must be 'sum' or 'count', got {consensus!r}")
    w = _per_model(weights, n, "weights", default=1.0)
    mode = spec.rescale if rescale is None else rescale_name(rescale, allow_q=spec.sparsifier == "random")
    if q is not None and mode != "q":
        raise ValueError(f"q applies to the DARE methods with rescale='q', not {method!r} with rescale={mode!r}")
    if method in RANDOM_MERGE_METHODS:
        if seeds is None or len(seeds) != n:
            raise ValueError(f"method {method!r} needs seeds, one per fine-tune ({n})")
    qs = [None] * n if q is None else _per_model(q, n, "q")
    gammas = _per_model(gamma, n, "gamma")
    epsilons = _per_model(epsilon, n, "epsilon")
    sparsify_at = None
    if spec.sparsifier is not None:
        def sparsify_at(i: int, d: torch.Tensor) -> torch.Tensor:
            return sparsify(d, dens[i], spec.sparsifier, gamma=gammas[i], epsilon=epsilons[i], rescale=mode,
                            seed=None if seeds is None else seeds[i], q=qs[i])
    return _gta(n, delta_at, sparsify_at, w,
                consensus=(consensus or "sum") if spec.sign_election else None,
                normalize=spec.normalize if normalize is None else bool(normalize),
                lam=float(lam), int8_mask=bool(int8_mask))


# ---- public entries
def merge_deltas(deltas: Sequence[torch.Tensor], method: str, weights=None, *, p=None, density=None, seeds=None,
                 q=None, rescale=None, gamma=0.01, epsilon=0.15, lam: float = 1.0, normalize: bool | None = None,
                 consensus: str | None = None, int8_mask: bool = False, accumulate=None) -> torch.Tensor:
    """The merged task vector of `deltas` (finetuned_i - base) by `method`, in the deltas' dtype
    (or `accumulate`'s, see the module docstring). The deltas are never modified.

    Args:
        method: one of MERGE_METHODS.
        weights: per fine-tune weight, a number or a sequence (default 1; not for sce).
        p, density: drop rate or kept fraction (one of them; per fine-tune or one number); p
            means density 1 - p to 15 significant digits (p=0.8 is density 0.2 exactly). TIES
            defaults to density 0.2, sce to 1 (mergekit's select_topk); the others need one.
        seeds: DARE / DELLA: one mask seed per fine-tune (ints or torch.Generators).
        q: DARE: kept entries scaled by 1/q (DAREx-q) instead of 1/density.
        rescale: None (the method's default), False / "none", True / "l1", "l2", "linf", and for
            DARE "q".
        gamma: breadcrumbs: the fraction of largest entries dropped as outliers (mergekit 0.01).
        epsilon: DELLA: half the spread of the keep probabilities (mergekit 0.15).
        lam: scale of the merged delta (mergekit's lambda).
        normalize: divide by the summed (agreeing) weights; None is the method's default.
        consensus: sign election "sum" (TIES) or "count", sign-electing methods only.
        int8_mask: mergekit's int8_mask (signs compared as int8; same result).
        accumulate: None (the deltas' dtype, as mergekit), "float32" or "float64".
    """
    _check_tensors(deltas, "deltas")
    work = _work_dtype([d.dtype for d in deltas], accumulate)
    return _merge(method, len(deltas), lambda i: deltas[i].to(work), weights=weights, p=p, density=density,
                  seeds=seeds, q=q, rescale=rescale, gamma=gamma, epsilon=epsilon, lam=lam, normalize=normalize,
                  consensus=consensus, int8_mask=int8_mask)


def task_arithmetic(deltas, weights=None, *, lam: float = 1.0, normalize: bool = False, accumulate=None):
    """sum_i w_i * delta_i (divided by sum_i w_i if normalize), times lam: mergekit's task_arithmetic."""
    return merge_deltas(deltas, "task-arithmetic", weights, lam=lam, normalize=normalize, accumulate=accumulate)


def ties(deltas, weights=None, *, p=None, density=None, lam: float = 1.0, normalize: bool = True,
         consensus: str = "sum", rescale=None, int8_mask: bool = False, accumulate=None):
    """TIES (mergekit's ties): keep each delta's max(1, int(density * n)) largest |x| (default
    density 0.2), elect a sign per entry, average the agreeing entries by weight."""
    return merge_deltas(deltas, "ties", weights, p=p, density=density, lam=lam, normalize=normalize,
                        consensus=consensus, rescale=rescale, int8_mask=int8_mask, accumulate=accumulate)


def dare_ties(deltas, weights=None, *, p=None, density=None, seeds, q=None, rescale="q", lam: float = 1.0,
              normalize: bool = False, consensus: str = "sum", int8_mask: bool = False, accumulate=None):
    """DARE each delta (keep with probability density, scale by 1/density, by 1/q with q, or to
    the delta's norm with rescale="l1" as mergekit's dare_ties), then TIES sign election."""
    return merge_deltas(deltas, "dare-ties", weights, p=p, density=density, seeds=seeds, q=q, rescale=rescale,
                        lam=lam, normalize=normalize, consensus=consensus, int8_mask=int8_mask,
                        accumulate=accumulate)


def dare_linear(deltas, weights=None, *, p=None, density=None, seeds, q=None, rescale="q", lam: float = 1.0,
                normalize: bool = False, accumulate=None):
    """DARE each delta, then the weighted sum (mergekit's dare_linear)."""
    return merge_deltas(deltas, "dare-linear", weights, p=p, density=density, seeds=seeds, q=q, rescale=rescale,
                        lam=lam, normalize=normalize, accumulate=accumulate)


def breadcrumbs(deltas, weights=None, *, p=None, density=None, gamma=0.01, rescale=None, lam: float = 1.0,
                normalize: bool = False, accumulate=None):
    """Model Breadcrumbs (mergekit's breadcrumbs): drop each delta's largest `gamma` fraction and
    its smallest entries down to `density`, then the weighted sum."""
    return merge_deltas(deltas, "breadcrumbs", weights, p=p, density=density, gamma=gamma, rescale=rescale,
                        lam=lam, normalize=normalize, accumulate=accumulate)


def breadcrumbs_ties(deltas, weights=None, *, p=None, density=None, gamma=0.01, rescale=None, lam: float = 1.0,
                     normalize: bool = False, consensus: str = "sum", int8_mask: bool = False, accumulate=None):
    """Breadcrumbs sparsification, then TIES sign election (mergekit's breadcrumbs_ties)."""
    return merge_deltas(deltas, "breadcrumbs-ties", weights, p=p, density=density, gamma=gamma, rescale=rescale,
                        lam=lam, normalize=normalize, consensus=consensus, int8_mask=int8_mask,
                        accumulate=accumulate)


def della(deltas, weights=None, *, p=None, density=None, epsilon=0.15, seeds, rescale="l1", lam: float = 1.0,
          normalize: bool = True, consensus: str = "sum", int8_mask: bool = False, accumulate=None):
    """DELLA (mergekit's della): keep entries with rank-based probabilities density +/- epsilon,
    then TIES sign election."""
    return merge_deltas(deltas, "della", weights, p=p, density=density, epsilon=epsilon, seeds=seeds,
                        rescale=rescale, lam=lam, normalize=normalize, consensus=consensus, int8_mask=int8_mask,
                        accumulate=accumulate)


def della_linear(deltas, weights=None, *, p=None, density=None, epsilon=0.15, seeds, rescale="l1",
                 lam: float = 1.0, normalize: bool = False, accumulate=None):
    """DELLA sparsification, then the weighted sum (mergekit's della_linear)."""
    return merge_deltas(deltas, "della-linear", weights, p=p, density=density, epsilon=epsilon, seeds=seeds,
                        rescale=rescale, lam=lam, normalize=normalize, accumulate=accumulate)


def sce(deltas, *, density=None, p=None, int8_mask: bool = False, accumulate=None):
    """SCE (mergekit's sce): keep the entries whose deltas vary most across fine-tunes (density =
    mergekit's select_topk, default 1), elect signs, weigh each fine-tune by its mean squared
    delta."""
    return merge_deltas(deltas, "sce", p=p, density=density, int8_mask=int8_mask, accumulate=accumulate)


def merge_tensor(base: torch.Tensor, finetuned: Sequence[torch.Tensor], method: str, *, weights=None, p=None,
                 density=None, q=None, seed: int = 0, name: str = "", seeds: Sequence[int] | None = None,
                 lam: float = 1.0, normalize: bool | None = None, rescale=None, consensus: str | None = None,
                 gamma=0.01, epsilon=0.15, int8_mask: bool = False, accumulate=None) -> torch.Tensor:
    """base + merge(finetuned_i - base) for one tensor, in base's dtype.

    The deltas are computed in the promoted dtype of the inputs (mergekit's), or `accumulate`'s;
    the sum is rounded once to base's dtype. `seed` and `name` (the tensor's name) give the random
    methods' per-fine-tune seeds merge_seed(seed, i, name), unless `seeds` lists them. The other
    arguments are `merge_deltas`'s.
    """
    if not isinstance(base, torch.Tensor) or not base.is_floating_point():
        raise TypeError("base must be a floating-point tensor")
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    _check_tensors(finetuned, "finetuned")
    for i, ft in enumerate(finetuned):
        if ft.shape != base.shape:
            raise ValueError(f"finetuned[{i}] has shape {tuple(ft.shape)}, base {tuple(base.shape)}")
    work = _work_dtype([base.dtype] + [f.dtype for f in finetuned], accumulate)
    base_w = base.to(work)
    n = len(finetuned)
    if seeds is None and method in RANDOM_MERGE_METHODS:
        seeds = [merge_seed(seed, i, name) for i in range(n)]
    mixed = _merge(method, n, lambda i: finetuned[i].to(work) - base_w, weights=weights, p=p, density=density,
                   seeds=seeds, q=q, rescale=rescale, gamma=gamma, epsilon=epsilon, lam=lam, normalize=normalize,
                   consensus=consensus, int8_mask=int8_mask)
    return (base_w + mixed).to(base.dtype)  # never in place: base may be the caller's
