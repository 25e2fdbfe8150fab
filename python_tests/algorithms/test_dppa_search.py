"""search_amplification(search="reference"): the authors' search (scrips/python_contral.py) on
scripted metrics: the exact sequence of evaluated points, the result, their objective."""

from __future__ import annotations

import math
import random

import pytest

from darex_ext.algorithms import geometric_mean_ratio, search_amplification

from dppa_twin import authors_score, authors_search


def _scripted(table: dict[tuple[float, float], float], default: float = 0.0):
    calls: list[tuple[float, float]] = []

    def evaluate(a: float, b: float) -> float:
        calls.append((a, b))
        return table.get((a, b), default)

    return evaluate, calls


def test_one_upward_pass_per_coordinate_then_one_step_back():
    table = {(1.8, 0.0): 1.0, (1.9, 0.0): 1.1, (2.0, 0.0): 1.2, (2.1, 0.0): 1.15,
             (2.0, 1.0): 1.3, (2.0, 1.1): 1.35, (2.0, 1.2): 1.34}
    evaluate, calls = _scripted(table)
    res = search_amplification(evaluate)
    assert calls == [(1.8, 0.0), (1.9, 0.0), (2.0, 0.0), (2.1, 0.0), (2.0, 1.0), (2.0, 1.1), (2.0, 1.2)]
    assert (res.alpha_hi, res.alpha_lo, res.score) == (2.0, 1.1, 1.35)
    assert [h[:2] for h in res.history] == calls and res.search == "reference"


def test_a_first_alpha_lo_that_does_not_improve_stays_one():
    # alpha_lo jumps from 0 to 1.0; 1.0 is not above 1, so a failed 1.0 is kept (the authors' loop
    # steps back only above 1): the result scores below the best point seen.
    table = {(1.8, 0.0): 1.0, (1.9, 0.0): 1.2, (2.0, 0.0): 1.1, (1.9, 1.0): 0.9}
    evaluate, calls = _scripted(table)
    res = search_amplification(evaluate)
    assert calls == [(1.8, 0.0), (1.9, 0.0), (2.0, 0.0), (1.9, 1.0)]
    assert (res.alpha_hi, res.alpha_lo, res.score) == (1.9, 1.0, 0.9)


def test_a_failed_start_steps_back_without_evaluating():
    # The best score starts at 0: a start scoring 0 fails, alpha_hi 1.8 > 1 steps back to 1.7,
    # which is never evaluated by itself.
    evaluate, calls = _scripted({(1.7, 1.0): 0.5, (1.7, 1.1): 0.4})
    res = search_amplification(evaluate)
    assert calls == [(1.8, 0.0), (1.7, 1.0), (1.7, 1.1)]
    assert (res.alpha_hi, res.alpha_lo, res.score) == (1.7, 1.0, 0.5)
    evaluate, calls = _scripted({})
    res = search_amplification(evaluate)
    assert calls == [(1.8, 0.0), (1.7, 1.0)]
    assert (res.alpha_hi, res.alpha_lo) == (1.7, 1.0)


def test_alpha_lo_at_or_above_a_tenth_moves_up_one_step():
    table = {(1.8, 0.5): 1.0, (1.9, 0.5): 0.9, (1.8, 0.6): 1.1, (1.8, 0.7): 1.0}
    evaluate, calls = _scripted(table)
    res = search_amplification(evaluate, alpha_lo=0.5)
    assert calls == [(1.8, 0.5), (1.9, 0.5), (1.8, 0.6), (1.8, 0.7)]
    # 0.7 failed and is not above 1: no step back.
    assert (res.alpha_hi, res.alpha_lo) == (1.8, 0.7)


