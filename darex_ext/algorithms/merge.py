"""Merging N fine-tunes of one base, one tensor at a time: task arithmetic, TIES, DARE-TIES and
DARE-linear.

Every function takes the task vectors (deltas = finetuned_i - base) of one tensor and returns the
merged delta in float32 (float64 for float64 input); `merge_tensor` adds it to the base and rounds
once to the base's dtype. The weighting, sign election and normalization follow mergekit's
generalized task arithmetic (which follows the TIES paper, Yadav et al. 2023):

    d_i   = sparsify(delta_i) * w_i
    sign  = +1 where sum_i d_i >= 0 else -1             (TIES "elect", consensus="sum")
    keep  = sign(d_i) == sign                            (TIES "disjoint merge")
    merged = sum_i d_i * keep_i / (sum_i w_i * keep_i if normalize else 1) * lam

DARE variants drop with `darex_ext.prune_` using the seed `tensor_seed(seed + i, name)` for the
i-th fine-tune, so a merged model does not depend on tensor order or worker count.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ..seeds import resolve_seed, tensor_seed
from .prune_tensor import prune_tensor

__all__ = ["MERGE_METHODS", "task_arithmetic", "ties", "dare_ties", "dare_linear", "merge_tensor",
           "merge_seed", "elect_sign"]

MERGE_METHODS = ("task-arithmetic", "ties", "dare-ties", "dare-linear")
_U64 = (1 << 64) - 1


def merge_seed(seed: int, index: int, name: str) -> int:
    """Seed of the DARE mask of fine-tune `index` for tensor `name`."""
    return tensor_seed((resolve_seed(seed) + index) & _U64, name)


def _acc(deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if len(deltas) == 0:
        raise ValueError("deltas must hold at least one tensor")
    first = deltas[0]
    for i, d in enumerate(deltas):
        if not isinstance(d, torch.Tensor) or not d.is_floating_point():
            raise TypeError(f"deltas[{i}] must be a floating-point tensor")
        if d.shape != first.shape or d.device != first.device:
            raise ValueError(f"deltas[{i}] has shape {tuple(d.shape)} on {d.device}, "
                             f"deltas[0] {tuple(first.shape)} on {first.device}")
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32
    # Always a private copy: the sparsifiers below work in place.
    return [d.detach().to(acc, copy=True) for d in deltas]


def _per_model(value, n: int, name: str, default=None) -> list:
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value)] * n
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} fine-tunes")
        return [float(v) for v in value]
    raise TypeError(f"{name} must be a number or a sequence of {n} numbers, got {type(value).__name__}")


def _weighted(ds: list[torch.Tensor], weights) -> tuple[list[torch.Tensor], list[float]]:
    w = _per_model(weights, len(ds), "weights", default=1.0)
    for d, wi in zip(ds, w):
        if wi != 1.0:
            d.mul_(wi)
    return ds, w


def elect_sign(ds: Sequence[torch.Tensor], consensus: str = "sum") -> torch.Tensor:
    """+1/-1 per entry: the sign of the summed deltas ("sum", TIES) or of the summed signs
    ("count"); a tie (0) elects +1, as mergekit and PEFT do."""
    if consensus == "sum":
        total = torch.zeros_like(ds[0])
        for d in ds:
            total.add_(d)
    elif consensus == "count":
        total = torch.zeros_like(ds[0])
        for d in ds:
            total.add_(d.sign())
    else:
        raise ValueError(f"consensus must be 'sum' or 'count', got {consensus!r}")
    return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)


def _disjoint(ds: list[torch.Tensor], w: list[float], *, normalize: bool, consensus: str) -> torch.Tensor:
    sign = elect_sign(ds, consensus)
    mixed = torch.zeros_like(ds[0])
    divisor = torch.zeros_like(ds[0]) if normalize else None
    for d, wi in zip(ds, w):
        keep = d.sign() == sign
        mixed.add_(torch.where(keep, d, 0.0))
        if divisor is not None:
            divisor.add_(keep.to(divisor.dtype), alpha=wi)
    if divisor is not None:
        divisor[divisor == 0] = 1.0
        mixed.div_(divisor)
    return mixed


def _linear(ds: list[torch.Tensor], w: list[float], *, normalize: bool) -> torch.Tensor:
    mixed = torch.zeros_like(ds[0])
    for d in ds:
        mixed.add_(d)
    if normalize:
        total = sum(w)
        if abs(total) >= 1e-8:
            mixed.div_(total)
    return mixed


def _scaled(mixed: torch.Tensor, lam: float) -> torch.Tensor:
    return mixed if lam == 1.0 else mixed.mul_(lam)


def task_arithmetic(deltas: Sequence[torch.Tensor], weights=None, *, lam: float = 1.0,
                    normalize: bool = False) -> torch.Tensor:
    """sum_i w_i * delta_i (divided by sum_i w_i if normalize), times lam."""
    ds, w = _weighted(_acc(deltas), weights)
    return _scaled(_linear(ds, w, normalize=normalize), lam)


def ties(deltas: Sequence[torch.Tensor], weights=None, *, p=0.8, lam: float = 1.0,
         normalize: bool = True, consensus: str = "sum") -> torch.Tensor:
    """TIES: trim each delta to its largest-magnitude entries (drop rate p per fine-tune, exact
    top-k), elect a sign per entry, average the agreeing entries (weighted)."""
    ds = _acc(deltas)
    for d, pi in zip(ds, _per_model(p, len(ds), "p")):
        prune_tensor(d, "magnitude", pi)
    ds, w = _weighted(ds, weights)
    return _scaled(_disjoint(ds, w, normalize=normalize, consensus=consensus), lam)


def _dare_all(ds: list[torch.Tensor], p, seeds: Sequence[int], q, rescale: str) -> None:
    ps = _per_model(p, len(ds), "p")
    if len(seeds) != len(ds):
        raise ValueError(f"seeds has {len(seeds)} values for {len(ds)} fine-tunes")
    qs = [None] * len(ds) if q is None else _per_model(q, len(ds), "q")
    for d, pi, si, qi in zip(ds, ps, seeds, qs):
        prune_tensor(d, "dare" if qi is None else "darex-q", pi, q=qi, seed=si, rescale=rescale)


def dare_ties(deltas: Sequence[torch.Tensor], weights=None, *, p, seeds: Sequence[int], q=None,
              rescale: str = "q", lam: float = 1.0, normalize: bool = False,
              consensus: str = "sum") -> torch.Tensor:
    """DARE each delta (drop rate p, rescale by 1/q, default 1/(1-p); rescale="l1" keeps each
    delta's L1 norm as mergekit does), then TIES sign election and disjoint merge."""
    ds = _acc(deltas)
    _dare_all(ds, p, seeds, q, rescale)
    ds, w = _weighted(ds, weights)
    return _scaled(_disjoint(ds, w, normalize=normalize, consensus=consensus), lam)


def dare_linear(deltas: Sequence[torch.Tensor], weights=None, *, p, seeds: Sequence[int], q=None,
                rescale: str = "q", lam: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """DARE each delta, then the weighted sum (task arithmetic on the pruned deltas)."""
    ds = _acc(deltas)
    _dare_all(ds, p, seeds, q, rescale)
    ds, w = _weighted(ds, weights)
    return _scaled(_linear(ds, w, normalize=normalize), lam)


_NORMALIZE_DEFAULT = {"task-arithmetic": False, "ties": True, "dare-ties": False, "dare-linear": False}


def merge_tensor(base: torch.Tensor, finetuned: Sequence[torch.Tensor], method: str, *, weights=None,
                 p=None, q=None, seed: int = 0, name: str = "", lam: float = 1.0,
                 normalize: bool | None = None, rescale: str = "q") -> torch.Tensor:
    """base + merge(finetuned_i - base) for one tensor, rounded once to base's dtype.

    method: "task-arithmetic" | "ties" | "dare-ties" | "dare-linear". p: drop rate (TIES default
    0.8, i.e. keep the top 20%; DARE variants need it). normalize defaults as in mergekit (True
    for TIES only). name: the tensor's name, for the per-tensor DARE seeds.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    if not isinstance(base, torch.Tensor) or not base.is_floating_point():
        raise TypeError("base must be a floating-point tensor")
    for i, ft in enumerate(finetuned):
        if ft.shape != base.shape:
            raise ValueError(f"finetuned[{i}] has shape {tuple(ft.shape)}, base {tuple(base.shape)}")
    acc = torch.float64 if base.dtype == torch.float64 else torch.float32
    base_acc = base.to(acc)
    deltas = [ft.to(acc) - base_acc for ft in finetuned]
    norm = _NORMALIZE_DEFAULT[method] if normalize is None else bool(normalize)
    if method == "task-arithmetic":
        mixed = task_arithmetic(deltas, weights, lam=lam, normalize=norm)
    elif method == "ties":
        mixed = ties(deltas, weights, p=0.8 if p is None else p, lam=lam, normalize=norm)
    else:
        if p is None:
            raise ValueError(f"method {method!r} needs p (the DARE drop rate)")
        seeds = [merge_seed(seed, i, name) for i in range(len(deltas))]
        fn = dare_ties if method == "dare-ties" else dare_linear
        mixed = fn(deltas, weights, p=p, seeds=seeds, q=q, rescale=rescale, lam=lam, normalize=norm)
    return (base_acc + mixed).to(base.dtype)  # never in place: base is the caller's
