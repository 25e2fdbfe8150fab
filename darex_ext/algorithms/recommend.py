"""Which delta-pruning method to use: the DAREx paper's findings as statistics plus rules.

Thresholds (module constants, all overridable per call) and why:

- LARGE_MEAN_ABS = 0.005, LARGE_STD = 0.01. DARE (Yu et al. 2023) works on SFT deltas whose
  entries are mostly a few 1e-3 in absolute value and fails on much larger ones (continual
  pre-training); DAREx (Deng et al. 2025, Sec. 6) traces the failure to a large mean and
  variance of the deltas: the pruned output's variance is p/(1-p) * sum_j (delta_ij x_j)^2,
  so it grows with the square of the delta. Past these values importance-based pruning
  (magnitude, WANDA) is the paper's choice.
- OUTLIER_FACTOR = 5, OUTLIER_RATIO = 0.01: the share of entries with |delta| > 5 x mean |delta|
  (the M = 5 of DPPA). Gaussian deltas have about 7e-5 of them and Laplace ones e^-5 = 0.7%;
  above 1% a few large entries carry the delta, random dropping loses them with probability p,
  and keeping the largest (magnitude/WANDA) is safer.
- EXTREME_P = 0.9: DAREx shows the 1/(1-p) rescale degrading sharply past p = 0.9 and a tuned
  q recovering most of the loss at p = 0.99; below it plain DARE is close to the fine-tuned model.

These are order-of-magnitude readings of the paper, not fitted constants: check the choice on
your model (``find_q`` with a metric, or ``output_change``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..ops import _checks
from . import _args

__all__ = ["TensorStats", "DeltaStats", "Recommendation", "delta_stats", "tensor_stats", "recommend",
           "LARGE_MEAN_ABS", "LARGE_STD", "OUTLIER_FACTOR", "OUTLIER_RATIO", "EXTREME_P"]

LARGE_MEAN_ABS = 0.005
LARGE_STD = 0.01
OUTLIER_FACTOR = 5.0
OUTLIER_RATIO = 0.01
EXTREME_P = 0.9


@dataclass
class TensorStats:
    """Statistics of one delta tensor (float64 accumulation)."""

    numel: int
    mean_abs: float
    mean: float
    var: float
    outlier_ratio: float  # share of entries with |delta| > OUTLIER_FACTOR * mean |delta|
    max_abs: float


@dataclass
class DeltaStats:
    """Model-level statistics (numel-weighted over tensors) and the per-tensor ones."""

    numel: int
    mean_abs: float
    mean: float
    var: float
    outlier_ratio: float
    max_abs: float
    per_tensor: dict[str, TensorStats] = field(default_factory=dict)

    @property
    def std(self) -> float:
        return self.var ** 0.5

    @classmethod
    def combine(cls, per: dict) -> "DeltaStats":
        """Model-level statistics from per-tensor ones: mean |delta|, mean and outlier ratio
        numel-weighted; the variance of all entries pooled (within plus between tensors)."""
        n = sum(s.numel for s in per.values())
        if n == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, dict(per))
        mean = sum(s.mean * s.numel for s in per.values()) / n
        second = sum((s.var + s.mean ** 2) * s.numel for s in per.values()) / n
        return cls(numel=n, mean_abs=sum(s.mean_abs * s.numel for s in per.values()) / n, mean=mean,
                   var=max(second - mean ** 2, 0.0),
                   outlier_ratio=sum(s.outlier_ratio * s.numel for s in per.values()) / n,
                   max_abs=max(s.max_abs for s in per.values()), per_tensor=dict(per))


@dataclass
class Recommendation:
    """What :func:`recommend` decided: a method name, the q source if any, and why."""

    method: str            # "dare" | "darex-q" | "magnitude" | "wanda" | "adamr"
    q: str | None          # "empirical" | "analytic" | None
    reasons: list[str]
    stats: DeltaStats


def tensor_stats(t: torch.Tensor, outlier_factor: float = OUTLIER_FACTOR) -> TensorStats:
    """:class:`TensorStats` of one delta tensor (streamed callers combine them with
    :meth:`DeltaStats.combine`)."""
    return _tensor_stats(t, outlier_factor)


def _tensor_stats(t: torch.Tensor, outlier_factor: float) -> TensorStats:
    x = t.detach().to(torch.float64).reshape(-1)
    n = x.numel()
    if n == 0:
        return TensorStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    a = x.abs()
    mean_abs = float(a.mean())
    mean = float(x.mean())
    var = float(x.var(unbiased=False))
    outliers = float((a > outlier_factor * mean_abs).sum()) / n if mean_abs > 0 else 0.0
    return TensorStats(n, mean_abs, mean, var, outliers, float(a.max()))


def delta_stats(deltas, *, outlier_factor: float = OUTLIER_FACTOR) -> DeltaStats:
    """Statistics of a delta tensor or a mapping name -> delta tensor.

    Model-level mean |delta|, mean and outlier ratio are numel-weighted averages of the
    tensors'; the variance is that of all entries pooled (within plus between tensors).
    """
    outlier_factor = _args.positive(outlier_factor, "outlier_factor")
    if isinstance(deltas, torch.Tensor):
        deltas = {"delta": deltas}
    if not isinstance(deltas, Mapping):
        raise TypeError(f"deltas must be a tensor or a mapping name -> tensor, got {type(deltas).__name__}")
    per = {}
    for name, t in deltas.items():
        _checks.tensor(t, f"deltas[{name!r}]")
        per[name] = _tensor_stats(t, outlier_factor)
    return DeltaStats.combine(per)


def recommend(stats, p: float, *, has_labels: bool = False, has_calibration_data: bool = True,
              can_finetune: bool = False, has_activation_stats: bool = False,
              large_mean_abs: float = LARGE_MEAN_ABS, large_std: float = LARGE_STD,
              outlier_ratio: float = OUTLIER_RATIO, extreme_p: float = EXTREME_P) -> Recommendation:
    """The paper's method choice for pruning these deltas at drop rate p.

    Rules, in order:
      1. Large deltas (mean |delta| > large_mean_abs, or std > large_std, or outlier share >
         outlier_ratio): with control over fine-tuning, re-fine-tune with AdamR (DAREx-L2) so
         the delta becomes small, then prune with DARE; otherwise importance-based pruning,
         WANDA when input activation statistics are available, else magnitude.
      2. Small deltas and p >= extreme_p: with control over fine-tuning, AdamR then DARE;
         otherwise DAREx-q, with q found empirically (``find_q``) when there are labels, else
         analytically (``analytic_q``, needs calibration inputs); without labels or
         calibration data, the empirical search on ``output_change`` is impossible too, so
         plain DARE with a warning reason.
      3. Small deltas and moderate p: plain DARE (q = 1 - p).

    Args:
        stats: a :class:`DeltaStats`, or deltas (a tensor or mapping) to compute it from.
        p: the drop rate in (0, 1).
    """
    if not isinstance(stats, DeltaStats):
        stats = delta_stats(stats)
    p = _args.open_unit(p, "p")
    for flag, name in ((has_labels, "has_labels"), (has_calibration_data, "has_calibration_data"),
                       (can_finetune, "can_finetune"), (has_activation_stats, "has_activation_stats")):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    large_mean_abs = _args.positive(large_mean_abs, "large_mean_abs")
    large_std = _args.positive(large_std, "large_std")
    outlier_ratio = _args.open_unit(outlier_ratio, "outlier_ratio")
    extreme_p = _args.open_unit(extreme_p, "extreme_p")

    reasons: list[str] = []
    if stats.mean_abs > large_mean_abs:
        reasons.append(f"mean |delta| = {stats.mean_abs:.3g} > {large_mean_abs:g}: large deltas, DARE's "
                       f"rescaled noise grows with their square")
    if stats.std > large_std:
        reasons.append(f"std of delta = {stats.std:.3g} > {large_std:g}: high-variance deltas")
    if stats.outlier_ratio > outlier_ratio:
        reasons.append(f"{100 * stats.outlier_ratio:.2f}% of entries exceed {OUTLIER_FACTOR:g}x mean |delta| "
                       f"(> {100 * outlier_ratio:g}%): a few large entries carry the delta")
    if reasons:
        if can_finetune:
            reasons.append("fine-tuning is under your control: AdamR (DAREx-L2) keeps the delta small, "
                           "then DARE works")
            return Recommendation("adamr", None, reasons, stats)
        if has_activation_stats:
            reasons.append("importance-based pruning keeps the large entries; input activation norms "
                           "are available, so WANDA")
            return Recommendation("wanda", None, reasons, stats)
        reasons.append("importance-based pruning keeps the large entries: magnitude pruning")
        return Recommendation("magnitude", None, reasons, stats)

    reasons.append(f"deltas are small (mean |delta| {stats.mean_abs:.3g}, std {stats.std:.3g}, "
                   f"{100 * stats.outlier_ratio:.2f}% outliers): random drop-and-rescale suits them")
    if p < extreme_p:
        reasons.append(f"p = {p:g} < {extreme_p:g}: the 1/(1-p) rescale of plain DARE is accurate here")
        return Recommendation("dare", None, reasons, stats)
    reasons.append(f"p = {p:g} >= {extreme_p:g}: 1/(1-p) over-amplifies the few kept entries; "
                   f"a larger q (DAREx-q) or a smaller delta is needed")
    if can_finetune:
        reasons.append("fine-tuning is under your control: AdamR (DAREx-L2) makes the delta prune well at "
                       "extreme p, then DARE (optionally with DAREx-q on top)")
        return Recommendation("adamr", None, reasons, stats)
    if has_labels:
        reasons.append("labeled validation data: search q empirically (find_q with your metric)")
        return Recommendation("darex-q", "empirical", reasons, stats)
    if has_calibration_data:
        # Evidence on real weights (benchmarks/repro_real.py, all-MiniLM-L6-v2 at p = 0.99): the
        # learned per-layer q and the label-free q search both land within a point of the q
        # found with labels; analytic q trails them.
        reasons.append("no labels: learn one q per layer on the output change over unlabeled calibration "
                       "inputs (learn_layer_q; CLI --q-mode learned --calibration TEXT); find_q on "
                       "output_change (--q auto) is the one-number alternative, analytic q (--q-mode "
                       "analytic) the fastest")
        return Recommendation("darex-q", "learned", reasons, stats)
    reasons.append("no labels and no calibration inputs: q cannot be tuned; plain DARE, expect a loss "
                   "at this p")
    return Recommendation("dare", None, reasons, stats)
