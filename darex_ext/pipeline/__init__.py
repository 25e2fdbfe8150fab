"""darex_ext.pipeline: model-level prune / apply / merge over safetensors checkpoints, streaming
one tensor at a time, atomically written, optionally over several workers (torch.distributed)."""

from __future__ import annotations

from .apply import apply_delta
from .checkpoint import Checkpoint, TensorInfo
from .compat import CheckpointMismatch
from .merge import MergeConfig, merge_models
from .prune import FORMATS, METHODS, PruneConfig, plan_prune, prune_delta, prune_model
from .select import PRESETS, select_names

__all__ = ["Checkpoint", "TensorInfo", "CheckpointMismatch", "PruneConfig", "prune_model", "plan_prune",
           "prune_delta", "apply_delta", "MergeConfig", "merge_models", "select_names", "PRESETS",
           "METHODS", "FORMATS"]
