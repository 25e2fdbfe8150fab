"""The analytic q at the authors' precision, against a twin of the published float16 scan.

The twin below is written from the description of vengdeng/DAREx ``utils/analyticalq.py``
(``analytical_resolve_new``): one row and one grid point at a time, numpy float16 / float32
scalars, each device operation a float32 operation rounded to float16. The layers are built so
that float16 ties decide where the scan stops.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from darex_ext.algorithms import analytic_q, analytic_q_for_model, dare_model
from darex_ext.algorithms.analytic_q_reference import reference_c, reference_mean_of_layers
from darex_ext.algorithms.q_search import QFallbackWarning

H, F = np.float16, np.float32


def twin_scan(c16: np.ndarray, p: float, eta: float = 0.45, prob: float = 0.95, stop_iter: float = 0.8):
    """As published: better = r <= best, worse = r >= best, both against the old best; update
    best and q where better; flag where worse (sticky); stop when mean(flags) >= stop_iter."""
    rows = c16.shape[0]
    with np.errstate(all="ignore"):
        phi = np.float64(1 - 2 * p) / np.log((1 - p) / p)
    L = math.log(2 / (1 - prob))
    S = [H(F(math.fsum(float(v) for v in c16[i]))) for i in range(rows)]
    Q = [H(F(math.fsum(float(H(F(v) * F(v))) for v in c16[i]))) for i in range(rows)]
    q_o = [F(F(1.0) * F(1 - p))] * rows
    best = [H(10000)] * rows
    stop = [False] * rows
    for k in range(max(1, int((1 - p) * 1000)), 999):
        q = k * 0.001
        for i in range(rows):
            t1 = H(F(1 - (1 - p) / q) * F(S[i]))
            m = H(F(eta ** 2 * phi) * F(Q[i]))
            t2 = H(F(m) * (F(1.0) / F(4 * q * q)))
            t2 = H(F(t2) + F(L))
            r = abs(H(F(H(F(eta) * F(t1))) + F(t2)))
            better, worse = bool(r <= best[i]), bool(r >= best[i])
            if better:
                best[i] = r
                q_o[i] = F(q)
            if worse:
                stop[i] = True
        if F(sum(stop)) / F(rows) >= F(stop_iter):
            break
    return np.array(q_o, dtype=np.float32)


def tie_layer(rows: int, cols: int, scale: float, seed: int,
              x_scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deltas of a fine-tune's size (1e-4 .. 1e-2) and mean inputs around 0.1: c sits in
    float16's subnormal and low normal range, Q often rounds to 0 and F to ln 40's float16
    neighbours, so consecutive grid points tie."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(rows, cols, generator=g) * scale
    delta[: rows // 4] += scale * 3  # rows with a clearly positive S
    delta[rows // 4: rows // 2] -= scale * 3  # and clearly negative
    x_mean = (torch.randn(cols, generator=g) + 0.5) * x_scale
    bias = torch.randn(rows, generator=g) * scale
    return delta, x_mean, bias


@pytest.mark.parametrize("scale,x_scale", [(1e-4, 0.1), (1e-3, 0.1), (1e-2, 0.1), (0.3, 0.1), (0.3, 1.0),
                                           (1.0, 1.0), (3.0, 1.0)])
@pytest.mark.parametrize("p", [0.99, 0.9, 0.7])
@pytest.mark.parametrize("stop_iter", [0.8, 0.5, 1.0])
def test_reference_scan_equals_the_twin_bit_for_bit(scale, x_scale, p, stop_iter):
    # From "every row stops at the second point" (tiny deltas) to scans that run to 0.998.
    delta, x_mean, bias = tie_layer(24, 40, scale, seed=int(scale * 1e4) + int(p * 100), x_scale=x_scale)
    got = analytic_q(delta, x_mean, p, bias_delta=bias, stop_iter=stop_iter)  # precision="reference"
    c16 = reference_c(delta, x_mean, bias).numpy()
    want = twin_scan(c16, p, stop_iter=stop_iter)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32)), (got, want)


def test_float16_ties_decide_the_stop():
    # Small deltas: F is float16(ln 40) at almost every point, so the second point ties, flags
    # every row and the scan stops there, every row at the second grid point; the float64 scan
    # of the same layer runs on and gives other q.
    delta, x_mean, bias = tie_layer(40, 64, 1e-4, seed=3)
    ref_q = analytic_q(delta, x_mean, 0.99, bias_delta=bias)
    f64_q = analytic_q(delta, x_mean, 0.99, bias_delta=bias, precision="float64")
    assert torch.all(ref_q == np.float32(0.011)), ref_q
    assert not torch.equal(ref_q, f64_q)


def test_reference_rows_with_negative_s_flag_too():
    # In float64, rows with S < 0 never flag and run to 0.998; in float16 ties flag them.
    delta, x_mean, _ = tie_layer(32, 48, 1e-3, seed=5)
    S = (delta * x_mean).sum(1)
    neg = S < 0
    assert neg.any()
    q64 = analytic_q(delta, x_mean, 0.99, precision="float64", stop_iter=1.0)
    q16 = analytic_q(delta, x_mean, 0.99, stop_iter=1.0)
    assert torch.all(q64[neg] > 0.9)
    assert torch.all(q16[neg] < 0.9)


def test_p_one_half_keeps_one_minus_p():
    # phi(0.5) is 0/0 = NaN in the published code: no row ever moves.
    delta, x_mean, _ = tie_layer(8, 16, 1e-2, seed=1)
    assert torch.all(analytic_q(delta, x_mean, 0.5) == 0.5)


def test_precision_argument_is_checked():
    delta, x_mean, _ = tie_layer(4, 8, 1e-2, seed=1)
    with pytest.raises(ValueError, match="precision"):
        analytic_q(delta, x_mean, 0.9, precision="float16")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)
        self.b = nn.Linear(6, 4, bias=False)
        self.head = nn.Linear(4, 2)


class _Stats:
    def __init__(self, mean):
        self.mean = mean


def _models():
    torch.manual_seed(0)
    base, ft = Tiny(), Tiny()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for t in ft.parameters():
            t.add_(torch.randn_like(t) * 0.05)
    stats = {"a": _Stats(torch.randn(8) * 0.3), "b": _Stats(torch.randn(6) * 0.3)}
    return ft, base, stats


def test_model_q_follows_the_published_rules():
    ft, base, stats = _models()
    qs = analytic_q_for_model(ft, base, stats, 0.9)
    for name in ("a", "b"):
        d_w = getattr(ft, name).weight - getattr(base, name).weight
        d_b = ft.a.bias - base.a.bias if name == "a" else None
        rows = analytic_q(d_w.detach(), stats[name].mean, 0.9, bias_delta=None if d_b is None else d_b.detach())
        assert qs[f"{name}.weight"] == float(rows.mean())  # the layer q: the float32 row mean
        assert qs.sources[f"{name}.weight"] == "layer"
    assert qs["a.bias"] == qs["a.weight"] and qs.sources["a.bias"] == "layer bias"
    fill = reference_mean_of_layers([qs["a.weight"], qs["b.weight"]])
    for name in ("emb.weight", "norm.weight", "norm.bias", "head.weight", "head.bias"):
        assert qs[name] == fill and qs.sources[name] == "mean of layer q's"
    assert qs.fill == fill and "mean of layer q's" in qs.summary()
    # Every pruned tensor has a q: no fallback warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", QFallbackWarning)
        dare_model(ft, base, 0.9, qs)


def test_missing_q_is_reported_not_silent():
    ft, base, stats = _models()
    qs = analytic_q_for_model(ft, base, stats, 0.9, others=None)
    assert "emb.weight" not in qs
    with pytest.warns(QFallbackWarning, match=r"1/\(1-p\).*emb\.weight"):
        dare_model(ft, base, 0.9, qs)


def test_per_row_option_and_no_stats():
    ft, base, stats = _models()
    qs = analytic_q_for_model(ft, base, stats, 0.9, per_row=True)
    assert isinstance(qs["a.weight"], torch.Tensor) and qs["a.weight"].shape == (6,)
    assert qs["a.bias"] is qs["a.weight"]
    with pytest.raises(ValueError, match="no Linear layer has input statistics"):
        analytic_q_for_model(ft, base, {}, 0.9)
    with pytest.raises(ValueError, match="others"):
        analytic_q_for_model(ft, base, stats, 0.9, others="one_minus_p")
