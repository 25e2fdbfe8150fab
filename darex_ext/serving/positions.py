"""Kept flat positions of a SparseDelta: the one thing the bank needs from each format.

A delta's stored values go, in order, to ascending flat (row-major) positions of its tensor.
`kept_positions(sd)` recovers those positions from the public payload of each format:

- ``csr``: from ``crow`` / ``col`` (O(kept));
- ``bitmask``: from the packed bits: the non-zero bytes, each expanded by a 256-entry table
  (O(numel / 8) bytes scanned, O(kept) work after);
- ``seeded``: from the regenerated keep mask (``ops.keep_mask``) under the mask spec the delta
  records (meta "mask"; absent means "philox", the spec of files written before spec v2), in
  chunks of ``_CHUNK`` elements, with the mask's ``offset`` so each chunk gets its part of the
  whole mask (O(chunk) temporary).

`KeptIndex` is how the bank holds positions between switches: ``regenerate`` (recompute from the
payload at every activate; nothing stored) or ``cache`` (positions stored once, at add, as uint16
gaps: 2 bytes per kept value; a tensor whose gaps do not fit 16 bits stores int32 / int64
positions instead). A cached bitmask or csr delta needs nothing but its values after that, so
the bank drops its bits or column indices: every format is then held as values + gaps.

Every path checks what it derives (count equals the stored values, positions strictly increasing
and inside the tensor) and raises FormatError otherwise, so a malformed delta never writes.
"""

from __future__ import annotations

import torch

from ..ops import keep_mask
from ..ops._row_view import row_view
from ..storage import FormatError, SparseDelta

__all__ = ["kept_positions", "KeptIndex", "INDEX_MODES"]

INDEX_MODES = ("auto", "cache", "regenerate")
_CHUNK = 1 << 24  # seeded: mask elements regenerated per step (16 MiB of bool)
_BYTE_BITS: dict[torch.device, torch.Tensor] = {}


