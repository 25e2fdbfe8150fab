"""darex_ext.algorithms: the DAREx algorithms and model merging on top of the kernels."""

from __future__ import annotations

__all__: list[str] = []

# merge (issue 6)
from .merge import MERGE_METHODS, dare_linear, dare_ties, merge_tensor, task_arithmetic, ties  # noqa: E402

__all__ += ["MERGE_METHODS", "task_arithmetic", "ties", "dare_ties", "dare_linear", "merge_tensor"]
