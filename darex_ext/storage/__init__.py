"""Sparse delta storage: compact formats for pruned deltas, safetensors files, fused apply.

- ``compress_dare(delta, p, q, seed=...)``: DARE straight into the ``seeded`` format (only
  kept values are stored; the mask is regenerated from the seed).
- ``compress(pruned, format="auto")``: any pruned delta as ``bitmask`` (compressed-tensors'
  sparse-bitmask layout) or ``csr``.
- ``SparseDelta.to_dense()`` / ``.add_to_(base, alpha)``: C++/CUDA decode and fused apply.
- ``save(path, {name: delta}, metadata)`` / ``load(path)``: atomic writes, lazy validated reads;
  a malformed file raises ``FormatError``.
"""

from __future__ import annotations

from .compress import compress, compress_dare
from .errors import FormatError
from .files import DeltaFile, load, save
from .formats import FORMAT_VERSION, FORMAT_VERSIONS, FORMATS, format_nbytes, information_bound_bytes
from .sparse_delta import SparseDelta

__all__ = [
    "FormatError", "SparseDelta", "compress", "compress_dare", "save", "load", "DeltaFile",
    "FORMATS", "FORMAT_VERSION", "FORMAT_VERSIONS", "format_nbytes", "information_bound_bytes",
]
