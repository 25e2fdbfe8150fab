"""Safetensors output whose header is known before any tensor is computed.

A pruned or merged model has exactly the fine-tuned (or base) model's names, shapes and dtypes,
so the header and every tensor's byte range are fixed up front: the file is created at its final
size and each tensor is written at its offset as soon as it is computed (by any worker, in any
order). Memory stays at one tensor; the bytes do not depend on the order or the worker count.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..io.safetensors import DTYPE_CODES, dtype_code, encode_header, nbytes, pwrite_all, tensor_bytes
from .checkpoint import Checkpoint

__all__ = ["OutEntry", "OutFile", "Layout", "layout_of", "create_file", "FileSlots", "dtype_code",
           "tensor_bytes"]

@dataclass(frozen=True)
class OutEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


@dataclass
class OutFile:
    file: str
    entries: list[OutEntry]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Layout:
    """The files of a model to write: which tensors go where, in which order."""

    files: list[OutFile]
    indexed: bool          # write model.safetensors.index.json

    def entries(self) -> dict[str, OutEntry]:
        return {e.name: e for f in self.files for e in f.entries}

    def file_of(self) -> dict[str, str]:
        return {e.name: f.file for f in self.files for e in f.entries}

    def to_json(self) -> str:
        return json.dumps({"indexed": self.indexed, "files": [
            {"file": f.file, "metadata": f.metadata,
             "tensors": [[e.name, dtype_code(e.dtype), list(e.shape)] for e in f.entries]}
            for f in self.files]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        try:
            raw = json.loads(text)
            files = [OutFile(f["file"], [OutEntry(n, DTYPE_CODES[c], tuple(int(s) for s in shape))
                                         for n, c, shape in f["tensors"]], dict(f["metadata"]))
                     for f in raw["files"]]
            layout = cls(files, bool(raw["indexed"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError("malformed layout metadata in the delta file") from None
        for f in layout.files:
            if os.path.basename(f.file) != f.file or not f.file.endswith(".safetensors"):
                raise ValueError(f"malformed layout metadata: bad file name {f.file!r}")
        return layout

    def index_json(self) -> str:
        total = sum(e.nbytes for f in self.files for e in f.entries)
        return json.dumps({"metadata": {"total_size": total}, "weight_map": self.file_of()}, indent=2) + "\n"


def layout_of(ckpt: Checkpoint, names: list[str] | None = None) -> Layout:
    """The layout of `ckpt` (restricted to `names` if given): same shards, same tensor order.
    A single-file checkpoint becomes `model.safetensors`."""
    keep = None if names is None else set(names)
    files = []
    for file in ckpt.files:
        entries = [OutEntry(n, ckpt.infos[n].dtype, ckpt.infos[n].shape) for n in ckpt.names_in(file)
                   if keep is None or n in keep]
        meta = dict(ckpt.file_metadata.get(file, {}))
        meta.setdefault("format", "pt")
        out_name = file if ckpt.index_file is not None else "model.safetensors"
        files.append(OutFile(out_name, entries, meta))
    return Layout(files, ckpt.index_file is not None)


def _header(f: OutFile) -> tuple[bytes, dict[str, tuple[int, int]]]:
    return encode_header([(e.name, e.dtype, e.shape) for e in f.entries], f.metadata)


def create_file(path: str, f: OutFile) -> None:
    """Write the header and size the file; tensor bytes are filled in by FileSlots.write."""
    head, offsets = _header(f)
    total = len(head) + sum(b - a for a, b in offsets.values())
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(total)


class FileSlots:
    """Open output files for positional writes (any process, any order)."""

    def __init__(self, directory: str, layout: Layout):
        self._fds: dict[str, int] = {}
        self._slot: dict[str, tuple[str, int, OutEntry]] = {}
        for f in layout.files:
            head, offsets = _header(f)
            for e in f.entries:
                self._slot[e.name] = (f.file, len(head) + offsets[e.name][0], e)
        self._dir = directory

    def write(self, name: str, t: torch.Tensor) -> None:
        file, pos, entry = self._slot[name]
        if tuple(t.shape) != entry.shape or t.dtype != entry.dtype:
            raise RuntimeError(f"internal error: {name} computed as {t.dtype}{tuple(t.shape)}, "
                               f"planned {entry.dtype}{entry.shape}")
        fd = self._fds.get(file)
        if fd is None:
            fd = os.open(os.path.join(self._dir, file), os.O_WRONLY)
            self._fds[file] = fd
        pwrite_all(fd, tensor_bytes(t), pos)

    def close(self, *, sync: bool = True) -> None:
        for fd in self._fds.values():
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._fds.clear()