def test_the_authors_objective_is_the_geometric_mean_of_ratios_to_dense():
    dense = (0.5981, 0.13)
    tasks = {(1.8, 0.0): (0.55, 0.10), (1.9, 0.0): (0.56, 0.11), (2.0, 0.0): (0.50, 0.12),
             (1.9, 1.0): (0.58, 0.115), (1.9, 1.1): (0.57, 0.10)}
    res = search_amplification(lambda a, b: tasks[(a, b)], dense=dense)
    assert [h[:2] for h in res.history] == list(tasks)
    for a, b, score in res.history:
        assert score == authors_score(tasks[(a, b)], dense)  # sqrt(t1 / d1 * t2 / d2), bit for bit
    assert (res.alpha_hi, res.alpha_lo) == (1.9, 1.0)
    assert geometric_mean_ratio([0.5, 0.2, 0.8], [1.0, 1.0, 1.0]) == pytest.approx(0.08 ** (1 / 3))
    assert geometric_mean_ratio([0.3], [0.6]) == 0.5
    assert math.isnan(geometric_mean_ratio([-0.3, 0.5], [1.0, 1.0]))


@pytest.mark.parametrize("seed", range(40))
def test_the_path_equals_the_authors_loop_on_random_metrics(seed):
    # Random unimodal-ish metrics with plateaus and NaN holes; both walks see the same scores.
    rng = random.Random(seed)
    peak_hi, peak_lo = rng.choice([1.5, 1.9, 2.3, 2.8]), rng.choice([0.0, 0.9, 1.2, 1.6])
    holes = {(round(rng.uniform(1.7, 2.6), 1), round(rng.uniform(0.9, 1.5), 1)) for _ in range(2)}

    def metric(a: float, b: float) -> float:
        if (a, b) in holes:
            return math.nan
        return round(3.0 - abs(a - peak_hi) - 0.7 * abs(b - peak_lo), 1 if seed % 2 else 6)

    points, final = authors_search(metric)
    res = search_amplification(metric)
    assert [(f"{a:.1f}", f"{b:.1f}") for a, b, _ in res.history] == points
    assert [f"{res.alpha_hi:.1f}", f"{res.alpha_lo:.1f}"] == final
    assert all(a == round(a, 1) and b == round(b, 1) for a, b, _ in res.history)  # the grid


def test_budget_and_bounds():
    grow = lambda a, b: a + b  # noqa: E731  (always improves)
    res = search_amplification(grow, max_evals=5)
    assert [h[:2] for h in res.history] == [(1.8, 0.0), (1.9, 0.0), (2.0, 0.0), (2.1, 0.0), (2.2, 0.0)]
    assert (res.alpha_hi, res.alpha_lo) == (2.2, 0.0)  # the best point when the budget ran out
    res = search_amplification(grow, bounds_hi=(0.0, 2.0), bounds_lo=(0.0, 1.2))
    # 2.1 is outside: not evaluated, counts as a failure (step back to 2.0); then 1.0 .. 1.2, and
    # 1.3 is outside (step back to 1.2).
    assert [h[:2] for h in res.history] == [(1.8, 0.0), (1.9, 0.0), (2.0, 0.0), (2.0, 1.0), (2.0, 1.1), (2.0, 1.2)]
    assert (res.alpha_hi, res.alpha_lo) == (2.0, 1.2)
    nan_after = lambda a, b: math.nan if a > 1.85 else 1.0  # noqa: E731
    res = search_amplification(nan_after)
    assert [h[:2] for h in res.history][:2] == [(1.8, 0.0), (1.9, 0.0)]
    assert res.alpha_hi == 1.8


@pytest.mark.parametrize("kwargs,exc,arg", [
    (dict(search="grid"), ValueError, "search"),
    (dict(dense=[0.5, 0.0]), ValueError, "dense"),
    (dict(dense="0.5"), TypeError, "dense"),
    (dict(dense=[0.5]), TypeError, "evaluate"),  # evaluate returns a number, not task scores
])
def test_bad_arguments(kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        search_amplification(lambda a, b: 1.0, **kwargs)


def test_task_score_count_must_match_dense():
    with pytest.raises(ValueError, match="task scores"):
        search_amplification(lambda a, b: [1.0], dense=[0.5, 0.6])
