"""Empirical q (DAREx Algorithm 2): a two-round grid search, and the unlabeled objective.

``find_q`` searches one number (a global q, or eta of analytic q) against any objective;
``output_change`` measures how far a pruned model's outputs move from the fine-tuned model's,
averaged over mask seeds; ``dare_model`` and ``output_change_objective`` put the two together.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..ops import dare
from ..seeds import tensor_seed
from . import _args
from .input_stats import call_model

__all__ = ["QSearch", "find_q", "FIND_Q_MODES", "dare_model", "output_change", "output_change_objective",
           "QFallbackWarning", "REFERENCE_OBJECTIVES"]


class QFallbackWarning(UserWarning):
    """Some tensors were pruned with a q their method did not give them (the plain-DARE 1-p)."""


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


_MAX_POINTS = 1 << 53  # beyond this, lo + i * step no longer tells points apart


def _check_grid(lo: float, hi: float, step: float) -> None:
    for v, name in ((lo, "lo"), (hi, "hi"), (step, "step")):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if (hi - lo) / step >= _MAX_POINTS:
        raise ValueError(f"lo={lo}, hi={hi}, step={step} make more than 2^53 grid points")


def _points(start: float, stop: float, step: float) -> Iterator[float]:
    # start, start + step, ... <= stop, computed by index (no drift) and rounded so that the
    # same point of both rounds is the same float. Lazy: a tiny step costs nothing up front.
    n = int(math.floor((stop - start) / step + 1e-9))
    return (round(start + i * step, 12) for i in range(max(n, -1) + 1))


def _arange(start: float, stop: float, step: float) -> Iterator[float]:
    """numpy.arange(start, stop, step) in float64, value for value, without building it:
    ceil((stop - start) / step) points, the second start + step, then start + i * d with
    d = (start + step) - start (numpy's fill rule)."""
    length = math.ceil((stop - start) / step)
    if length <= 0:
        return iter(())
    second = start + step
    d = second - start

    def gen():
        yield start
        if length > 1:
            yield second
        for i in range(2, length):
            yield start + i * d

    return gen()


def _scan_reference(points: Iterable[float], score_of, sign: float) -> None:
    # The published loop: ties count as progress (>=); four misses in a row end the round.
    best, misses = -math.inf, 0
    for v in points:
        s = sign * score_of(v)
        if s >= best:
            best, misses = s, 0
        else:
            misses += 1
        if misses > 3:
            break


def _find_q_reference(evaluate, lo: float, hi: float, step: float, decay: float, sign: float,
                      variant: str) -> QSearch:
    scores: dict[float, float] = {}   # insertion order, as the published dict
    history: list[tuple[float, float, int]] = []
    rnd = 1

    def score_of(v: float) -> float:
        s = _args.number(evaluate(v), "evaluate(value)")
        scores[v] = s  # a value seen again keeps its first position and takes the new score
        history.append((v, s, rnd))
        return s

    def first_best() -> float:
        return max(scores, key=lambda v: sign * scores[v])  # max keeps the first of equals

    _scan_reference(_arange(lo, hi + step, step), score_of, sign)
    center = first_best()
    floor = lo + step * decay if variant == "encoder" else 0.0
    rnd = 2
    _scan_reference(_arange(max(floor, center - step * (1 - decay)), center + step, step * decay), score_of, sign)
    best = first_best()
    return QSearch(best=best, score=scores[best], history=history)


FIND_Q_MODES = ("reference", "clipped")


def find_q(evaluate: Callable[[float], float], lo: float, hi: float, step: float, *, decay: float = 0.1,
           patience: int = 3, maximize: bool = True, mode: str = "reference",
           variant: str = "encoder") -> QSearch:
    """DAREx Algorithm 2: coarse scan, then a finer scan around the best.

    mode="reference" (the default, because the paper's numbers come from it) is the published
    search (vengdeng/DAREx ``find_q_encoder.py`` / ``find_q_decoder.py``,
    ``find_optimal_param``): round 1 visits ``numpy.arange(lo, hi + step, step)`` (which may
    pass hi), counting a tie as progress and stopping after 4 misses in a row; round 2 visits
    ``numpy.arange(max(lo + step * decay, v* - step * (1 - decay)), v* + step, step * decay)``
    around the round-1 best v* (``variant="decoder"``: max(0, ...)), unclipped, hi exclusive;
    the first-found maximum over both rounds wins (a value visited twice keeps its first
    place and its latest score). `patience` does not apply (it is 3, as published).

    mode="clipped" is darex_ext's earlier reading, kept for objectives where a value outside
    [lo, hi] is invalid: round 1 evaluates v = lo, lo + step, ... up to hi. Round 2 scans around the round-1 best v*
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
        lo, hi, step: the round-1 grid, lo <= hi, step > 0, all finite. The grid is generated
            lazily: a tiny step costs nothing until it is evaluated.
        decay: round 2's step as a fraction of step, in (0, 1).
        patience: mode="clipped": evaluations in a row without improvement tolerated, >= 0.
        mode: "reference" (default) or "clipped", see above.
        variant: mode="reference": "encoder" (round 2 starts no lower than lo + step * decay)
            or "decoder" (no lower than 0), as the two published scripts differ.

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
    mode = _args.choice(mode, "mode", FIND_Q_MODES)
    variant = _args.choice(variant, "variant", ("encoder", "decoder"))
    _check_grid(lo, hi, step)
    sign = 1.0 if maximize else -1.0
    if mode == "reference":
        return _find_q_reference(evaluate, lo, hi, step, decay, sign, variant)
    seen: dict[float, float] = {}
    history: list[tuple[float, float, int]] = []

    def score_of(v: float, rnd: int) -> float:
        if v not in seen:
            s = _args.number(evaluate(v), "evaluate(value)")
            seen[v] = s
            history.append((v, s, rnd))
        return seen[v]

    def scan(points: Iterable[float], rnd: int) -> tuple[float, float]:
        best_v, best_s, misses = None, None, 0
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


def _warn_uncovered(pairs, q, p: float) -> None:
    # No silent fallback: a mapping of q (e.g. analytic) that misses a pruned tensor.
    if not isinstance(q, Mapping):
        return
    missing = [name for name, _, _ in pairs if name not in q]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        warnings.warn(f"{len(missing)} pruned tensors have no q in the mapping and are rescaled by "
                      f"1/(1-p) = {1 / (1 - p):.4g} (plain DARE): {shown}", QFallbackWarning, stacklevel=3)


def _write_dare(target: nn.Module, pairs, p: float, q, seed: int, mask: str = "skip") -> nn.Module:
    params = dict(target.named_parameters())
    with torch.no_grad():
        for name, ft, b in pairs:
            out = params[name]
            dare(ft.detach(), b.detach().to(ft.device, ft.dtype), p, _q_for(q, name),
                 seed=tensor_seed(seed, name), out=out.data, mask=mask)
    return target


def dare_model(finetuned: nn.Module, base: nn.Module, p: float, q=None, *, seed: int = 0,
               include: Callable[[str], bool] | None = None, out: nn.Module | None = None,
               mask: str = "skip") -> nn.Module:
    """A copy of `finetuned` whose parameters are base + prune(finetuned - base, p, q).

    Every floating parameter present in both models with the same name and shape is pruned
    (``include(name)`` narrows that), with the mask seed ``tensor_seed(seed, name)``; other
    parameters and buffers stay as in `finetuned`.

    Args:
        q: None (1 - p, DARE), a float (global DAREx-q), or a mapping parameter name -> float or
            per-row tensor (e.g. :func:`analytic_q_for_model`); names missing from a mapping
            get 1 - p and a :class:`QFallbackWarning` lists them.
        out: a model of the same architecture to overwrite instead of a fresh deep copy.
        mask: the mask spec, "skip" (version 2, default) or "philox" (version 1); docs/mask_spec.md.
    """
    pairs = _delta_pairs(finetuned, base, include)
    _warn_uncovered(pairs, q, p)
    target = copy.deepcopy(finetuned) if out is None else out
    return _write_dare(target, pairs, p, q, seed, mask)


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


def _without_outlier(values: list[float]) -> list[float]:
    # The published remove_one_outlier: with 3 or more values, drop the one farthest from the
    # mean (the first of equals), as the encoder search does over its 4 mask seeds.
    if len(values) < 3:
        return values
    mean = sum(values) / len(values)
    far = max(range(len(values)), key=lambda i: abs(values[i] - mean))
    return values[:far] + values[far + 1:]


def output_change(finetuned: nn.Module, pruned: nn.Module | Callable[[int], nn.Module], batches: Iterable, *,
                  seeds: Sequence[int] = (0, 1, 2), top_k: int | None = 10, drop_outlier: bool = False) -> float:
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
        drop_outlier: average the per-seed changes after dropping the one farthest from their
            mean (with 3 or more seeds), as the published encoder search does.
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
    per_model: list[float] = []
    try:
        with torch.no_grad():
            reference = [call_model(finetuned, b) for b in batches]
            for item in (models if models is not None else seeds):
                model = item if models is not None else pruned(int(item))
                model_was = model.training
                model.eval()
                total = 0.0
                for b, ref_out in zip(batches, reference):
                    total += float(_compare(ref_out, call_model(model, b), top_k))
                per_model.append(total / len(batches))
                model.train(model_was)
    finally:
        finetuned.train(was)
    kept = _without_outlier(per_model) if drop_outlier else per_model
    return sum(kept) / len(kept)


# The published unlabeled objectives (vengdeng/DAREx utils/outputchange.py): encoders, the mean
# |change| of the last hidden state over mask seeds 0-3 with the outlier dropped; decoders, the
# MSE of the logits at the fine-tuned model's top 5 tokens, one mask (seed 0).
REFERENCE_OBJECTIVES = {
    "encoder": {"seeds": (0, 1, 2, 3), "top_k": None, "drop_outlier": True},
    "decoder": {"seeds": (0,), "top_k": 5, "drop_outlier": False},
}


def output_change_objective(finetuned: nn.Module, base: nn.Module, batches: Iterable, p: float, *,
                            seeds: Sequence[int] = (0, 1, 2), top_k: int | None = 10,
                            include: Callable[[str], bool] | None = None, drop_outlier: bool = False,
                            preset: str | None = None, mask: str = "skip") -> Callable[[float], float]:
    """q -> :func:`output_change` of the DARE-pruned model at rescale q, for ``find_q(...,
    maximize=False)``. One working copy of the model is made up front and overwritten for every
    (q, seed) with the fused ``dare`` kernel, so a search costs no further copies.

    preset: "encoder" or "decoder" sets seeds, top_k and drop_outlier to the published
    objective (:data:`REFERENCE_OBJECTIVES`); None (default) keeps the arguments as given.
    mask: the mask spec of the pruned copies (as :func:`dare_model`)."""
    if preset is not None:
        if preset not in REFERENCE_OBJECTIVES:
            raise ValueError(f"preset must be one of {tuple(REFERENCE_OBJECTIVES)} or None, got {preset!r}")
        seeds, top_k, drop_outlier = (REFERENCE_OBJECTIVES[preset][k] for k in ("seeds", "top_k", "drop_outlier"))
    batches = list(batches)
    pairs = _delta_pairs(finetuned, base, include)
    work = copy.deepcopy(finetuned)

    def objective(q: float) -> float:
        return output_change(finetuned, lambda s: _write_dare(work, pairs, p, q, s, mask), batches,
                             seeds=seeds, top_k=top_k, drop_outlier=drop_outlier)

    return objective
