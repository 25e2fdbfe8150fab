"""find_q(mode="reference"): the published two-round search (vengdeng/DAREx find_q_encoder.py /
find_q_decoder.py, find_optimal_param), against a twin written from its description with numpy."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import torch

from darex_ext.algorithms import find_q
from darex_ext.algorithms.q_search import _arange, _without_outlier, output_change


def twin(f, lo, hi, step, decay=0.1, variant="encoder"):
    """The published search: a dict of scores in insertion order, >= counts as progress, stop
    after 4 misses; round 2 around the first best; the first best of all wins."""
    scores = {}
    order = []

    def scan(points):
        best, miss = -np.inf, 0
        for x in points:
            s = f(float(x))
            if float(x) not in scores:
                order.append(float(x))
            scores[float(x)] = s
            if s >= best:
                best, miss = s, 0
            else:
                miss += 1
            if miss > 3:
                break

    scan(np.arange(lo, hi + step, step))
    center = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[0][0]
    floor = lo + step * decay if variant == "encoder" else 0.0
    scan(np.arange(max(floor, center - step * (1 - decay)), center + step, step * decay))
    best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[0][0]
    return best, order


@pytest.mark.parametrize("lo,hi,step", [(0.1, 0.3, 0.05), (0.01, 0.1, 0.05), (0.3, 0.7, 0.1), (0.0, 1.0, 0.1),
                                        (0.1, 1.0, 0.3), (0.005, 0.02, 0.001), (1.0, 1.0, 0.5)])
def test_arange_equals_numpy(lo, hi, step):
    for stop in (hi + step, hi, hi - step / 3):
        assert list(_arange(lo, stop, step)) == [float(v) for v in np.arange(lo, stop, step)]


def scripted(kind):
    if kind == "peak_inside":
        return lambda v: -abs(v - 0.17)
    if kind == "peak_past_hi":  # round 1 runs past hi (arange overshoot), round 2 beyond it
        return lambda v: -abs(v - 0.34)
    if kind == "plateau":  # ties: the first of the plateau wins, ties do not count as misses
        return lambda v: min(round(v, 6), 0.2)
    if kind == "steps":  # coarse steps: many exact ties in round 2
        return lambda v: float(np.floor(v * 20) / 20) * (1 if v < 0.26 else -1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["peak_inside", "peak_past_hi", "plateau", "steps"])
@pytest.mark.parametrize("variant", ["encoder", "decoder"])
@pytest.mark.parametrize("lo,hi,step", [(0.1, 0.3, 0.05), (0.01, 0.1, 0.05), (0.05, 0.3, 0.1)])
def test_reference_mode_equals_the_twin(kind, variant, lo, hi, step):
    f = scripted(kind)
    calls = []

    def evaluate(v):
        calls.append(v)
        return f(v)

    want_best, want_order = twin(f, lo, hi, step, variant=variant)
    r = find_q(evaluate, lo, hi, step, variant=variant)
    assert r.best == want_best
    assert list(dict.fromkeys(calls)) == want_order
    assert [h[0] for h in r.history] == calls


def test_peak_past_hi_is_found_beyond_hi():
    r = find_q(scripted("peak_past_hi"), 0.1, 0.3, 0.05)
    assert r.best > 0.3  # arange(0.1, 0.35, 0.05) ends at 0.3000...04, round 2 climbs past it
    assert find_q(scripted("peak_past_hi"), 0.1, 0.3, 0.05, mode="clipped").best <= 0.3


def test_minimize_negates_like_the_published_minus_output_change():
    f = scripted("peak_inside")
    assert find_q(lambda v: -f(v), 0.1, 0.3, 0.05, maximize=False).best == find_q(f, 0.1, 0.3, 0.05).best


def test_a_tiny_step_is_lazy():
    # 1e7 grid points: nothing is built up front; the first evaluation comes at once and the
    # search ends after a handful (the objective falls from the start: 4 misses).
    tracemalloc.start()
    start = time.perf_counter()
    first = []

    def evaluate(v):
        if not first:
            first.append(time.perf_counter() - start)
        return -v

    r = find_q(evaluate, 0.0, 1.0, 1e-7)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.best == 0.0 and len(r.history) <= 12
    assert first[0] < 0.5 and peak < 10 * 2**20


@pytest.mark.parametrize("lo,hi,step,match", [
    (float("nan"), 1.0, 0.1, "lo"), (0.0, float("inf"), 0.1, "hi"), (0.0, 1e300, 1e-300, "2\\^53"),
    (0.0, 1.0, float("inf"), "step"), (1.0, 0.0, 0.1, "hi must be >= lo"),
])
def test_absurd_grids_raise(lo, hi, step, match):
    with pytest.raises(ValueError, match=match):
        find_q(lambda v: 0.0, lo, hi, step)


def test_mode_and_variant_are_checked():
    with pytest.raises(ValueError, match="mode"):
        find_q(lambda v: 0.0, 0.0, 1.0, 0.1, mode="paper")
    with pytest.raises(ValueError, match="variant"):
        find_q(lambda v: 0.0, 0.0, 1.0, 0.1, variant="llm")


def test_outlier_dropped_as_published():
    assert _without_outlier([1.0, 2.0]) == [1.0, 2.0]
    assert _without_outlier([1.0, 1.1, 0.9, 5.0]) == [1.0, 1.1, 0.9]
    assert _without_outlier([0.0, 2.0, 1.0]) == [2.0, 1.0]  # tie in distance: the first goes

    class Scaled(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return x * self.k

    ft = Scaled(1.0)
    x = torch.ones(4)
    change = {0: 0.1, 1: 0.2, 2: 0.3, 3: 2.0}  # seed 3 is the outlier
    got = output_change(ft, lambda s: Scaled(1.0 + change[s]), [x], seeds=(0, 1, 2, 3), top_k=None,
                        drop_outlier=True)
    assert got == pytest.approx((0.1 + 0.2 + 0.3) / 3)
