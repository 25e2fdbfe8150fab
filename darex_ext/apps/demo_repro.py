"""The DAREx comparison on the demo task: no pruning, DARE, DAREx-q (empirical and analytic),
magnitude pruning, and an AdamR fine-tune pruned with DARE, all at one drop rate.

Shared by ``benchmarks/repro_darex.py`` (table and plot) and its test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..algorithms.analytic_q import analytic_q_for_model
from ..algorithms.input_stats import collect_input_stats
from ..algorithms.q_search import QSearch, dare_model, find_q, output_change
from .demo_task import DemoModels, accuracy, weight_names
from ..ops import magnitude_prune_

__all__ = ["DemoRow", "DemoResult", "compare_methods", "q_curve"]


@dataclass
class DemoRow:
    method: str
    accuracy: float          # test accuracy, mean over mask seeds
    q: str                   # the rescale used, as text
    note: str = ""


@dataclass
class DemoResult:
    p: float
    rows: list[DemoRow]
    empirical: QSearch       # find_q on validation accuracy (q)
    eta_search: QSearch      # find_q on output_change (eta of analytic q, signed S)
    eta_search_two_sided: QSearch
    curve: list[tuple[float, float]] = field(default_factory=list)  # (q, test accuracy)

    def row(self, method: str) -> DemoRow:
        return next(r for r in self.rows if r.method == method)


def _mean_acc(build, x, y, seeds) -> float:
    return sum(accuracy(build(s), x, y) for s in seeds) / len(seeds)


def _magnitude_model(ft: nn.Module, base: nn.Module, p: float, names: list[str]) -> nn.Module:
    out = dare_model(ft, base, 0.0, include=lambda n: n in names)  # a copy, unchanged
    base_params = dict(base.named_parameters())
    with torch.no_grad():
        for name, param in out.named_parameters():
            if name in names:
                delta = param - base_params[name]
                magnitude_prune_(delta, p)  # keep the largest 1 - p of |delta|, no rescale
                param.copy_(base_params[name] + delta)
    return out


def q_curve(models: DemoModels, p: float, qs, seeds=(0, 1, 2)) -> list[tuple[float, float]]:
    """Test accuracy of DARE with rescale q, for each q (the plot of the paper's q sweep)."""
    names = weight_names(models.base)
    d = models.data
    return [(q, _mean_acc(lambda s, q=q: dare_model(models.finetuned, models.base, p, q, seed=s,
                                                    include=lambda n: n in names), d.x_test, d.y_test, seeds))
            for q in qs]


def compare_methods(models: DemoModels, p: float = 0.99, seeds=(0, 1, 2), *, q_hi: float = 0.5,
                    q_step: float = 0.02, eta_lo: float = 0.01, eta_hi: float = 1.0,
                    eta_step: float = 0.05) -> DemoResult:
    """Every method at drop rate p on the Linear weights; accuracies on the test split.

    DAREx-q empirical searches a global q with ``find_q`` on labeled validation accuracy;
    DAREx-q analytic computes a q per layer (the mean of the per-row q of Algorithm 3) from
    unlabeled validation inputs (``collect_input_stats``), with eta chosen by ``find_q`` on
    ``output_change`` (no labels either), once with the authors' signed S_i and once two-sided.
    """
    base, ft, d = models.base, models.finetuned, models.data
    names = weight_names(base)
    include = lambda n: n in names  # noqa: E731

    def pruned(q, model=ft):
        return lambda s: dare_model(model, base, p, q, seed=s, include=include)

    def val_acc(q: float) -> float:
        return _mean_acc(pruned(q), d.x_val, d.y_val, seeds)

    def test_acc(q, model=ft) -> float:
        return _mean_acc(pruned(q, model), d.x_test, d.y_test, seeds)

    rows = [DemoRow("fine-tuned (no pruning)", accuracy(ft, d.x_test, d.y_test), "-"),
            DemoRow("pretrained (delta dropped)", accuracy(base, d.x_test, d.y_test), "-"),
            DemoRow("DARE", test_acc(None), f"{1 - p:.3g} (= 1-p)")]

    empirical = find_q(val_acc, 1.0 - p, q_hi, q_step)
    rows.append(DemoRow("DAREx-q, empirical q", test_acc(empirical.best), f"{empirical.best:.3g}",
                        f"find_q on validation accuracy, {len(empirical.history)} evaluations"))

    stats = collect_input_stats(ft, [d.x_val])
    batches = [d.x_val]
    eta_searches = {}
    for two_sided, label in ((False, "DAREx-q, analytic q per layer"),
                             (True, "DAREx-q, analytic q per layer, two-sided")):
        def analytic(eta: float, two_sided=two_sided) -> dict:
            qs = analytic_q_for_model(ft, base, stats, p, eta=eta, per_row=False, two_sided=two_sided)
            return {k: v for k, v in qs.items() if include(k)}

        search = find_q(lambda eta: output_change(ft, pruned(analytic(eta)), batches, seeds=seeds),
                        eta_lo, eta_hi, eta_step, maximize=False)
        eta_searches[two_sided] = search
        layer_q = analytic(search.best)
        rows.append(DemoRow(label, test_acc(layer_q), ", ".join(f"{v:.3g}" for v in layer_q.values()),
                            f"eta = {search.best:.3g} by find_q on output_change (no labels)"
                            + ("; abs(S_i) instead of S_i" if two_sided else "; the authors' signed S_i")))

    rows.append(DemoRow("magnitude pruning", accuracy(_magnitude_model(ft, base, p, names), d.x_test, d.y_test),
                        "- (no rescale)", "keeps the largest 1-p of abs(delta) per matrix"))
    if models.adamr is not None:
        rows.append(DemoRow("AdamR fine-tune (no pruning)", accuracy(models.adamr, d.x_test, d.y_test), "-",
                            f"weight_decay = {models.config.adamr_weight_decay:g}"))
        rows.append(DemoRow("AdamR fine-tune + DARE", test_acc(None, models.adamr), f"{1 - p:.3g} (= 1-p)"))
    return DemoResult(p, rows, empirical, eta_searches[False], eta_searches[True])
