"""Names, dtypes and size formulas of the three sparse delta formats.

Every format sees a tensor through its 2-D view: rows = shape[0], cols = the other dims
flattened; 0-d and 1-d tensors are one row (rows = 1, cols = numel). For 2-D tensors this is
exactly compressed-tensors' sparse-bitmask layout.

- ``seeded``:  values (kept entries, already rescaled, in flat order). The mask is regenerated
  from (seed, p, offset) by the mask spec. Bytes: kept * itemsize.
- ``bitmask``: compressed (values), bitmask (uint8 [rows, ceil(cols / 8)], numpy.packbits of
  ``x != 0`` per row, bitorder="little"), row_offsets (int64 [rows], index of each row's first
  value); the file adds shape (int64 [ndim]). Bytes: kept * itemsize + rows * ceil(cols / 8) +
  8 * rows.
- ``csr``: crow (int64 [rows + 1]), col (narrowest of uint8 / uint16 / uint32 / int64 for cols),
  values. Bytes: kept * (itemsize + colsize) + 8 * (rows + 1).
"""

from __future__ import annotations

import math

import torch

from ..ops._row_view import column_dtype, row_view

__all__ = [
    "FORMATS", "FORMAT_VERSION", "FORMAT_VERSIONS", "PAYLOAD_KEYS", "FILE_KEYS", "DTYPE_NAMES", "DTYPES_BY_NAME",
    "COLUMN_DTYPES", "row_view", "packed_row_bytes", "column_dtype", "format_nbytes",
    "information_bound_bytes",
]

FORMATS = ("seeded", "bitmask", "csr")
# File format versions (darex_ext.format_version in a file's header). "2": the file holds a
# seeded delta with mask "skip" (mask spec v2, docs/mask_spec.md), which a reader that knows only
# "1" would decode with spec v1's mask, so it must refuse the file; "1": every other file
# (seeded deltas with mask "philox" or no "mask", which means "philox"). A writer writes the
# lowest version that describes its content; readers accept FORMAT_VERSIONS.
FORMAT_VERSION = "2"  # the newest version this darex_ext writes
FORMAT_VERSIONS = ("1", "2")

# In-memory payload tensors per format, and the suffixes they get in a file (`<name>.<suffix>`).
PAYLOAD_KEYS = {
    "seeded": ("values",),
    "bitmask": ("compressed", "bitmask", "row_offsets"),
    "csr": ("crow", "col", "values"),
}
FILE_KEYS = {
    "seeded": ("values",),
    "bitmask": ("shape", "compressed", "bitmask", "row_offsets"),
    "csr": ("crow", "col", "values"),
}

DTYPE_NAMES = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}
COLUMN_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.int64)


def packed_row_bytes(cols: int) -> int:
    return (cols + 7) // 8


def format_nbytes(fmt: str, shape, dtype: torch.dtype, kept: int) -> int:
    """Payload bytes of a delta with `kept` stored values (the formulas above)."""
    item = torch.empty((), dtype=dtype).element_size()
    rows, cols = row_view(shape)
    if fmt == "seeded":
        return kept * item
    if fmt == "bitmask":
        return kept * item + rows * packed_row_bytes(cols) + 8 * rows
    if fmt == "csr":
        col_item = torch.empty((), dtype=column_dtype(cols)).element_size()
        return kept * (item + col_item) + 8 * (rows + 1)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def information_bound_bytes(numel: int, kept: int, itemsize: int, *, seeded: bool = False) -> float:
    """Bytes no lossless coder can beat: kept values plus the binary entropy of the mask
    (zero when the mask is a function of a seed)."""
    values = kept * itemsize
    if seeded or numel == 0 or kept in (0, numel):
        return float(values)
    d = kept / numel
    entropy_bits = -numel * (d * math.log2(d) + (1 - d) * math.log2(1 - d))
    return values + entropy_bits / 8
