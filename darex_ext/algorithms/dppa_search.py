"""The search for DPPA's amplification factors (alpha_hi, alpha_lo) against a user metric.

search="reference" is the authors' search, ``scrips/python_contral.py`` in
github.com/northsky0307/DPPA-Pruning-Method-for-Large-Language-Model-to-Model-Merging (started by
``run.sh`` with ``--nine_ratio 1.8 --eight_ratio 0.0``; alpha_hi is their ``nine_ratio``, the factor
of the model pruned at p, alpha_lo their ``eight_ratio``, at p - width). One upward pass per
coordinate, alpha_hi first, from a best score of 0:

- evaluate the current point; if its score beats the best, it becomes the best and the current
  coordinate moves up one step;
- otherwise the coordinate steps back one step only if it is above 1, and the search moves to
  alpha_lo: below 0.1 it jumps to 1.0, else it moves up one step. After alpha_lo the search ends;
  the result is the current point (not necessarily the best scored one: a first alpha_lo of 1.0
  that does not improve stays 1.0, as in the authors' loop).

The score is a number, or with `dense` the geometric mean of the tasks' scores divided by the
dense fine-tune's scores (the authors': sqrt(task1 / task1_dense * task2 / task2_dense)).

search="coordinate" is darex's own search, kept as an option: greedy coordinate ascent on the
`step` grid in both directions, alternating coordinates until neither improves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..ops import _checks

__all__ = ["SEARCHES", "AmplificationSearch", "search_amplification", "geometric_mean_ratio"]

SEARCHES = ("reference", "coordinate")

# The authors' constants in python_contral.py: alpha_lo below 0.1 jumps to 1, and a coordinate
# steps back after a failed step only when it is above 1.
_JUMP_BELOW, _JUMP_TO, _STEP_BACK_ABOVE = 0.1, 1.0, 1.0


@dataclass
class AmplificationSearch:
    """Result of :func:`search_amplification`: the chosen alphas, their score (NaN when the
    reference search ends on a point it never evaluated), and every evaluation in order as
    (alpha_hi, alpha_lo, score)."""

    alpha_hi: float
    alpha_lo: float
    score: float
    history: list[tuple[float, float, float]]
    search: str = "reference"


def geometric_mean_ratio(scores: Sequence[float], dense: Sequence[float]) -> float:
    """The authors' objective: the geometric mean of score_i / dense_i. For two tasks it is
    computed as ``sqrt(s1 / d1 * s2 / d2)``, their exact expression."""
    if len(scores) != len(dense):
        raise ValueError(f"evaluate returned {len(scores)} task scores for {len(dense)} dense scores")
    ratios = [_checks.real(s, "evaluate's task score") / d for s, d in zip(scores, dense)]
    product = ratios[0] * ratios[1] if len(ratios) == 2 else math.prod(ratios)
    if not product >= 0:  # a negative (or NaN) product has no real geometric mean: never improves
        return math.nan
    return math.sqrt(product) if len(ratios) == 2 else product ** (1.0 / len(ratios))


def _positive(x, name: str) -> float:
    x = _checks.real(x, name)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return x


def _bounds(b, name: str) -> tuple[float, float]:
    if not isinstance(b, Sequence) or len(b) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {b!r}")
    lo, hi = _checks.real(b[0], name), _checks.real(b[1], name)
    if not lo <= hi:
        raise ValueError(f"{name} must have low <= high, got {b!r}")
    return lo, hi


def _dense(dense) -> list[float] | None:
    if dense is None:
        return None
    if isinstance(dense, (str, bytes)) or not isinstance(dense, Sequence) or len(dense) == 0:
        raise TypeError(f"dense must be a non-empty sequence of the dense model's task scores, got {dense!r}")
    return [_positive(d, f"dense[{i}]") for i, d in enumerate(dense)]


def search_amplification(evaluate: Callable[[float, float], float], *, search: str = "reference",
                         alpha_hi: float = 1.8, alpha_lo: float = 0.0, step: float = 0.1, dense=None,
                         bounds_hi=(0.0, 10.0), bounds_lo=(0.0, 10.0), max_evals: int = 200) -> AmplificationSearch:
    """Search (alpha_hi, alpha_lo) maximizing `evaluate` (see the module docstring).

    Args:
        evaluate: (alpha_hi, alpha_lo) -> score, higher is better (e.g. accuracy of
            base + amplify(...)); with `dense`, a sequence of per-task scores instead. NaN never
            improves.
        search: "reference" (the authors' one upward pass) or "coordinate" (darex's ascent).
        alpha_hi, alpha_lo: start point (1.8 and 0.0, run.sh's).
        step: grid step (0.1). Points are rounded to 12 decimals, so 1.8 + 0.1 is 1.9.
        dense: the dense fine-tune's per-task scores; the score is then
            :func:`geometric_mean_ratio` of evaluate's task scores.
        bounds_hi, bounds_lo: inclusive (low, high) range of each alpha; a step outside counts
            as not improving and is not evaluated (the authors' loop has no bounds).
        max_evals: evaluation budget (the authors' loop has none). When it runs out the
            reference search returns its best scored point.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    start = (_checks.real(alpha_hi, "alpha_hi"), _checks.real(alpha_lo, "alpha_lo"))
    step = _positive(step, "step")
    bounds = (_bounds(bounds_hi, "bounds_hi"), _bounds(bounds_lo, "bounds_lo"))
    for s, (lo, hi), name in zip(start, bounds, ("alpha_hi", "alpha_lo")):
        if not lo <= s <= hi:
            raise ValueError(f"{name} start {s} is outside its bounds [{lo}, {hi}]")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be an int >= 1, got {max_evals!r}")
    dense_scores = _dense(dense)

    history: list[tuple[float, float, float]] = []

    def score(a: float, b: float) -> float:
        raw = evaluate(a, b)
        if dense_scores is not None:
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                raise TypeError(f"evaluate must return a sequence of task scores when dense is given, got {raw!r}")
            value = geometric_mean_ratio(raw, dense_scores)
        else:
            value = _checks.real(raw, "evaluate's result")
        value = -math.inf if math.isnan(value) else value
        history.append((a, b, value))
        return value

    def inside(point: tuple[float, float]) -> bool:
        return all(lo <= v <= hi for v, (lo, hi) in zip(point, bounds))

    run = _reference if search == "reference" else _coordinate
    a, b, best = run(score, inside, start, step, max_evals, history)
    return AmplificationSearch(alpha_hi=a, alpha_lo=b, score=best, history=history, search=search)


def _on_grid(x: float) -> float:
    return round(x, 12)


def _reference(score, inside, start, step, max_evals, history):
    point = list(start)
    best = 0.0  # python_contral.py's `perfermence = 0`: a first score <= 0 never improves
    best_point: tuple[float, float] | None = None
    axis = 0
    while axis < 2:
        if len(history) >= max_evals:
            if best_point is None:  # nothing improved within the budget: the first point
                best_point = (history[0][0], history[0][1])
            return best_point[0], best_point[1], _score_at(history, best_point)
        here = (point[0], point[1])
        value = score(*here) if inside(here) else -math.inf
        if value > best:
            best, best_point = value, here
            point[axis] = _on_grid(point[axis] + step)
            continue
        if point[axis] > _STEP_BACK_ABOVE:
            point[axis] = _on_grid(point[axis] - step)
        axis += 1
        if axis == 1:
            point[1] = _JUMP_TO if point[1] < _JUMP_BELOW else _on_grid(point[1] + step)
    return point[0], point[1], _score_at(history, (point[0], point[1]))


def _score_at(history, point) -> float:
    for a, b, value in history:
        if (a, b) == point:
            return value
    return math.nan


def _coordinate(score, inside, start, step, max_evals, history):
    cache: dict[tuple[int, int], float] = {}

    def point(idx: tuple[int, int]) -> tuple[float, float]:
        return tuple(_on_grid(s + k * step) for s, k in zip(start, idx))  # type: ignore[return-value]

    def value_at(idx: tuple[int, int]) -> float:
        if idx not in cache:
            cache[idx] = score(*point(idx))
        return cache[idx]

    best = (0, 0)
    best_score = value_at(best)
    improved = True
    while improved and len(history) < max_evals:
        improved = False
        for axis in (0, 1):
            for direction in (1, -1):
                moved = False
                while len(history) < max_evals:
                    nxt = tuple(k + (direction if i == axis else 0) for i, k in enumerate(best))
                    if not inside(point(nxt)) or nxt in cache:  # cached points never beat the best
                        break
                    value = value_at(nxt)
                    if value <= best_score:
                        break
                    best, best_score, moved, improved = nxt, value, True, True
                if moved:
                    break  # this axis found its direction; the other direction would go back
    a, b = point(best)
    return a, b, best_score
