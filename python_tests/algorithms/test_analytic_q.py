"""analytic_q (DAREx Algorithm 3) against a direct, loop-by-loop implementation of the formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import darex_ext
from darex_ext import reference as ref
from darex_ext.algorithms import analytic_layer_q, analytic_q, analytic_q_for_model, phi, q_from_moments
from darex_ext.algorithms import collect_input_stats

from conftest import randn


def slow_grid(S, Q, p, eta=0.45, prob=0.95, stop_iter=0.8):
    """The authors' scan written out: one q at a time, one row at a time, Python floats."""
    ph = 0.5 if p == 0.5 else (1 - 2 * p) / math.log((1 - p) / p)
    L = math.log(2 / (1 - prob))
    rows = len(S)
    q_best = [1 - p] * rows
    best = [math.inf] * rows
    stopped = [False] * rows
    for k in range(max(1, int((1 - p) * 1000)), 999):
        q = k / 1000
        for i in range(rows):
            F = abs(((eta * (1 - (1 - p) / q)) * S[i] + ((eta * eta) * ph) * Q[i] / (4 * q * q)) + L)
            if F >= best[i]:
                stopped[i] = True
            if F <= best[i]:
                best[i] = F
                q_best[i] = q
        if sum(stopped) / rows >= stop_iter:
            break
    return q_best


@pytest.mark.parametrize("p", [0.99, 0.9, 0.7, 0.5])
@pytest.mark.parametrize("stop_iter", [0.8, 0.3, 1.0])
@pytest.mark.parametrize("eta", [0.45, 2.0])
def test_grid_equals_direct_implementation(p, stop_iter, eta):
    # Rows whose minimum (vertex) lies all over the grid, some beyond it, some with S < 0
    # (never flag) and some whose |.| has zeros (the minimum is not the vertex).
    g = torch.Generator().manual_seed(int(p * 100) + int(stop_iter * 10))
    S = torch.randn(60, generator=g, dtype=torch.float64) * torch.rand(60, generator=g, dtype=torch.float64) * 40
    target = torch.rand(60, generator=g, dtype=torch.float64) * 1.2
    Q = target * 2 * (1 - p) * S.abs() / (eta * phi(p))
    got = q_from_moments(S, Q, p, eta=eta, stop_iter=stop_iter)
    want = torch.tensor(slow_grid(S.tolist(), Q.tolist(), p, eta=eta, stop_iter=stop_iter), dtype=torch.float64)
    assert torch.equal(got, want)
    assert len(set(got.tolist())) > 3, "test data must give rows different q"


def test_grid_stop_rule_and_ties():
    # Row 0: minimum near q = 0.05 (flags early); row 1: S < 0, F falls all along (never flags);
    # row 2: Q = S = 0, F constant: every point after the first ties, so it moves q and
    # flags the row.
    p = 0.99
    S = torch.tensor([3.0, -2.0, 0.0], dtype=torch.float64)
    Q = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    Q[0] = 2 * (1 - p) * S[0] * 0.05 / (0.45 * phi(p))  # closed-form vertex at 0.05
    for stop_iter in (0.3, 0.5, 2 / 3, 1.0):
        got = q_from_moments(S, Q, p, stop_iter=stop_iter).tolist()
        assert got == slow_grid(S.tolist(), Q.tolist(), p, stop_iter=stop_iter)
    # Row 2 flags at q = 0.011 (its first tie): 1/3 of the rows, enough for stop_iter 0.3.
    assert q_from_moments(S, Q, p, stop_iter=0.3).tolist() == [0.011, 0.011, 0.011]
    # Row 0 flags at 0.051, just past its minimum 0.05: 2/3 of the rows. The tying and the
    # falling row followed the scan up to that point.
    assert q_from_moments(S, Q, p, stop_iter=0.5).tolist() == [0.05, 0.051, 0.051]
    # Row 1 never flags, so stop_iter 1 scans the whole grid.
    assert q_from_moments(S, Q, p, stop_iter=1.0).tolist() == [0.05, 0.998, 0.998]


def test_closed_form_matches_grid_where_s_positive():
    torch.manual_seed(0)
    p, eta = 0.99, 0.45
    S = torch.rand(500, dtype=torch.float64) * 5 + 0.05
    target = torch.rand(500, dtype=torch.float64) * 0.9 + 0.03  # vertices inside the grid
    Q = target * 2 * (1 - p) * S / (eta * phi(p))
    # Keep rows whose quadratic stays positive (then |.| does not change the minimizer).
    vertex_value = eta * S + math.log(2 / 0.05) - (1 - p) ** 2 * S ** 2 / (phi(p) * Q)
    keep = vertex_value > 0
    assert keep.sum() > 400
    S, Q = S[keep], Q[keep]
    grid = q_from_moments(S, Q, p, eta=eta, stop_iter=1.0)
    closed = q_from_moments(S, Q, p, eta=eta, method="closed_form")
    assert torch.allclose(closed, target[keep], rtol=1e-12)
    assert (grid - closed).abs().max() <= 0.001 + 1e-12  # the grid's argmin neighbours the vertex


def test_closed_form_edge_rows():
    p = 0.9
    S = torch.tensor([-1.0, 0.0, 0.0, 1e-9, 100.0], dtype=torch.float64)
    Q = torch.tensor([1.0, 1.0, 0.0, 1.0, 1e-9], dtype=torch.float64)
    q = q_from_moments(S, Q, p, method="closed_form").tolist()
    assert q[0] == q[1] == 0.998          # S <= 0, Q > 0: upper end
    assert q[2] == pytest.approx(0.1)     # Q = 0: plain DARE
    assert q[3] == 0.998                  # vertex far above: clipped
    assert q[4] == pytest.approx(0.1)     # vertex far below: clipped to 1 - p


