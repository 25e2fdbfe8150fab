"""DAREx algorithms on top of the darex kernels: analytic and empirical q, AdamR, method choice.

Part of darex_ext's layered design (DESIGN.md): these functions call the ops, never the reverse.
"""

from __future__ import annotations

# -- DAREx-q, AdamR and method choice (issue 5, part A) --
from .adamr import AdamR
from .analytic_q import analytic_layer_q, analytic_q, analytic_q_for_model, phi, q_from_moments
from .input_stats import InputStats, call_model, collect_input_stats
from .q_search import QSearch, dare_model, find_q, output_change, output_change_objective
from .recommend import DeltaStats, Recommendation, TensorStats, delta_stats, recommend

__all__ = [
    "analytic_q", "analytic_layer_q", "analytic_q_for_model", "q_from_moments", "phi",
    "InputStats", "collect_input_stats", "call_model",
    "find_q", "QSearch", "output_change", "output_change_objective", "dare_model",
    "AdamR",
    "recommend", "Recommendation", "delta_stats", "DeltaStats", "TensorStats",
]
# -- end of part A --
