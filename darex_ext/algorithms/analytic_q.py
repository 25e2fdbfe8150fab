"""Analytic rescaling q per row (DAREx Algorithm 3), from the weight delta and the mean input.

For an nn.Linear with weight delta D [rows, cols] and the signed mean input per channel xbar
(over calibration tokens; not a norm), let c_ij = D_ij * xbar_j and, when the bias changed too,
one more column c_i,cols = db_i (its input is 1). With

    S_i = sum_j c_ij,   Q_i = sum_j c_ij^2,   Phi(p) = (1 - 2p) / ln((1 - p) / p),
    gamma = 1 - prob,   L = ln(2 / gamma),

the authors bound the change of row i's output under drop rate p and rescale 1/q by

    F_i(q) = | eta * (1 - (1-p)/q) * S_i + eta^2 * Phi(p) * Q_i / (4 q^2) + L |

and pick q_i minimizing it. S and Q come from one fused pass over D (darex_ext.row_moments, a
kernel that never stores c); the search over q then only touches 2 numbers per row.

Two precisions of the grid scan:

- ``precision="reference"`` (the default): the published code's float16 arithmetic, replayed
  operation by operation (:mod:`darex_ext.algorithms.analytic_q_reference`). Its float16 ties
  decide where the scan stops, and so q.
- ``precision="float64"``: the same scan in float64 from S and Q of the fused ``row_moments``
  kernel; evaluation order ``abs(((eta * (1 - (1-p)/q)) * S + ((eta*eta) * Phi) * Q / (4*q*q)) + L)``.
  Not the authors' numbers: in float64, rows with S_i < 0 never flag and run to q = 0.998.

``method="closed_form"`` and ``two_sided=True`` are further non-reference options (float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..ops import _checks, row_moments
from ..ops.row_moments import side_vector as check_side_vector
from . import _args
from .analytic_q_reference import (reference_c, reference_grid_q, reference_layer_mean,
                                   reference_mean_of_layers)

__all__ = ["analytic_q", "analytic_layer_q", "q_from_moments", "phi", "analytic_q_for_model", "analytic_q_table",
           "AnalyticQMap", "PRECISIONS"]

PRECISIONS = ("reference", "float64")

_GRID = 1000      # q runs over k / 1000, as the authors scan it
_K_LAST = 998     # the last grid point, q = 0.998
_Q_MAX = _K_LAST / _GRID
_CHUNK = 64       # grid points evaluated at once: bounds the [points, rows] scratch
_METHODS = ("grid", "closed_form")


def phi(p: float) -> float:
    """Phi(p) = (1 - 2p) / ln((1 - p) / p) for p in (0, 1); its limit 1/2 at p = 1/2."""
    p = _args.open_unit(p, "p")
    if p == 0.5:
        return 0.5
    return (1.0 - 2.0 * p) / math.log((1.0 - p) / p)


def _check_common(p, eta, prob, stop_iter, method) -> tuple[float, float, float, float, str]:
    p = _args.open_unit(p, "p")
    eta = _args.positive(eta, "eta")
    prob = _args.open_unit(prob, "prob")
    stop_iter = _args.number(stop_iter, "stop_iter")
    if not 0.0 < stop_iter <= 1.0:
        raise ValueError(f"stop_iter must be in (0, 1], got {stop_iter}")
    method = _args.choice(method, "method", _METHODS)
    return p, eta, prob, stop_iter, method


def _objective(S: torch.Tensor, Q: torch.Tensor, q: torch.Tensor, p: float, eta: float, ph: float,
               log_term: float) -> torch.Tensor:
    # q: [K, 1] grid column, S and Q: [rows]; result [K, rows]. Order as in the module doc.
    linear = (eta * (1.0 - (1.0 - p) / q)) * S
    quadratic = ((eta * eta) * ph) * Q / (4.0 * q * q)
    return (linear + quadratic + log_term).abs()


def _grid_q(S: torch.Tensor, Q: torch.Tensor, p: float, eta: float, prob: float,
            stop_iter: float) -> torch.Tensor:
    """The authors' scan, vectorized over rows and over chunks of grid points.

    Sequential semantics reproduced exactly: at grid point k, with best_i the smallest F_i seen
    before k (+inf at the start), F_i(k) <= best_i moves q_i to k (ties move it too) and
    F_i(k) >= best_i flags row i as stopped for good; after point k, the scan ends if the
    flagged fraction is >= stop_iter. Within a chunk, "best before k" is a shifted cumulative
    minimum, "flagged by k" a cumulative OR, so a chunk gives the same answers as k one by one.
    """
    rows = S.shape[0]
    q_rows = torch.full((rows,), 1.0 - p, dtype=torch.float64, device=S.device)
    if rows == 0:
        return q_rows
    # q = 0 is undefined: p > 0.999 starts at 1/1000 instead of the authors' int(...) = 0.
    k_first = max(1, int((1.0 - p) * _GRID))
    ph, log_term = phi(p), math.log(2.0 / (1.0 - prob))
    best = torch.full((rows,), math.inf, dtype=torch.float64, device=S.device)
    flagged = torch.zeros((rows,), dtype=torch.bool, device=S.device)
    for start in range(k_first, _K_LAST + 1, _CHUNK):
        ks = torch.arange(start, min(start + _CHUNK, _K_LAST + 1), dtype=torch.float64, device=S.device)
        qs = ks / _GRID
        F = _objective(S, Q, qs.unsqueeze(1), p, eta, ph, log_term)            # [K, rows]
        running = torch.minimum(torch.cummin(F, dim=0).values, best)           # best after k
        before = torch.cat([best.unsqueeze(0), running[:-1]], dim=0)          # best before k
        moves = F <= before
        now_flagged = flagged | (torch.cumsum((F >= before).to(torch.int32), dim=0) > 0)
        done = now_flagged.sum(dim=1).to(torch.float64) / rows >= stop_iter  # [K]
        hit = torch.nonzero(done)
        last = int(hit[0, 0]) if hit.numel() else F.shape[0] - 1
        # q_i = the last grid point <= last where row i moved (if any in this chunk).
        order = torch.arange(1, last + 2, dtype=torch.int64, device=S.device).unsqueeze(1)
        moved_at = (moves[: last + 1] * order).amax(dim=0)                    # 0: did not move
        q_rows = torch.where(moved_at > 0, qs[(moved_at - 1).clamp_min(0)], q_rows)
        best = running[last]
        flagged = now_flagged[last]
        if hit.numel():
            break
    return q_rows


def _closed_form_q(S: torch.Tensor, Q: torch.Tensor, p: float, eta: float) -> torch.Tensor:
    """Minimizer of the quadratic in 1/q inside F (the absolute value ignored), clipped.

    S_i > 0: q_i = eta * Phi * Q_i / (2 (1-p) S_i), clipped to [1-p, 0.998].
    S_i <= 0 and Q_i > 0: the quadratic's vertex lies at 1/q <= 0, so on the allowed range it
    increases with 1/q and its minimum is at the largest q, 0.998 (the grid scan moves such rows
    the same way: F only falls as q grows). Q_i = 0 (the row does not move the output at the mean
    input): q_i = 1 - p, plain DARE.
    When the vertex value is negative, F has two zeros and the grid lands near one of them,
    not at the vertex: compare the two methods only where the quadratic stays positive.
    """
    vertex = (eta * phi(p)) * Q / (2.0 * (1.0 - p) * S)
    q = torch.where(S > 0, vertex.clamp(1.0 - p, _Q_MAX), torch.full_like(S, _Q_MAX))
    return torch.where(Q > 0, q, torch.full_like(S, 1.0 - p))


def q_from_moments(S: torch.Tensor, Q: torch.Tensor, p: float, *, eta: float = 0.45, prob: float = 0.95,
                   stop_iter: float = 0.8, method: str = "grid", two_sided: bool = False) -> torch.Tensor:
    """Per-row q from precomputed S and Q (see :func:`row_moments`); float64 [rows].

    Use it to try several eta for one layer without another pass over the delta.
    `two_sided`: see :func:`analytic_q`.
    """
    if not isinstance(two_sided, bool):
        raise TypeError(f"two_sided must be a bool, got {type(two_sided).__name__}")
    p, eta, prob, stop_iter, method = _check_common(p, eta, prob, stop_iter, method)
    for t, name in ((S, "S"), (Q, "Q")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if S.shape != Q.shape or S.device != Q.device:
        raise ValueError(f"S and Q must have the same shape and device, got {tuple(S.shape)} on {S.device} "
                         f"and {tuple(Q.shape)} on {Q.device}")
    S, Q = S.to(torch.float64), Q.to(torch.float64)
    if two_sided:
        S = S.abs()
    if S.numel() and not bool(torch.isfinite(S).all() & torch.isfinite(Q).all()):
        raise ValueError("the delta or the mean input holds NaN or inf: S and Q must be finite")
    if method == "grid":
        return _grid_q(S, Q, p, eta, prob, stop_iter)
    return _closed_form_q(S, Q, p, eta)


def _side_argument(t, name: str, op_name: str, length: int, what: str, like: torch.Tensor) -> None:
    # row_moments' own check, run first so the error names the caller's argument.
    try:
        check_side_vector(t, op_name, length, what, like)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} (row_moments' {op_name}): {exc}") from None


def analytic_q(delta: torch.Tensor, x_mean: torch.Tensor, p: float, *, eta: float = 0.45, prob: float = 0.95,
               stop_iter: float = 0.8, bias_delta: torch.Tensor | None = None,
               method: str = "grid", two_sided: bool = False, precision: str = "reference") -> torch.Tensor:
    """DAREx-q analytic rescaling per output row of a Linear (DAREx Algorithm 3).

    Args:
        delta: weight delta [rows, cols] = [out_features, in_features], any float dtype, CPU or CUDA.
        x_mean: signed mean input per channel [cols] (``collect_input_stats(...)[name].mean``).
        p: drop rate in (0, 1), as passed to ``prune_``.
        eta: scale of the bound (the authors' default 0.45; :func:`find_q` can search it).
        prob: confidence of the bound, in (0, 1); gamma = 1 - prob.
        stop_iter: the grid scan ends once this fraction of rows passed their minimum, in (0, 1].
        bias_delta: optional bias delta [rows], one more input column fixed at 1.
        method: "grid" (the authors' scan over q = k/1000, k = int((1-p)*1000) .. 998, exactly,
            including the stop rule; see ``_grid_q``) or "closed_form" (the vertex of the
            quadratic in 1/q, clipped to [1-p, 0.998]; rows with S_i <= 0 get 0.998, rows with
            Q_i = 0 get 1-p).
        two_sided: False (default) is the authors' formula with the signed S_i. True uses |S_i|
            instead, the bound made symmetric (the shift of the pruned row's mean,
            (1 - (1-p)/q) S_i, is as harmful either way): not the authors' procedure.
        precision: for method="grid": "reference" (default) replays the published float16
            arithmetic bit for bit (see the module doc); "float64" scans in float64 (not the
            authors' numbers: in float64, rows with S_i < 0 never flag and run to q = 0.998,
            which in effect deletes their delta). "closed_form" is always float64.

    Returns:
        float32 tensor [rows] on delta's device, ready for ``darex_ext.prune_(delta, p, q=...)``.
        The layer's single q is its mean (:func:`analytic_layer_q`).
    """
    _checks.tensor(delta, "delta")
    if delta.dim() != 2:
        raise ValueError(f"delta must be 2-D [out_features, in_features], got shape {tuple(delta.shape)}")
    _check_common(p, eta, prob, stop_iter, method)
    rows, cols = delta.shape
    _side_argument(x_mean, "x_mean", "x", cols, "delta.shape[1]", delta)
    if bias_delta is not None:
        _side_argument(bias_delta, "bias_delta", "bias", rows, "delta.shape[0]", delta)
    precision = _args.choice(precision, "precision", PRECISIONS)
    if not isinstance(two_sided, bool):
        raise TypeError(f"two_sided must be a bool, got {type(two_sided).__name__}")
    if method == "grid" and precision == "reference":
        c = reference_c(delta, x_mean, bias_delta)
        if not bool(torch.isfinite(delta).all() & torch.isfinite(x_mean).all()):
            raise ValueError("the delta or the mean input holds NaN or inf: S and Q must be finite")
        if two_sided:
            c = _two_sided_reference_c(c)
        return reference_grid_q(c, p, eta=eta, prob=prob, stop_iter=stop_iter).to(delta.device)
    S, Q = row_moments(delta, x_mean, bias_delta)
    q = q_from_moments(S, Q, p, eta=eta, prob=prob, stop_iter=stop_iter, method=method, two_sided=two_sided)
    return q.to(torch.float32)


def _two_sided_reference_c(c: torch.Tensor) -> torch.Tensor:
    # |S| in float16 without changing Q: flip the sign of every row whose float16 row sum is
    # negative (Q is a sum of squares, the same for c and -c; S becomes |S| exactly).
    negative = c.to(torch.float64).sum(dim=1).to(torch.float32).to(torch.float16) < 0
    return torch.where(negative.unsqueeze(1), -c, c)


def analytic_layer_q(delta: torch.Tensor, x_mean: torch.Tensor, p: float, **kwargs) -> float:
    """The layer's q: the mean over rows of :func:`analytic_q` (same arguments)."""
    q = analytic_q(delta, x_mean, p, **kwargs)
    return float(q.mean()) if q.numel() else 1.0 - float(p)


class AnalyticQMap(dict):
    """parameter name -> q (a float, or a per-row float32 tensor), as ``dare_model`` and the CLI
    take it, with where each value came from.

    Attributes:
        sources: parameter name -> "layer" (a Linear weight's own scan), "layer bias" (a Linear
            bias: its weight's q, as published), or "mean of layer q's" (every other tensor:
            embeddings, norms, biases of other modules; the published ``rescale_q`` rule).
        layer_q: Linear module name -> its layer q (the float32 mean over rows).
        fill: the mean of the layer q's given to tensors without their own (None if unused).
    """

    def __init__(self):
        super().__init__()
        self.sources: dict[str, str] = {}
        self.layer_q: dict[str, float] = {}
        self.fill: float | None = None

    def put(self, name: str, value, source: str) -> None:
        self[name] = value
        self.sources[name] = source

    def summary(self) -> str:
        """One line: how many tensors got each kind of q."""
        counts: dict[str, int] = {}
        for src in self.sources.values():
            counts[src] = counts.get(src, 0) + 1
        parts = [f"{n} {src}" for src, n in counts.items()]
        fill = "" if self.fill is None else f"; mean of layer q's = {self.fill:.6g}"
        return ", ".join(parts) + fill


def analytic_q_table(layers, x_means: Mapping[str, torch.Tensor], others, p: float, *, eta: float = 0.45,
                     prob: float = 0.95, stop_iter: float = 0.8, method: str = "grid",
                     precision: str = "reference", per_row: bool = False,
                     two_sided: bool = False) -> AnalyticQMap:
    """The analytic q of a whole model, one rule for the Python API and the CLI.

    Args:
        layers: iterable of (module name, weight name, bias name or None, load) for every
            Linear with statistics; load() returns (weight delta, bias delta or None).
        x_means: module name -> signed mean input [in_features].
        others: names of the other tensors to prune; each gets the mean of the layer q's
            (the published rule), or nothing when `others` is empty.
        per_row: False (the published procedure) gives each Linear its layer q, the mean over
            rows; True gives the per-row tensor (the bias shares it).
        eta, prob, stop_iter, method, precision, two_sided: as :func:`analytic_q`.
    """
    out = AnalyticQMap()
    for module, weight_name, bias_name, load in layers:
        with torch.no_grad():
            d_w, d_b = load()
            q = analytic_q(d_w, x_means[module].to(d_w.device), p, eta=eta, prob=prob, stop_iter=stop_iter,
                           bias_delta=d_b, method=method, two_sided=two_sided, precision=precision)
        layer = reference_layer_mean(q) if q.numel() else 1.0 - float(p)
        out.layer_q[module] = layer
        value = q if per_row else layer
        out.put(weight_name, value, "layer")
        if bias_name is not None:
            out.put(bias_name, value, "layer bias")
    rest = [n for n in others if n not in out]
    if rest:
        if not out.layer_q:
            raise ValueError("no Linear layer has input statistics, so there is no layer q to give the "
                             f"{len(rest)} other tensors (e.g. {rest[0]!r})")
        out.fill = reference_mean_of_layers(out.layer_q.values())
        for name in rest:
            out.put(name, out.fill, "mean of layer q's")
    return out


def analytic_q_for_model(finetuned: nn.Module, base: nn.Module, stats: Mapping, p: float, *,
                         eta: float = 0.45, prob: float = 0.95, stop_iter: float = 0.8,
                         method: str = "grid", per_row: bool = False, two_sided: bool = False,
                         precision: str = "reference", others: str | None = "mean") -> AnalyticQMap:
    """Analytic q for a model, as the published code computes and applies it
    (vengdeng/DAREx ``utils/analyticalq.py`` ``optimal_q_calculation`` and
    ``utils/deltaprune.py`` ``rescale_q``).

    Every nn.Linear of `finetuned` with input statistics gets the q of its scan, the bias delta
    taking part as one more input column; its bias uses the weight's q. With ``others="mean"``
    (the published rule) every other floating parameter that both models share (embeddings,
    LayerNorms, biases of other modules, heads) gets the mean of the layer q's; with None they
    get no entry (``dare_model`` then rescales them by 1/(1-p) and warns).

    Args:
        finetuned, base: the same architecture; deltas are finetuned - base.
        stats: ``collect_input_stats(finetuned, batches)`` (module name -> stats with ``.mean``;
            the published statistic is the fine-tuned model's input mean).
        per_row: False (default, published) the layer q (a float); True the per-row tensor.
        eta, prob, stop_iter, method, precision, two_sided: as :func:`analytic_q`.

    Returns:
        :class:`AnalyticQMap`: parameter name -> q, with ``.sources``, ``.layer_q``, ``.fill``.
    """
    if others not in ("mean", None):
        raise ValueError(f"others must be 'mean' or None, got {others!r}")
    base_modules = dict(base.named_modules())
    base_params = dict(base.named_parameters())
    layers = []
    x_means = {}
    for name, module in finetuned.named_modules():
        if not isinstance(module, nn.Linear) or name not in stats:
            continue
        other = base_modules.get(name)
        if not isinstance(other, nn.Linear) or other.weight.shape != module.weight.shape:
            raise ValueError(f"base has no Linear {name!r} of shape {tuple(module.weight.shape)}")
        prefix = f"{name}." if name else ""
        has_bias = module.bias is not None and other.bias is not None

        def load(module=module, other=other, has_bias=has_bias):
            d_b = module.bias - other.bias if has_bias else None
            return module.weight - other.weight, d_b

        layers.append((name, prefix + "weight", prefix + "bias" if has_bias else None, load))
        x_means[name] = stats[name].mean
    rest = []
    if others == "mean":
        rest = [n for n, t in finetuned.named_parameters()
                if t.is_floating_point() and n in base_params and base_params[n].shape == t.shape]
    return analytic_q_table(layers, x_means, rest, p, eta=eta, prob=prob, stop_iter=stop_iter, method=method,
                            precision=precision, per_row=per_row, two_sided=two_sided)