@pytest.mark.parametrize("method", ["grid", "closed_form"])
def test_analytic_q_end_to_end(method, dtype, device):
    delta = randn(33, 57, dtype=dtype, device=device) * 0.05
    x = randn(57, device=device) + 0.5
    b = randn(33, device=device) * 0.05
    # The float64 scan (the reference precision has its own file, test_analytic_q_reference.py).
    q = analytic_q(delta, x, 0.95, bias_delta=b, method=method, precision="float64")
    assert q.dtype == torch.float32 and q.shape == (33,) and q.device == delta.device
    S, Q = ref.row_moments(delta.cpu(), x.cpu(), b.cpu())
    want = q_from_moments(S, Q, 0.95, method=method).to(torch.float32)
    assert torch.allclose(q.cpu(), want, atol=1e-3 + 1e-6)  # S, Q agree to float64 rounding
    assert torch.all((q >= 0.049) & (q <= 0.998))
    # Feeds prune_ directly, and the layer q is the mean over rows.
    pruned = darex_ext.prune_(delta.clone(), 0.95, q=q, seed=3)
    assert torch.equal(pruned, ref.prune(delta, 0.95, q, seed=3))
    assert analytic_layer_q(delta, x, 0.95, bias_delta=b, method=method,
                            precision="float64") == pytest.approx(float(q.mean()))


@pytest.mark.parametrize("method", ["grid", "closed_form"])
def test_two_sided_uses_abs_s(method):
    g = torch.Generator().manual_seed(5)
    # |S| <= 6 keeps eta * p * |S| < ln(2 / gamma): for S < 0 the signed F then never reaches 0.
    S = (torch.randn(50, generator=g, dtype=torch.float64) * 2).clamp(-6, 6)
    Q = torch.rand(50, generator=g, dtype=torch.float64) * S.abs() * 0.2
    two = q_from_moments(S, Q, 0.99, method=method, two_sided=True)
    assert torch.equal(two, q_from_moments(S.abs(), Q, 0.99, method=method))
    signed = q_from_moments(S, Q, 0.99, method=method, stop_iter=1.0)
    assert torch.all(signed[S < 0] == 0.998) and not torch.all(two[S < 0] == 0.998)
    with pytest.raises(TypeError, match="two_sided"):
        q_from_moments(S, Q, 0.99, two_sided=1)


def test_phi():
    assert phi(0.5) == 0.5
    assert phi(0.5 + 1e-9) == pytest.approx(0.5, abs=1e-6)
    assert phi(0.99) == pytest.approx(0.98 / math.log(99))
    assert phi(0.01) == pytest.approx(phi(0.99))  # symmetric in p <-> 1-p


def test_extreme_p_starts_at_first_positive_q():
    S, Q = torch.tensor([1.0], dtype=torch.float64), torch.tensor([1e-6], dtype=torch.float64)
    assert q_from_moments(S, Q, 0.9999).item() >= 0.001


def test_analytic_q_for_model():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    ft = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    stats = collect_input_stats(ft, [torch.randn(10, 6) for _ in range(3)])
    qs = analytic_q_for_model(ft, base, stats, 0.9, per_row=True)
    assert set(qs) == {"0.weight", "0.bias", "2.weight"}
    assert qs["0.weight"] is qs["0.bias"] and qs["0.weight"].shape == (8,)
    expected = analytic_q(ft[2].weight.detach() - base[2].weight.detach(), stats["2"].mean, 0.9)
    assert torch.equal(qs["2.weight"], expected)
    layer = analytic_q_for_model(ft, base, stats, 0.9)  # the published default: the layer mean
    assert layer["2.weight"] == float(expected.mean())


@pytest.mark.parametrize("kwargs,match", [
    (dict(p=0.0), "p must be in"), (dict(p=1.0), "p must be in"), (dict(p=float("nan")), "p must be"),
    (dict(eta=0.0), "eta"), (dict(eta=-1.0), "eta"), (dict(prob=1.0), "prob"), (dict(prob=0.0), "prob"),
    (dict(stop_iter=0.0), "stop_iter"), (dict(stop_iter=1.5), "stop_iter"), (dict(method="newton"), "method"),
])
def test_bad_arguments(kwargs, match):
    args = dict(p=0.9)
    args.update(kwargs)
    p = args.pop("p")
    with pytest.raises(ValueError, match=match):
        analytic_q(randn(3, 4), randn(4), p, **args)


def test_bad_shapes_and_types():
    with pytest.raises(ValueError, match="x must be 1-D of length 4"):
        analytic_q(randn(3, 4), randn(5), 0.9)
    with pytest.raises(ValueError, match="bias must be 1-D of length 3"):
        analytic_q(randn(3, 4), randn(4), 0.9, bias_delta=randn(4))
    with pytest.raises(ValueError, match="2-D"):
        analytic_q(randn(12), randn(4), 0.9)
    with pytest.raises(TypeError, match="delta"):
        analytic_q([[1.0]], randn(1), 0.9)
    with pytest.raises(TypeError, match="p must be a real number"):
        analytic_q(randn(3, 4), randn(4), "0.9")
    with pytest.raises(ValueError, match="finite"):
        analytic_q(torch.full((2, 2), float("nan")), randn(2), 0.9)
