"""DeltaBank: many sparse fine-tune deltas next to one loaded base; switch the live model in place.

activate(name), per tensor of the delta:
  1. kept flat positions (positions.KeptIndex: csr from its indices, bitmask / seeded from a
     uint16-gap index built at add(), or regenerated);
  2. one pass of ``ops.positions_add_`` over them: the base's bits there saved (copied, never
     converted: NaN payloads, -0.0 and subnormals survive), then the value added with the rule of
     ``SparseDelta.add_to_`` and so ``darex apply`` (float32 / float64 math, one rounding,
     canonical NaN; docs/mask_spec.md "Numerics"); the scattered cache lines are prefetched.
  A tensor of the delta's dense part (dense.safetensors) is saved whole and copied in.
deactivate() writes every saved value back (a bit copy, ``ops.positions_put_``), in reverse order.

Memory: the deltas in their compact form (plus a 2-byte-per-kept-value index cache for bitmask
and seeded with index="auto"), and for the ACTIVE delta only its saved base values (kept x
itemsize; the whole tensor for a dense-part tensor) and, with index="regenerate", its positions.
No dense temporary per sparse tensor.

Thread safety: every state change holds one re-entrant lock; ``with bank.active(name):`` holds
it for the whole block, so other threads' switches wait. Forward passes running in other threads
during a switch see a half-switched model: keeping them out is the caller's concern.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..ops import positions_add_, positions_put_
from ..storage import FormatError, SparseDelta
from .positions import INDEX_MODES, KeptIndex
from .sources import read_source

__all__ = ["DeltaBank"]

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's storage as integers of the same width, flat (t is contiguous)."""
    return t.detach().view(_BITS[t.element_size()]).view(-1)


