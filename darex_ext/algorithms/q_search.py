"""Empirical q (DAREx Algorithm 2): a two-round grid search, and the unlabeled objective.

``find_q`` searches one number (a global q, or eta of analytic q) against any objective;
``output_change`` measures how far a pruned model's outputs move from the fine-tuned model's,
averaged over mask seeds; ``dare_model`` and ``output_change_objective`` put the two together.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..ops import dare
from ..seeds import tensor_seed
from . import _args
from .input_stats import call_model

__all__ = ["QSearch", "find_q", "dare_model", "output_change", "output_change_objective"]


@dataclass
class QSearch:
    """Result of :func:`find_q`.

    Attributes:
        best: the best value found (the smallest among equally good ones).
        score: its objective value.
        history: every evaluation in order, as (value, score, round) with round 1 or 2.
    """

    best: float
    score: float
    history: list[tuple[float, float, int]] = field(default_factory=list)


def _points(start: float, stop: float, step: float) -> list[float]:
    # start, start + step, ... <= stop, computed by index (no drift) and rounded so that the
    # same point of both rounds is the same float.
    n = int(math.floor((stop - start) / step + 1e-9))
    return [round(start + i * step, 12) for i in range(max(n, -1) + 1)]


def find_q(evaluate: Callable[[float], float], lo: float, hi: float, step: float, *, decay: float = 0.1,
           patience: int = 3, maximize: bool = True) -> QSearch:
    """DAREx Algorithm 2: coarse scan, then a finer scan around the best.

    Round 1 evaluates v = lo, lo + step, ... up to hi. Round 2 scans around the round-1 best v*
    from max(lo, v* - step * (1 - decay)) to min(hi, v* + step) in steps of step * decay. In
    each round the scan stops once more than `patience` evaluations in a row fail to beat the
    best score of that round (so round 2 may climb from below v* before it is compared).
    Values are evaluated once: round 2 reuses round 1's score of a value both rounds visit.

    Deliberate choices where the paper is silent: round 2 is clipped to hi as well as lo (a
    value outside [lo, hi] may be invalid, e.g. q > 1); "beat" is strict, so among equal
    scores the first (smallest) value wins.

    Args:
        evaluate: value -> score. Maximized by default (accuracy, a metric); pass
            maximize=False for losses such as :func:`output_change`.
        lo, hi, step: the round-1 grid, lo <= hi, step > 0.
        decay: round 2's step as a fraction of step, in (0, 1).
        patience: evaluations in a row without improvement tolerated, >= 0.

    Returns:
        :class:`QSearch` with the best value, its score and the whole history.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    lo, hi = _args.number(lo, "lo"), _args.number(hi, "hi")
    if hi < lo:
        raise ValueError(f"hi must be >= lo, got lo={lo}, hi={hi}")
    step = _args.positive(step, "step")
    decay = _args.open_unit(decay, "decay")
    patience = _args.count(patience, "patience")
    sign = 1.0 if maximize else -1.0
    seen: dict[float, float] = {}
    history: list[tuple[float, float, int]] = []

    def score_of(v: float, rnd: int) -> float:
        if v not in seen:
            s = _args.number(evaluate(v), "evaluate(value)")
            seen[v] = s
            history.append((v, s, rnd))
        return seen[v]

    def scan(points: Sequence[float], rnd: int) -> tuple[float, float]:
        best_v, best_s, misses = points[0], None, 0
        for v in points:
            s = score_of(v, rnd)
            if best_s is None or sign * s > sign * best_s:
                best_v, best_s, misses = v, s, 0
            else:
                misses += 1
                if misses > patience:
                    break
        return best_v, best_s

    v1, s1 = scan(_points(lo, hi, step), 1)
    start = max(lo, v1 - step * (1.0 - decay))
    v2, s2 = scan(_points(round(start, 12), min(hi, v1 + step), step * decay), 2)
    if sign * s2 > sign * s1 or (s2 == s1 and v2 < v1):
        v1, s1 = v2, s2
    return QSearch(best=v1, score=s1, history=history)


def _delta_pairs(finetuned: nn.Module, base: nn.Module, include) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    base_params = dict(base.named_parameters())
    pairs = []
    for name, param in finetuned.named_parameters():
        other = base_params.get(name)
        if other is None or other.shape != param.shape or not param.is_floating_point():
            continue
        if include is not None and not include(name):
            continue
        pairs.append((name, param, other))
    if not pairs:
        raise ValueError("finetuned and base share no floating parameter of the same name and shape")
    return pairs


def _q_for(q, name: str):
    if isinstance(q, Mapping):
        return q.get(name)
    return q


def _write_dare(target: nn.Module, pairs, p: float, q, seed: int) -> nn.Module:
    params = dict(target.named_parameters())
    with torch.no_grad():
        for name, ft, b in pairs:
            out = params[name]
            dare(ft.detach(), b.detach().to(ft.device, ft.dtype), p, _q_for(q, name),
                 seed=tensor_seed(seed, name), out=out.data)
    return target


