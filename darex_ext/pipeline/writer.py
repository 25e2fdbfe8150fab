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

from ..io.safetensors import DTYPE_CODES, dtype_code, encode_header, nbytes, pwrite_all, read_header, tensor_bytes
from ..storage.errors import FormatError
from .checkpoint import Checkpoint

__all__ = ["OutEntry", "OutFile", "Layout", "layout_of", "create_file", "FileSlots", "verify_files", "dtype_code",
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
        """The layout recorded in a delta file, checked whole before anything is written: every
        file name a plain `*.safetensors` name listed once, every tensor in exactly one file with
        a known dtype and a non-negative shape, file metadata str -> str."""
        try:
            raw = json.loads(text)
            files = [OutFile(f["file"], [OutEntry(n, DTYPE_CODES[c], tuple(int(s) for s in shape))
                                         for n, c, shape in f["tensors"]], dict(f["metadata"]))
                     for f in raw["files"]]
            layout = cls(files, raw["indexed"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FormatError("malformed layout metadata in the delta file") from None
        layout.check()
        return layout

    def check(self) -> None:
        """FormatError naming the first problem of a layout that would write a corrupt model."""
        if not isinstance(self.indexed, bool):
            raise FormatError(f"malformed layout metadata: indexed must be true or false, got {self.indexed!r}")
        if not self.files or (len(self.files) > 1 and not self.indexed):
            raise FormatError(f"malformed layout metadata: {len(self.files)} files without an index")
        seen_files: set[str] = set()
        seen_names: dict[str, str] = {}
        for f in self.files:
            if not isinstance(f.file, str) or os.path.basename(f.file) != f.file or \
                    not f.file.endswith(".safetensors") or f.file.startswith("."):
                raise FormatError(f"malformed layout metadata: bad file name {f.file!r}")
            if f.file in seen_files:
                raise FormatError(f"malformed layout metadata: file {f.file!r} is listed twice")
            seen_files.add(f.file)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in f.metadata.items()):
                raise FormatError(f"malformed layout metadata: {f.file} metadata must map str to str")
            for e in f.entries:
                if not isinstance(e.name, str) or not e.name or e.name == "__metadata__":
                    raise FormatError(f"malformed layout metadata: bad tensor name {e.name!r} in {f.file}")
                if e.name in seen_names:
                    raise FormatError(f"malformed layout metadata: tensor {e.name!r} is listed twice "
                                      f"({seen_names[e.name]} and {f.file})")
                seen_names[e.name] = f.file
                if any(d < 0 for d in e.shape):
                    raise FormatError(f"malformed layout metadata: {e.name} has shape {e.shape}")

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


def verify_files(directory: str, layout: Layout) -> None:
    """Read back every file of `layout` written in `directory` before it is published: the
    header parses, holds exactly the planned tensors with their dtypes, shapes and offsets, and
    the file is as long as the header says. Any difference is an internal error, never a model."""
    for f in layout.files:
        path = os.path.join(directory, f.file)
        head, offsets = _header(f)
        try:
            infos, _meta = read_header(path)
        except ValueError as exc:
            raise RuntimeError(f"internal error: {f.file} was written unreadable ({exc})") from None
        planned = {e.name: e for e in f.entries}
        if set(infos) != set(planned) or len(infos) != len(f.entries):
            raise RuntimeError(f"internal error: {f.file} holds other tensors than planned")
        for name, info in infos.items():
            e = planned[name]
            if (info.dtype, info.shape, (info.begin, info.end)) != (e.dtype, e.shape, offsets[name]):
                raise RuntimeError(f"internal error: {f.file}: {name} was written as {info.dtype}{info.shape}")
        if os.path.getsize(path) != len(head) + sum(b - a for a, b in offsets.values()):
            raise RuntimeError(f"internal error: {f.file} has {os.path.getsize(path)} bytes, planned "
                               f"{len(head) + sum(b - a for a, b in offsets.values())}")
