"""`darex inspect FT --base BASE --calibration TEXT`: measure instead of guess.

Each candidate prunes the whole model at drop rate p and is scored by the published label-free
objective (the output change on the calibration text, :data:`REFERENCE_OBJECTIVES`; lower is
better): plain DARE, DAREx-q with q from the label-free search (``--q auto``), analytic q at the
published settings (reference precision, eta 0.45), learned per-layer q (``--q-mode learned``,
trained for mask seed 0, scored like the rest over seeds 0-3), and magnitude pruning (exact
top-k per tensor, no rescale). The best is recommended, with the `darex prune` options that reproduce it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

__all__ = ["Measured", "measure_methods"]


@dataclass
class Measured:
    method: str     # as in the table
    options: str    # the `darex prune` options that give it
    change: float   # output change (lower is better)
    note: str = ""


def _magnitude_model(ft, base, p: float, names: set[str]):
    from ..algorithms.prune_tensor import prune_tensor

    out = copy.deepcopy(ft)
    base_params = dict(base.named_parameters())
    with torch.no_grad():
        for name, param in out.named_parameters():
            if name not in names:
                continue
            delta = param.detach() - base_params[name].detach()
            prune_tensor(delta, "magnitude", p)
            param.copy_(base_params[name] + delta)
    return out


def measure_methods(base_path: str, ft_path: str, text_path: str, p: float, *, samples: int | None = None,
                    seq_len: int = 128, unit: str = "auto", device: str = "cpu") -> list[Measured]:
    """The candidates' output changes, best first."""
    from ..algorithms.analytic_q import analytic_q_for_model
    from ..algorithms.input_stats import collect_input_stats
    from ..algorithms.q_search import REFERENCE_OBJECTIVES, dare_model, find_q, output_change, output_change_objective
    from .calibration import calibration_batches, load_model, model_kind, read_text

    text = read_text(text_path, "--calibration")
    ft = load_model(ft_path, "PATH", device)
    base = load_model(base_path, "--base", device)
    kind = model_kind(ft)
    batches = calibration_batches(ft_path, text, samples=samples, seq_len=seq_len, device=device, unit=unit, kind=kind,
                                  hidden_states=kind == "encoder")
    objective = REFERENCE_OBJECTIVES[kind]
    base_params = dict(base.named_parameters())
    names = {n for n, t in ft.named_parameters()
             if t.is_floating_point() and n in base_params and base_params[n].shape == t.shape}
    include = names.__contains__

    def change_of(q) -> float:
        return output_change(ft, lambda s: dare_model(ft, base, p, q, seed=s, include=include), batches, **objective)

    results = [Measured("dare", "--method dare", change_of(None))]
    search = find_q(output_change_objective(ft, base, batches, p, preset=kind, include=include),
                    1.0 - p, min(1.0, 1.5 - p), (min(1.0, 1.5 - p) - (1.0 - p)) / 10, maximize=False,
                    variant="decoder" if kind == "decoder" else "encoder")
    results.append(Measured("darex-q, q auto", "--method darex-q --q auto --calibration TEXT", float(search.score),
                            f"q = {search.best:.4g}"))
    stats = collect_input_stats(ft, batches)
    qs = analytic_q_for_model(ft, base, stats, p)
    results.append(Measured("darex-q, analytic", "--method darex-q --q-mode analytic --calibration TEXT",
                            change_of(qs), f"layer q in [{min(qs.layer_q.values()):.3g}, "
                                           f"{max(qs.layer_q.values()):.3g}]" if qs.layer_q else ""))
    from .q_choice import LEARNED_BATCH, learned_table

    small = calibration_batches(ft_path, text, samples=samples, seq_len=seq_len, device=device, unit=unit, kind=kind,
                                hidden_states=kind == "encoder", batch_size=LEARNED_BATCH)
    learned, _, _ = learned_table(ft, base, small, p, 0, sorted(names), sorted(names))
    results.append(Measured("darex-q, learned per layer", "--method darex-q --q-mode learned --calibration TEXT",
                            change_of(learned), f"layer q in [{min(learned.layer_q.values()):.3g}, "
                                                f"{max(learned.layer_q.values()):.3g}]"))
    pruned = _magnitude_model(ft, base, p, names)
    results.append(Measured("magnitude", "--method magnitude",
                            output_change(ft, pruned, batches, **{k: v for k, v in objective.items()
                                                                  if k != "seeds" and k != "drop_outlier"})))
    return sorted(results, key=lambda m: m.change)
