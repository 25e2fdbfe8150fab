"""darex_ext.algorithms: the DARE / DAREx / DPPA algorithms as documented functions.

Heavy loops run in the darex kernels; these modules choose what to prune and how much.
"""

from __future__ import annotations

__all__: list[str] = []

# Structural DPP, DPPA and LoRA (issue 5, part B).
from ..structural import structural_prune_  # noqa: E402
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
