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
from .analytic_q import (AnalyticQMap, analytic_layer_q, analytic_q, analytic_q_for_model,  # noqa: E402
                         analytic_q_table, phi, q_from_moments)
from .input_stats import InputStats, call_model, collect_input_stats  # noqa: E402
from .learned_q import LearnedQMap, LearnedQStep, learn_layer_q  # noqa: E402
from .q_search import (QFallbackWarning, QSearch, dare_model, find_q, output_change,  # noqa: E402
                       output_change_objective)
from .recommend import DeltaStats, Recommendation, TensorStats, delta_stats, recommend  # noqa: E402

__all__ += [
    "analytic_q", "analytic_layer_q", "analytic_q_for_model", "analytic_q_table", "AnalyticQMap", "q_from_moments",
    "phi", "InputStats", "collect_input_stats", "call_model", "learn_layer_q", "LearnedQMap", "LearnedQStep",
    "find_q", "QSearch", "QFallbackWarning", "output_change", "output_change_objective", "dare_model",
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
    amplify_tensor,
    dppa_densities,
    dppa_keep_mask,
    dppa_prune_,
    dynamic_prune_,
    geometric_mean_ratio,
    group_by_block,
    partitions,
    search_amplification,
)
from .lora import lora_layers, prune_lora  # noqa: E402

__all__ += [
    "structural_prune_", "AmplificationSearch", "DPPADensities", "Partitions", "amplify", "amplify_tensor",
    "dppa_densities", "dppa_keep_mask", "dppa_prune_", "dynamic_prune_", "geometric_mean_ratio",
    "group_by_block", "partitions", "search_amplification",
    "lora_layers", "prune_lora",
]

# -- merge methods for N fine-tunes --
from .merge import (  # noqa: E402
    MERGE_METHODS,
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    merge_deltas,
    merge_tensor,
    sce,
    task_arithmetic,
    ties,
)

__all__ += ["MERGE_METHODS", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
            "breadcrumbs_ties", "della", "della_linear", "sce", "merge_deltas", "merge_tensor"]
