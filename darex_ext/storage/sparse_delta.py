"""SparseDelta: one pruned delta in a compact format, decoded or added onto a base by kernels."""

from __future__ import annotations

import math

import torch

from ..ops import _checks, bitmask_scatter_, csr_scatter_, seeded_scatter_
from ..ops.huge_pages import fresh_empty
from ._validate import check_delta, label
from .errors import FormatError
from .formats import DTYPE_NAMES

__all__ = ["SparseDelta"]


class SparseDelta:
    """A pruned delta tensor stored as ``seeded``, ``bitmask`` or ``csr`` (see formats.py).

    Attributes:
        format: "seeded" | "bitmask" | "csr".
        shape: the dense shape (tuple of ints).
        dtype: the dense dtype (float32/float64/float16/bfloat16).
        payload: the format's tensors (seeded: values; bitmask: compressed, bitmask,
            row_offsets; csr: crow, col, values), all on one device.
        meta: JSON-serialisable facts: p, q, seed, offset, method, mask (seeded needs p, seed,
            offset; "mask" is the mask spec, "skip" or "philox", and absent means "philox": what
            every file written before spec v2 holds).
        name: the tensor's name when it came from (or goes to) a file; used in error messages.

    Construction checks the structure (dtypes, ranks, lengths, metadata) and raises FormatError;
    the content (bit counts, offsets, column indices, the seeded keep count) is checked by the
    kernels before every decode, so a malformed delta raises FormatError and never writes.
    """

    __slots__ = ("format", "shape", "dtype", "payload", "meta", "name")

    def __init__(self, format: str, shape, dtype: torch.dtype, payload: dict[str, torch.Tensor],
                 meta: dict | None = None, *, name: str | None = None):
        self.name = name
        (self.format, self.shape, self.dtype, self.payload, self.meta) = check_delta(
            format, shape, dtype, payload, meta, name)

    # ---- sizes
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kept(self) -> int:
        """Number of stored values."""
        return self.values.numel()

    @property
    def values(self) -> torch.Tensor:
        return self.payload["compressed" if self.format == "bitmask" else "values"]

    @property
    def nbytes(self) -> int:
        """Bytes of the payload tensors (what a file stores, without its header)."""
        return sum(t.numel() * t.element_size() for t in self.payload.values())

    @property
    def density(self) -> float:
        """Stored values / numel (1 - p for a seeded delta, on average)."""
        return self.kept / self.numel if self.numel else 0.0

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device) -> SparseDelta:
        """A copy with the payload on `device` (self if it is already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        payload = {k: v.to(device) for k, v in self.payload.items()}
        return SparseDelta(self.format, self.shape, self.dtype, payload, self.meta, name=self.name)

    # ---- decode
    def to_dense(self) -> torch.Tensor:
        """The dense delta (dropped entries exactly 0). For a seeded delta made by
        compress_dare this equals prune_ with the same arguments (mask included) bit for bit."""
        out = fresh_empty(self.shape, self.dtype, self.device)
        self._scatter(out, self.values, 1.0, False)
        return out

    def add_to_(self, base: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``base += alpha * delta`` in place, touching only the stored entries (no dense
        temporary; a seeded delta with mask "skip" also regenerates only their positions). Each kept entry becomes ``round(base + alpha * value)`` computed in float32
        (float64 for a float64 base): with alpha = 1 that is exactly ``base + to_dense()``
        except that a -0.0 in base stays -0.0 where the delta is dropped.

        `base` must have the delta's shape and device; if its dtype differs, the stored values
        are first rounded to base.dtype. Returns `base`.
        """
        _checks.tensor(base, "base")
        _checks.not_tracking_grad(base, "base")
        if tuple(base.shape) != self.shape:
            raise ValueError(f"base has shape {tuple(base.shape)} but {label(self.name)} has shape {self.shape}")
        if base.device != self.device:
            raise ValueError(f"base is on {base.device} but {label(self.name)} is on {self.device}")
        alpha = _checks.real(alpha, "alpha")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        values = self.values if base.dtype == self.dtype else self.values.to(base.dtype)
        self._scatter(base, values, alpha, True)
        return base

    def _scatter(self, out: torch.Tensor, values: torch.Tensor, alpha: float, accumulate: bool) -> None:
        pl, m = self.payload, self.meta
        try:
            if self.format == "seeded":
                seeded_scatter_(out, values, m["p"], seed=m["seed"], offset=m["offset"],
                                alpha=alpha, accumulate=accumulate, mask=m.get("mask", "philox"))
            elif self.format == "bitmask":
                bitmask_scatter_(out, values, pl["bitmask"], pl["row_offsets"], alpha=alpha,
                                         accumulate=accumulate)
            else:
                csr_scatter_(out, pl["crow"], pl["col"], values, alpha=alpha,
                                     accumulate=accumulate)
        except (ValueError, TypeError) as exc:  # the kernels' content checks
            raise FormatError(f"{label(self.name)} ({self.format}): {exc}") from exc

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name is not None else ""
        return (f"SparseDelta({name}format={self.format!r}, shape={self.shape}, "
                f"dtype={DTYPE_NAMES[self.dtype]}, kept={self.kept}, density={self.density:.4g}, "
                f"nbytes={self.nbytes}, device={self.device})")
