"""Serving many fine-tunes from one base: hold sparse deltas next to a loaded model and switch
the live parameters between them in place (`DeltaBank`); deactivate() restores the base bit for
bit. Layer: above storage and pipeline, below apps (docs/architecture.md)."""

from __future__ import annotations

from .bank import DeltaBank
from .positions import KeptIndex, kept_positions

__all__ = ["DeltaBank", "KeptIndex", "kept_positions"]