def _byte_bits(device: torch.device) -> torch.Tensor:
    """[256, 8] bool: bit j (little bit order, as numpy.packbits(bitorder="little")) of byte b."""
    table = _BYTE_BITS.get(device)
    if table is None:
        b = torch.arange(256, dtype=torch.int32)
        table = ((b[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).bool().to(device)
        _BYTE_BITS[device] = table
    return table


def _name(sd: SparseDelta) -> str:
    return repr(sd.name) if sd.name is not None else "the delta"


def _seeded(sd: SparseDelta) -> torch.Tensor:
    m = sd.meta
    n, dev = sd.numel, sd.device
    parts = []
    for start in range(0, n, _CHUNK):
        size = min(_CHUNK, n - start)
        mask = keep_mask((size,), m["p"], seed=m["seed"], offset=m["offset"] + start, device=dev,
                         mask=m.get("mask", "philox"))
        idx = mask.nonzero().view(-1)
        if start:
            idx += start
        parts.append(idx)
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def _bitmask(sd: SparseDelta) -> torch.Tensor:
    rows, cols = row_view(sd.shape)
    bm = sd.payload["bitmask"]
    rb = bm.shape[1] if bm.dim() == 2 else 0
    flat = bm.reshape(-1)
    nzb = flat.nonzero().view(-1)
    bits = _byte_bits(flat.device)[flat.index_select(0, nzb).long()]  # [nonzero bytes, 8]
    which, bit = bits.nonzero().unbind(1)
    byte = nzb.index_select(0, which)
    row = torch.div(byte, rb, rounding_mode="floor") if rb else byte
    col = (byte - row * rb) * 8 + bit
    if col.numel() and int(col.max()) >= cols:
        raise FormatError(f"{_name(sd)} (bitmask): a padding bit past column {cols} is set")
    return row * cols + col


def _csr(sd: SparseDelta) -> torch.Tensor:
    rows, cols = row_view(sd.shape)
    crow, col = sd.payload["crow"], sd.payload["col"]
    counts = crow.diff()
    if (crow.numel() != rows + 1 or int(crow[0]) != 0 or int(crow[-1]) != col.numel()
            or (counts.numel() and int(counts.min()) < 0)):
        raise FormatError(f"{_name(sd)} (csr): crow must run from 0 to the number of values, never decreasing")
    row = torch.repeat_interleave(torch.arange(rows, device=crow.device), counts, output_size=col.numel())
    c = col.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= cols):
        raise FormatError(f"{_name(sd)} (csr): a column index is outside [0, {cols})")
    return row * cols + c


def kept_positions(sd: SparseDelta) -> torch.Tensor:
    """int64 [kept]: the flat position of each stored value of `sd`, ascending, on its device."""
    if not isinstance(sd, SparseDelta):
        raise TypeError(f"sd must be a SparseDelta, got {type(sd).__name__}")
    if sd.numel == 0:
        pos = torch.zeros(0, dtype=torch.int64, device=sd.device)
    elif sd.format == "seeded":
        pos = _seeded(sd)
    elif sd.format == "bitmask":
        pos = _bitmask(sd)
    else:
        pos = _csr(sd)
    _check(sd, pos)
    return pos


def _check(sd: SparseDelta, pos: torch.Tensor) -> None:
    if pos.numel() != sd.kept:
        raise FormatError(f"{_name(sd)} ({sd.format}): its mask keeps {pos.numel()} entries but "
                          f"{sd.kept} values are stored")
    if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
        raise FormatError(f"{_name(sd)} ({sd.format}): kept positions are not strictly increasing "
                          "(duplicate or unsorted column indices)")
    if pos.numel() and (int(pos[0]) < 0 or int(pos[-1]) >= sd.numel):
        raise FormatError(f"{_name(sd)} ({sd.format}): a kept position is outside the tensor")


class KeptIndex:
    """How the bank gets a delta tensor's kept positions at each activate (see module doc)."""

    __slots__ = ("sd", "mode", "_first", "_gaps", "_pos")

    def __init__(self, sd: SparseDelta, mode: str = "auto"):
        if mode not in INDEX_MODES:
            raise ValueError(f"index must be one of {INDEX_MODES}, got {mode!r}")
        if mode == "auto":
            mode = "cache"
        self.sd, self.mode = sd, mode
        self._first, self._gaps, self._pos = 0, None, None
        pos = kept_positions(sd)  # validates the delta whatever the mode
        if mode == "cache":
            self._store(pos)
            if sd.format != "seeded":
                self.sd = None  # the positions are all the bank needs of its bits / indices

    @property
    def payload_needed(self) -> bool:
        """False when positions() never reads the delta's payload again (a cached bitmask or csr):
        the bank then keeps only its values, not its bits (1 per parameter: 6.25% of a bf16 base)
        or column indices."""
        return self.sd is not None

    def _store(self, pos: torch.Tensor) -> None:
        if pos.numel() == 0:
            self._pos = pos
            return
        gaps = pos.diff()
        if gaps.numel() == 0 or int(gaps.max()) < (1 << 16):
            self._first = int(pos[0])
            self._gaps = gaps.to(torch.uint16)
        else:
            self._pos = pos.to(torch.int32) if self.sd.numel < (1 << 31) else pos

    @property
    def cheap(self) -> bool:
        """True when positions() is O(kept) (the bank then does not keep them while active)."""
        return self.mode != "regenerate" or self.sd.format == "csr"

    def positions(self) -> torch.Tensor:
        """int64 [kept], ascending."""
        if self.mode == "regenerate":
            return kept_positions(self.sd)
        if self._pos is not None:
            return self._pos.to(torch.int64)
        out = torch.empty(self._gaps.numel() + 1, dtype=torch.int64, device=self._gaps.device)
        out[0] = self._first
        torch.cumsum(self._gaps, 0, dtype=torch.int64, out=out[1:])
        out[1:] += self._first
        return out

    @property
    def nbytes(self) -> int:
        """Bytes this index stores beside the delta's own payload."""
        t = self._gaps if self._gaps is not None else self._pos
        return 0 if t is None else t.numel() * t.element_size()
