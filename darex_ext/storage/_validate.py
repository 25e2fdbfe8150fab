"""Structural checks of a sparse delta: every payload tensor's dtype, rank and length against
the format, shape and dtype it claims, and the metadata the decoder needs. Content checks (bit
counts, row offsets, column indices, the seeded keep count) run in the kernels, before they
write. Every failure is a FormatError naming the tensor."""

from __future__ import annotations

import math
import numbers

import torch

from .errors import FormatError
from .formats import COLUMN_DTYPES, DTYPE_NAMES, FORMATS, PAYLOAD_KEYS, packed_row_bytes, row_view

__all__ = ["MAX_NUMEL", "check_delta", "check_meta", "check_shape", "label"]

# No real tensor comes near this; a larger claim is a corrupted or hostile file, and refusing
# it keeps a decoder from attempting an absurd allocation or Philox pass.
MAX_NUMEL = 1 << 40
_U64 = (1 << 64) - 1
_MASKS = ("skip", "philox")


def label(name: str | None) -> str:
    return f"tensor {name!r}" if name is not None else "sparse delta"


def check_shape(shape, name: str | None) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise FormatError(f"{label(name)}: shape must be a list of ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) > 64 or any(s < 0 for s in shape):
        raise FormatError(f"{label(name)}: invalid shape {shape}")
    if math.prod(shape) > MAX_NUMEL:
        raise FormatError(f"{label(name)}: shape {shape} has more than 2**40 elements")
    return shape


def _real(meta: dict, key: str, name: str | None, *, required: bool):
    v = meta.get(key)
    if v is None:
        if required:
            raise FormatError(f"{label(name)}: metadata {key!r} is missing")
        return None
    try:
        ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise FormatError(f"{label(name)}: metadata {key!r} must be a finite number, got {v!r:.80}")
    return float(v)


def _positive_finite(x) -> bool:
    try:
        return math.isfinite(float(x)) and float(x) > 0.0
    except OverflowError:  # an int too large for a float
        return False


def _int(meta: dict, key: str, name: str | None, lo: int, hi: int, *, default=None):
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= int(v) <= hi:
        raise FormatError(f"{label(name)}: metadata {key!r} must be an int in [{lo}, {hi}], got {v!r:.80}")
    return int(v)


def check_meta(fmt: str, meta, name: str | None) -> dict:
    """Validates the metadata a format needs; returns a normalized copy."""
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise FormatError(f"{label(name)}: metadata must be an object with string keys, got {meta!r}")
    out = dict(meta)
    p = _real(meta, "p", name, required=fmt == "seeded")
    if p is not None and not 0.0 <= p < 1.0:
        raise FormatError(f"{label(name)}: metadata 'p' must be in [0, 1), got {p}")
    q = meta.get("q")
    if q is not None and not (isinstance(q, numbers.Real) and not isinstance(q, bool)) and not (
            isinstance(q, list) and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in q)):
        raise FormatError(f"{label(name)}: metadata 'q' must be null, a number or a list of numbers")
    if q is not None and not all(_positive_finite(x) for x in (q if isinstance(q, list) else [q])):
        raise FormatError(f"{label(name)}: metadata 'q' must be finite and > 0, got {q!r:.80}")
    method = meta.get("method")
    if method is not None and not isinstance(method, str):
        raise FormatError(f"{label(name)}: metadata 'method' must be a string, got {method!r}")
    mask = meta.get("mask")  # the mask spec; absent = "philox" (files from before spec v2)
    if mask is not None and mask not in _MASKS:
        raise FormatError(f"{label(name)}: metadata 'mask' must be one of {_MASKS}, got {mask!r:.80}")
    if fmt == "seeded":
        out["p"] = p
        out["seed"] = _int(meta, "seed", name, 0, _U64)
        out["offset"] = _int(meta, "offset", name, 0, (1 << 63) - 1, default=0)
    return out


def _tensor(payload: dict, key: str, name: str | None, dtype, shape) -> torch.Tensor:
    t = payload[key]
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{label(name)}: {key} must be a tensor, got {type(t).__name__}")
    if isinstance(dtype, tuple):
        if t.dtype not in dtype:
            raise FormatError(f"{label(name)}: {key} has dtype {t.dtype}, expected one of {dtype}")
    elif t.dtype != dtype:
        raise FormatError(f"{label(name)}: {key} has dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise FormatError(f"{label(name)}: {key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def _plausible_keep_count(kept: int, numel: int, p: float, name: str | None) -> None:
    # A real seeded file keeps Binomial(numel, 1 - p) elements; 12 standard deviations off is
    # impossible in practice and bounds the numel a hostile header can make a decoder process.
    mean = (1.0 - p) * numel
    sd = math.sqrt(numel * p * (1.0 - p))
    if abs(kept - mean) > 12.0 * sd + 16.0:
        raise FormatError(f"{label(name)}: {kept} values cannot be the kept entries of {numel} "
                          f"elements at p={p} (expected about {mean:.0f})")


def check_delta(fmt, shape, dtype, payload, meta, name: str | None):
    """Validates everything but content; returns (format, shape, dtype, payload, meta)."""
    if fmt not in FORMATS:
        raise FormatError(f"{label(name)}: unknown format {fmt!r} (expected one of {FORMATS})")
    shape = check_shape(shape, name)
    if dtype not in DTYPE_NAMES:
        raise FormatError(f"{label(name)}: dtype must be one of {tuple(DTYPE_NAMES.values())}, got {dtype}")
    if not isinstance(payload, dict) or set(payload) != set(PAYLOAD_KEYS[fmt]):
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise FormatError(f"{label(name)}: {fmt} payload needs tensors {PAYLOAD_KEYS[fmt]}, got {got}")
    meta = check_meta(fmt, {} if meta is None else meta, name)
    rows, cols = row_view(shape)
    numel = math.prod(shape)
    if fmt == "seeded":
        values = _tensor(payload, "values", name, dtype, None)
        if values.dim() != 1 or values.numel() > numel:
            raise FormatError(f"{label(name)}: values must be 1-D with at most {numel} entries, "
                              f"got shape {tuple(values.shape)}")
        _plausible_keep_count(values.numel(), numel, meta["p"], name)
    elif fmt == "bitmask":
        values = _tensor(payload, "compressed", name, dtype, None)
        _tensor(payload, "bitmask", name, torch.uint8, (rows, packed_row_bytes(cols)))
        _tensor(payload, "row_offsets", name, torch.int64, (rows,))
        if values.dim() != 1 or values.numel() > numel:
            raise FormatError(f"{label(name)}: compressed must be 1-D with at most {numel} entries, "
                              f"got shape {tuple(values.shape)}")
    else:
        values = _tensor(payload, "values", name, dtype, None)
        if values.dim() != 1 or values.numel() > numel:
            raise FormatError(f"{label(name)}: values must be 1-D with at most {numel} entries, "
                              f"got shape {tuple(values.shape)}")
        _tensor(payload, "crow", name, torch.int64, (rows + 1,))
        _tensor(payload, "col", name, COLUMN_DTYPES, (values.numel(),))
    devices = {t.device for t in payload.values()}
    if len(devices) != 1:
        raise FormatError(f"{label(name)}: payload tensors are on different devices {sorted(map(str, devices))}")
    return fmt, shape, dtype, dict(payload), meta
