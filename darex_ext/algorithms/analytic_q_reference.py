"""The authors' analytic-q scan at the authors' precision: float16, replayed operation by operation.

vengdeng/DAREx (``utils/analyticalq.py``, ``analytical_resolve_new``; statistics from
``utils/getwx.py``) forms c = delta * x_mean in float32, rounds it to **float16**, appends the
bias delta as one more float16 column, and then does every step of the scan in float16 on the
GPU: the row sums S and Q (of float16 squares), each term of the objective, its absolute value
and the comparisons against a running best that starts at float16 10000. The objective sits near
ln 40 = 3.69, where float16 steps are about 0.002, so consecutive grid points often tie; a tie
both moves a row's q (``F <= best``) and flags the row as stopped (``F >= best``), and the scan
ends once ``stop_iter`` of the rows are flagged. That float16 behaviour decides where the scan
stops, so a float64 replay (``analytic_q(..., precision="float64")``) gives different q.

What is replayed, per grid point k = int((1-p) 1000) .. 998 with q = k * 0.001 (Python float):

    a  = 1 - (1-p)/q                      Python float64
    t1 = h(f(a) * S)                      h: round to float16, f: to float32 (the device's
    m  = h(f(eta^2 phi(p)) * Q)              opmath: a Python scalar becomes float32, the
    t2 = h(m * (1 / f(4 q^2)))               product is float32, the result float16)
    t2 = h(t2 + f(L))                     L = ln(2 / (1 - prob))
    r  = |h(h(f(eta) * t1) + t2)|
    move where r <= best (best = r, q_row = f(q)); flag where r >= best; stop when the float32
    mean of the flags >= f(stop_iter).

The division by 4q^2 is a multiplication by its float32 reciprocal: that is what torch's CUDA
kernel does for a tensor divided by a Python scalar, and the authors ran the scan on a GPU.
S and Q: exact sums of the float16 terms rounded once to float16 (the device accumulates in
float32; the two agree whenever the exact sum is a float32, which is the rule for float16 terms
of one row). Deliberate differences: the grid starts at k = 1 when int((1-p) 1000) = 0 (p >
0.999), where the published code divides by zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["reference_c", "reference_grid_q", "reference_phi", "reference_layer_mean", "reference_mean_of_layers"]

_GRID_END = 999  # exclusive: the last grid point is k = 998, q = 0.998
_BEST_START = 10000.0


def reference_phi(p: float) -> float:
    """phi(p) = (1 - 2p) / ln((1 - p) / p) as the published code computes it (numpy float64):
    NaN at p = 0.5, where the scan then never moves a row (every q stays 1 - p)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(1 - 2 * p) / np.log((1 - p) / p))


def reference_c(delta: torch.Tensor, x_mean: torch.Tensor, bias_delta: torch.Tensor | None = None) -> torch.Tensor:
    """c = float16(float32(delta) * float32(x_mean)), with the bias delta (float16) as one more
    column: the matrix the published scan works on, [rows, cols (+1)], on the CPU."""
    c = (delta.detach().to("cpu", torch.float32) * x_mean.detach().to("cpu", torch.float32)[None, :]).to(torch.float16)
    if bias_delta is not None:
        c = torch.cat([c, bias_delta.detach().to("cpu", torch.float16).reshape(-1, 1)], dim=1)
    return c


def _half(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16)


def _f32(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32)
    return torch.tensor(x, dtype=torch.float32)


def _row_sum(terms: torch.Tensor) -> torch.Tensor:
    # Exact sum (float64 holds any sum of a row of float16 terms exactly enough), then float32,
    # then one rounding to float16 (torch's float64 -> float16 conversion goes through float32
    # anyway; spelled out so the order is not left to a library).
    return _half(terms.to(torch.float64).sum(dim=1).to(torch.float32))


def reference_grid_q(c: torch.Tensor, p: float, *, eta: float = 0.45, prob: float = 0.95,
                     stop_iter: float = 0.8) -> torch.Tensor:
    """Per-row q of the published float16 scan over the float16 matrix `c` [rows, cols].

    Returns float32 [rows] (the published ``q_o``), every row's last grid point where its
    objective reached or tied its running minimum; 1 - p where it never did."""
    if c.dtype != torch.float16 or c.dim() != 2:
        raise ValueError(f"c must be a 2-D float16 tensor, got {c.dtype} of shape {tuple(c.shape)}")
    c = c.to("cpu")
    rows = c.shape[0]
    q_rows = torch.full((rows,), 1.0, dtype=torch.float32) * _f32(1.0 - p)  # ones * (1 - p)
    if rows == 0:
        return q_rows
    S = _row_sum(c)
    Q = _row_sum(_half(c.to(torch.float32) * c.to(torch.float32)))  # c**2 stored in float16
    ph = reference_phi(p)
    L = math.log(2 / (1 - prob))
    scale = _f32(eta ** 2 * ph)
    eta32, L32, stop32 = _f32(eta), _f32(L), _f32(stop_iter)
    S32, Q32 = S.to(torch.float32), Q.to(torch.float32)
    m = _half(scale * Q32)  # the same at every grid point: (eta^2 phi) * Q
    best = torch.full((rows,), _BEST_START, dtype=torch.float16)
    flagged = torch.zeros(rows, dtype=torch.bool)
    for k in range(max(1, int((1 - p) * 1000)), _GRID_END):
        q = k * 0.001
        t1 = _half(_f32(1 - (1 - p) / q) * S32)
        inv = torch.tensor(1.0, dtype=torch.float32) / _f32(4 * q * q)
        t2 = _half(_half(m.to(torch.float32) * inv).to(torch.float32) + L32)
        r = _half(_half(eta32 * t1.to(torch.float32)).to(torch.float32) + t2.to(torch.float32)).abs()
        better = r <= best
        worse = r >= best
        best = torch.where(better, r, best)
        q_rows = torch.where(better, _f32(q), q_rows)
        flagged |= worse
        if bool(flagged.to(torch.float32).mean() >= stop32):
            break
    return q_rows


def reference_layer_mean(q_rows: torch.Tensor) -> float:
    """The layer's q as published: the float32 mean over rows (per-row values are discarded)."""
    return float(q_rows.to(torch.float32).mean()) if q_rows.numel() else math.nan


def reference_mean_of_layers(layer_qs) -> float:
    """The q of every tensor without its own (embeddings, LayerNorms, biases of other modules):
    the mean of the layer q's (``rescale_q``'s rule), exactly rounded to float32. The published
    numpy mean of float32 values sums in list order, so it can differ in the last bit with the
    order of the layers; the exact mean gives the Python API and the CLI (which reads
    checkpoints in file order) the same q."""
    values = [float(np.float32(v)) for v in layer_qs]
    if not values:
        raise ValueError("no layer q to take the mean of")
    return float(np.float32(math.fsum(values) / len(values)))
