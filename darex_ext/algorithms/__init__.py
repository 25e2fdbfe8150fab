"""darex_ext.algorithms: the DARE / DAREx / DPPA algorithms as documented functions.

Heavy loops run in the darex kernels; these modules choose what to prune and how much
(docs/architecture.md layers: they call the ops, never the reverse); merge methods for N fine-tunes.
"""

from __future__ import annotations

__all__: list[str] = []

# -- one tensor by a named method: the entry every caller shares --
from .prune_tensor import PRUNE_METHODS, prune_tensor, tensor_q  # noqa: E402

__all__ += ["PRUNE_METHODS", "prune_tensor", "tensor_q"]

# -- DAREx-q, AdamR and method choice --
from .adamr import AdamR  # noqa: E402
from .analytic_q import analytic_layer_q, analytic_q, analytic_q_for_model, phi, q_from_moments  # noqa: E402
from .input_stats import InputStats, call_model, collect_input_stats  # noqa: E402
from .q_search import QSearch, dare_model, find_q, output_change, output_change_objective  # noqa: E402
from .recommend import DeltaStats, Recommendation, TensorStats, delta_stats, recommend  # noqa: E402

__all__ += [
    "analytic_q", "analytic_layer_q", "analytic_q_for_model", "q_from_moments", "phi",
    "InputStats", "collect_input_stats", "call_model",
    "find_q", "QSearch", "output_change", "output_change_objective", "dare_model",
    "AdamR",
    "recommend", "Recommendation", "delta_stats", "DeltaStats", "TensorStats",
]

# -- Structural DPP, DPPA and LoRA --
from ..ops import structural_prune_  # noqa: E402
from .dppa import (  # noqa: E402
    AmplificationSearch,
    DPPADensities,
    Partitions,
    amplify,
    dppa_densities,
    dynamic_prune_,
    group_by_block,
    partitions,
    search_amplification,
)
from .lora import lora_layers, prune_lora  # noqa: E402

__all__ += [
    "structural_prune_", "AmplificationSearch", "DPPADensities", "Partitions", "amplify",
    "dppa_densities", "dynamic_prune_", "group_by_block", "partitions", "search_amplification",
    "lora_layers", "prune_lora",
]

# -- merge methods for N fine-tunes --
from .merge import MERGE_METHODS, dare_linear, dare_ties, merge_tensor, task_arithmetic, ties  # noqa: E402

__all__ += ["MERGE_METHODS", "task_arithmetic", "ties", "dare_ties", "dare_linear", "merge_tensor"]