def dare_model(finetuned: nn.Module, base: nn.Module, p: float, q=None, *, seed: int = 0,
               include: Callable[[str], bool] | None = None, out: nn.Module | None = None) -> nn.Module:
    """A copy of `finetuned` whose parameters are base + prune(finetuned - base, p, q).

    Every floating parameter present in both models with the same name and shape is pruned
    (``include(name)`` narrows that), with the mask seed ``tensor_seed(seed, name)``; other
    parameters and buffers stay as in `finetuned`.

    Args:
        q: None (1 - p, DARE), a float (global DAREx-q), or a mapping parameter name -> float or
            per-row tensor (e.g. :func:`analytic_q_for_model`; missing names get 1 - p).
        out: a model of the same architecture to overwrite instead of a fresh deep copy.
    """
    pairs = _delta_pairs(finetuned, base, include)
    target = copy.deepcopy(finetuned) if out is None else out
    return _write_dare(target, pairs, p, q, seed)


def _compare(ft_out, pr_out, top_k: int | None) -> torch.Tensor:
    logits_ft = getattr(ft_out, "logits", None)
    if logits_ft is not None and top_k is not None:
        # Causal LM: MSE of the pruned logits at the fine-tuned model's top-k tokens.
        logits_pr = pr_out.logits.float()
        idx = logits_ft.float().topk(min(top_k, logits_ft.shape[-1]), dim=-1).indices
        return (logits_ft.float().gather(-1, idx) - logits_pr.gather(-1, idx)).square().mean()
    return (_last_hidden(ft_out).float() - _last_hidden(pr_out).float()).abs().mean()


def _last_hidden(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("last_hidden_state", "hidden_states", "logits"):
        value = getattr(out, attr, None)
        if value is None and isinstance(out, Mapping):
            value = out.get(attr)
        if value is not None:
            return value[-1] if attr == "hidden_states" else value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the last hidden state in a model output of type {type(out).__name__}")


def output_change(finetuned: nn.Module, pruned: nn.Module | Callable[[int], nn.Module], batches: Iterable, *,
                  seeds: Sequence[int] = (0, 1, 2), top_k: int | None = 10) -> float:
    """How far pruning moves the model's outputs: the unlabeled objective of DAREx-q (minimize it).

    Per batch, the mean absolute difference of the last hidden states (the output tensor, or
    ``last_hidden_state`` / ``hidden_states[-1]`` / ``logits`` of a model output); for outputs
    that have ``logits`` (causal LMs), the MSE of the logits at the fine-tuned model's top-k
    tokens instead, unless ``top_k=None``. Averaged over batches and over mask seeds.

    Args:
        finetuned: the reference model.
        pruned: a pruned model, or a callable seed -> pruned model (e.g. ``lambda s:
            dare_model(ft, base, p, q, seed=s)``), called once per seed in `seeds`.
        batches: a re-iterable of inputs (a list), passed as in ``call_model``.
        seeds: mask seeds to average over (ignored when `pruned` is a model).
        top_k: k of the logit MSE for outputs with ``logits`` (default 10); None compares the
            last hidden state (or the logits) by mean absolute change instead.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least one batch")
    if top_k is not None:
        top_k = _args.count(top_k, "top_k", 1)
    models = [pruned] if isinstance(pruned, nn.Module) else None
    if models is None:
        if not callable(pruned):
            raise TypeError("pruned must be an nn.Module or a callable seed -> nn.Module")
        if not seeds:
            raise ValueError("seeds must not be empty")
    was = finetuned.training
    finetuned.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            reference = [call_model(finetuned, b) for b in batches]
            for item in (models if models is not None else seeds):
                model = item if models is not None else pruned(int(item))
                model_was = model.training
                model.eval()
                for b, ref_out in zip(batches, reference):
                    total += float(_compare(ref_out, call_model(model, b), top_k))
                    n += 1
                model.train(model_was)
    finally:
        finetuned.train(was)
    return total / n


def output_change_objective(finetuned: nn.Module, base: nn.Module, batches: Iterable, p: float, *,
                            seeds: Sequence[int] = (0, 1, 2), top_k: int | None = 10,
                            include: Callable[[str], bool] | None = None) -> Callable[[float], float]:
    """q -> :func:`output_change` of the DARE-pruned model at rescale q, for ``find_q(...,
    maximize=False)``. One working copy of the model is made up front and overwritten for every
    (q, seed) with the fused ``dare`` kernel, so a search costs no further copies."""
    batches = list(batches)
    pairs = _delta_pairs(finetuned, base, include)
    work = copy.deepcopy(finetuned)

    def objective(q: float) -> float:
        return output_change(finetuned, lambda s: _write_dare(work, pairs, p, q, s), batches,
                             seeds=seeds, top_k=top_k)

    return objective
