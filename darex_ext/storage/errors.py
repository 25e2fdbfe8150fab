"""The one exception a storage decoder raises for bad content."""

from __future__ import annotations

__all__ = ["FormatError"]


class FormatError(ValueError):
    """A sparse delta (in memory or in a file) is malformed: the message names the tensor and
    the problem. Raised for every inconsistency a decoder finds, never a crash or a bad write."""
