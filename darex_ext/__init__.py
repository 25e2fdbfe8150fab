"""darex_ext: fast, exact delta-parameter pruning (DARE, DAREx, DPPA) for PyTorch.

Quick start::

    import darex_ext
    darex_ext.prune_(delta, p=0.99, q=0.05, seed=0)   # in place, CPU or CUDA
    merged = darex_ext.dare(finetuned, base, p=0.9)    # base + pruned delta, fused

Layers (docs/architecture.md): `ops` (dispatcher op wrappers), `reference` (their plain-PyTorch
twins), `storage`, `algorithms`, `pipeline`, `integrations`, `apps` (the `darex` command).
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .ops import (build_info, cuda_built, dare, keep_mask, magnitude_prune_, prune_, row_moments,
                  structural_prune_, topk_mask, topk_threshold, wanda_prune_)
from .seeds import tensor_seed

__all__ = [
    "__version__", "prune_", "dare", "keep_mask", "tensor_seed", "topk_mask", "topk_threshold",
    "magnitude_prune_", "wanda_prune_", "structural_prune_", "row_moments", "cuda_built", "build_info",
    "storage",
]

# Subpackages above the ops layer load on first use, so `import darex_ext.ops` stays the ops alone.
_LAZY = ("storage", "algorithms", "pipeline", "integrations", "serving", "reference", "apps")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