@dataclass
class _Entry:
    """One tensor of a stored delta: sparse (values + index, and the SparseDelta while the index
    needs it) or dense (a replacement tensor)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sd: SparseDelta | None = None
    index: KeptIndex | None = None
    dense: torch.Tensor | None = None
    values: torch.Tensor | None = None  # the kept values, in ascending position order

    @property
    def kept(self) -> int:
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        if self.dense is not None:
            return self.dense.numel() * self.dense.element_size()
        held = self.sd.nbytes if self.sd is not None else self.values.numel() * self.values.element_size()
        return held + self.index.nbytes


@dataclass
class _Stored:
    name: str
    entries: list[_Entry]
    origin: str

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass
class _Record:
    """What activate overwrote in one tensor: enough to write it back bit for bit."""

    bits: torch.Tensor           # the parameter, flat (an integer view for a tensor replaced whole)
    saved: torch.Tensor          # its old bits at the kept positions (or all of them)
    entry: _Entry
    pos: torch.Tensor | None = None  # kept positions when they are not cheap to get again

    @property
    def nbytes(self) -> int:
        n = self.saved.numel() * self.saved.element_size()
        return n + (self.pos.numel() * self.pos.element_size() if self.pos is not None else 0)


def _desc(dtype: torch.dtype, shape) -> str:
    return f"{str(dtype).replace('torch.', '')}{list(shape)}"


class DeltaBank:
    """Sparse deltas of several fine-tunes over one loaded model; activate one at a time in place.

    Args:
        model: the loaded base (``nn.Module``, CPU or CUDA); its ``state_dict()`` names are the
            names deltas must use.
        index: how kept positions are found at each activate: "auto" (a uint16-gap index
            built at add(), 2 bytes per kept value; a bitmask's bits and a csr's column indices
            are then dropped), "cache" (the same), "regenerate" (nothing stored: csr from its
            indices, bitmask from its bits, seeded from its regenerated mask, O(numel) per
            activate for the last two).

    The base is whatever the model holds when a delta is activated; deactivate() puts back
    exactly those bits. Do not write to the parameters while a delta is active.
    """

    def __init__(self, model: nn.Module, *, index: str = "auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if index not in INDEX_MODES:
            raise ValueError(f"index must be one of {INDEX_MODES}, got {index!r}")
        self.model = model
        self.index = index
        self._deltas: dict[str, _Stored] = {}
        self._active: str | None = None
        self._records: list[_Record] = []
        self._lock = threading.RLock()

    # ---- construction from checkpoints
    @classmethod
    def from_pretrained(cls, base_dir: str | os.PathLike, deltas: Mapping[str, str | os.PathLike], *,
                        device="cpu", dtype=None, model_cls=None, index: str = "auto",
                        **model_kwargs) -> DeltaBank:
        """Load `base_dir` with transformers and add every delta directory of `deltas`.

        Args:
            base_dir: the base model directory (what ``darex prune`` / ``darex apply`` took as base).
            deltas: {name: delta directory written by ``darex prune --format seeded|bitmask|csr``}.
            device: where the model and the deltas live.
            dtype: the model's dtype (default: as stored, transformers' "auto").
            model_cls: a transformers model class; default: the class in a delta directory's
                config.json ("architectures", the fine-tune's, so a head the base lacks exists),
                else the base's, else AutoModel.
            index: as in DeltaBank.
            model_kwargs: passed to ``model_cls.from_pretrained``.
        """
        if not isinstance(base_dir, (str, os.PathLike)):
            raise TypeError(f"base_dir must be a path, got {type(base_dir).__name__}")
        if not isinstance(deltas, Mapping):
            raise TypeError(f"deltas must be a mapping of name -> delta directory, got {type(deltas).__name__}")
        if not os.path.isdir(base_dir):
            raise FileNotFoundError(f"base_dir: {os.fspath(base_dir)} is not a directory")
        device = torch.device(device)
        model_cls = model_cls or _model_class(os.fspath(base_dir), deltas)
        kwargs = dict(model_kwargs)
        kwargs.setdefault(_dtype_kwarg(), dtype if dtype is not None else "auto")
        model = model_cls.from_pretrained(os.fspath(base_dir), **kwargs)
        model.to(device)
        model.eval()
        bank = cls(model, index=index)
        for name, path in deltas.items():
            bank.add(name, path)
        return bank

    # ---- the deltas
    def add(self, name: str, delta) -> None:
        """Add a delta under `name`, checked against the model before anything is kept.

        `delta`: a delta directory (or its delta.safetensors) written by ``darex prune --format
        seeded|bitmask|csr``, or a mapping {tensor name: SparseDelta, or Tensor for a tensor
        replaced whole}. The deltas move to their parameters' devices. Raises ValueError when a
        tensor name is not in the model, or a shape or dtype differs (all problems listed).
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        with self._lock:
            if name in self._deltas:
                raise ValueError(f"name: a delta named {name!r} is already in the bank (remove() it first)")
        src = read_source(delta)
        targets = self._targets()
        problems = []

        def check(n: str, dtype: torch.dtype, shape, what: str) -> None:
            t = targets.get(n)
            if t is None:
                problems.append(f"{n}: {what} but not in the model")
            elif t.dtype != dtype or tuple(t.shape) != tuple(shape):
                problems.append(f"{n}: {_desc(t.dtype, t.shape)} in the model but {_desc(dtype, shape)} in the delta")
            elif not t.is_contiguous():
                problems.append(f"{n}: the model's tensor is not contiguous")

        for n, sd in src.sparse.items():
            check(n, sd.dtype, sd.shape, "in the delta")
        for n, d in src.dense.items():
            check(n, d.dtype, d.shape, "stored whole in the delta")
        for n, (dtype, shape) in (src.layout or {}).items():
            # A tensor the fine-tune took from the base must be the model's; one the model does
            # not have at all (an old checkpoint's rotary inv_freq, say) is ignored, as loading ignores it.
            if n not in src.sparse and n not in src.dense and n in targets:
                check(n, dtype, shape, "in the fine-tune (taken from the base)")
        storages: dict[tuple, str] = {}
        for n in list(src.sparse) + list(src.dense):
            t = targets.get(n)
            if t is None or t.numel() == 0:
                continue
            key = (t.device, t.data_ptr())
            if key in storages:
                problems.append(f"{n}: shares its storage with {storages[key]} (tied); the delta changes both")
            storages[key] = n
        if problems:
            more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
            raise ValueError(f"delta: {name!r} ({src.origin}) does not match the model: "
                             + "; ".join(problems[:8]) + more)

        entries = []
        for n, sd in src.sparse.items():
            sd = sd.to(targets[n].device)
            try:
                index = KeptIndex(sd, self.index)
            except FormatError as exc:
                raise FormatError(f"delta {name!r}: {exc}") from None
            if index.payload_needed:
                entries.append(_Entry(n, sd.dtype, tuple(sd.shape), sd=sd, index=index, values=sd.values))
            else:  # bitmask / csr with positions cached: their bits or column indices are not kept
                entries.append(_Entry(n, sd.dtype, tuple(sd.shape), index=index, values=sd.values))
        for n, d in src.dense.items():
            d = d.to(targets[n].device, copy=src.origin == "mapping").contiguous()
            entries.append(_Entry(n, d.dtype, tuple(d.shape), dense=d))
        with self._lock:
            if name in self._deltas:
                raise ValueError(f"name: a delta named {name!r} is already in the bank (remove() it first)")
            self._deltas[name] = _Stored(name, entries, src.origin)

    def remove(self, name: str) -> None:
        """Forget a delta (not while it is active)."""
        with self._lock:
            self._get(name)
            if self._active == name:
                raise RuntimeError(f"delta {name!r} is active; deactivate() it before remove()")
            del self._deltas[name]

    @property
    def names(self) -> list[str]:
        return list(self._deltas)

    @property
    def active_name(self) -> str | None:
        """The active delta's name, None when the model holds the base."""
        return self._active

    def __contains__(self, name) -> bool:
        return name in self._deltas

    def __len__(self) -> int:
        return len(self._deltas)

    # ---- switching
    def activate(self, name: str) -> None:
        """Apply delta `name` to the live parameters in place.

        A no-op when `name` is already active; RuntimeError (nothing touched) when another delta
        is active: use switch(). If anything fails half way, the tensors already written are
        restored and the error is raised: the model holds the base.
        """
        with self._lock:
            stored = self._get(name)
            if self._active == name:
                return
            if self._active is not None:
                raise RuntimeError(f"delta {self._active!r} is active; deactivate() it first or use switch({name!r})")
            self._activate(stored, self._check_targets(stored))

    def _activate(self, stored: _Stored, targets: dict[str, torch.Tensor]) -> None:
        records: list[_Record] = []
        try:
            with torch.no_grad():
                for e in stored.entries:
                    records.append(self._apply(e, targets[e.name]))
        except BaseException:
            self._restore(records)
            raise
        self._active, self._records = stored.name, records

    def deactivate(self) -> None:
        """Restore the base bit for bit (no-op when no delta is active)."""
        with self._lock:
            if self._active is None:
                return
            self._restore(self._records)
            self._active, self._records = None, []

    def switch(self, name: str | None) -> None:
        """Make `name` the active delta (None: the base). Checks `name` before touching
        anything; if activating it fails, the model is left holding the base."""
        with self._lock:
            if name is None:
                self.deactivate()
                return
            stored = self._get(name)
            if self._active == name:
                return
            targets = self._check_targets(stored)
            if self._active is None:
                self._activate(stored, targets)
                return
            # Tensor by tensor: put back the old delta's entries of a tensor, then add the new
            # one's, while that tensor is still in cache; the old delta's other tensors last.
            old = {r.entry.name: r for r in self._records}
            self._active, self._records = None, []  # from here on a failure ends at the base
            new: list[_Record] = []
            try:
                with torch.no_grad():
                    for e in stored.entries:
                        r = old.pop(e.name, None)
                        if r is not None:
                            self._restore([r])
                        new.append(self._apply(e, targets[e.name]))
                    rest, old = list(old.values()), {}
                    self._restore(rest)
            except BaseException:
                self._restore(new)
                self._restore(list(old.values()))
                raise
            self._active, self._records = stored.name, new

    @contextlib.contextmanager
    def active(self, name: str | None) -> Iterator[DeltaBank]:
        """``with bank.active(name): ...``: delta `name` is active inside (None: the base), and
        whatever was active before is active again after. The bank's lock is held for the whole
        block, so switches from other threads wait for it."""
        with self._lock:
            previous = self._active
            self.switch(name)
            try:
                yield self
            finally:
                self.switch(previous)

    # ---- memory
    def memory(self) -> dict:
        """Bytes: ``base`` (the model's tensors, shared storage counted once), ``deltas``
        ({name: bytes} as held: payloads, dense parts, index caches), ``deltas_total``,
        ``active`` (saved base values of the active delta), ``total``."""
        with self._lock:
            seen, base = set(), 0
            for t in self._targets().values():
                key = (t.device, t.data_ptr(), t.numel())
                if key not in seen:
                    seen.add(key)
                    base += t.numel() * t.element_size()
            deltas = {n: s.nbytes for n, s in self._deltas.items()}
            active = sum(r.nbytes for r in self._records)
            total_d = sum(deltas.values())
            return {"base": base, "deltas": deltas, "deltas_total": total_d, "active": active,
                    "total": base + total_d + active}

    def __repr__(self) -> str:
        return (f"DeltaBank({type(self.model).__name__}, deltas={self.names}, active={self._active!r}, "
                f"index={self.index!r})")

    # ---- internals
    def _get(self, name) -> _Stored:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        stored = self._deltas.get(name)
        if stored is None:
            raise ValueError(f"name: no delta named {name!r} in the bank (it has {self.names})")
        return stored

    def _targets(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)}

    def _check_targets(self, stored: _Stored) -> dict[str, torch.Tensor]:
        """The model's tensors for `stored`, checked again (the model may have moved or changed
        since add()); ValueError before anything is written."""
        targets = self._targets()
        problems = []
        for e in stored.entries:
            t = targets.get(e.name)
            dev = e.dense.device if e.dense is not None else e.values.device
            if t is None:
                problems.append(f"{e.name}: no longer in the model")
            elif t.dtype != e.dtype or tuple(t.shape) != e.shape or t.device != dev or not t.is_contiguous():
                problems.append(f"{e.name}: the model now has {_desc(t.dtype, t.shape)} on {t.device}"
                                f"{'' if t.is_contiguous() else ' (not contiguous)'}, the delta "
                                f"{_desc(e.dtype, e.shape)} on {dev}")
        if problems:
            raise ValueError(f"name: delta {stored.name!r} no longer matches the model: " + "; ".join(problems[:8]))
        return targets

    @staticmethod
    def _apply(e: _Entry, target: torch.Tensor) -> _Record:
        if e.dense is not None:
            bits = _bits(target)
            rec = _Record(bits, bits.clone(), e)
            bits.copy_(_bits(e.dense))
            return rec
        flat = target.detach().view(-1)
        pos = e.index.positions()
        keep = None
        if not e.index.cheap:
            keep = pos.to(torch.int32) if flat.numel() < (1 << 31) else pos
        # one pass: the old bits at the kept positions saved, the values added (one rounding)
        saved = positions_add_(flat, pos, e.values)
        return _Record(flat, saved, e, keep)

    @staticmethod
    def _restore(records: list[_Record]) -> None:
        with torch.no_grad():
            for r in reversed(records):
                if r.entry.dense is not None:
                    r.bits.copy_(r.saved)
                    continue
                pos = r.pos.to(torch.int64) if r.pos is not None else r.entry.index.positions()
                positions_put_(r.bits, pos, r.saved)
        records.clear()


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _model_class(base_dir: str, deltas: Mapping):
    import json

    import transformers

    from ..pipeline.apply import delta_paths

    configs = []
    for path in deltas.values():
        try:
            _f, _d, side = delta_paths(os.fspath(path))
        except (OSError, ValueError):
            continue  # add() reports it
        if side:
            configs.append(os.path.join(side, "config.json"))
    configs.append(os.path.join(base_dir, "config.json"))
    for cfg in configs:
        try:
            with open(cfg, encoding="utf-8") as fh:
                archs = json.load(fh).get("architectures") or []
        except (OSError, ValueError):
            continue
        for arch in archs:
            cls = getattr(transformers, arch, None)
            if cls is not None:
                return cls
    return transformers.AutoModel
