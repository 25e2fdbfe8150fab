"""save / load: sparse deltas in one safetensors file that plain safetensors can open.

Layout: per delta `<name>.<key>` tensors (formats.FILE_KEYS), and the header's __metadata__:

- ``darex_ext.format_version``: "2" when the file holds a seeded delta with "mask": "skip"
  (mask spec v2), else "1"; a loader accepts "1" and "2" and refuses any other, and refuses
  mask "skip" in a "1" file (a reader that knows only "1" would decode it with spec v1),
- ``darex_ext.version``: the writer's darex_ext version,
- ``darex_ext.tensors``: JSON {name: {"format", "dtype", "shape", "p", "q", "seed", "offset",
  "method", "mask"}}; "mask" (seeded only) is "skip" or "philox", absent = "philox"; "q" is null, a number, or "tensor": per-row q stored as the float64 tensor
  ``<name>.q`` (files from darex_ext before 0.x hold per-row q as a JSON list, still read),
- the caller's own string metadata (keys must not start with "darex_ext.").

The header is written here, not by safetensors' writer: its bytes depend only on the content
(safetensors orders `__metadata__` by a per-process hash), and a file can be assembled from
tensors that are not all in memory (`write_file`, used by the model pipeline). Writes are atomic
(temporary sibling, fsync, rename). Loading is lazy: the file is memory
mapped by safetensors and each delta is read and validated when it is looked up.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..io.atomic import atomic_file
from ..io.safetensors import encode_header, tensor_bytes
from .._version import __version__
from ._validate import check_shape, label
from .errors import FormatError
from .formats import DTYPE_NAMES, DTYPES_BY_NAME, FILE_KEYS, FORMAT_VERSIONS, FORMATS
from .sparse_delta import SparseDelta

__all__ = ["save", "load", "DeltaFile", "DeltaRecord", "delta_record", "file_header", "write_file",
           "KEY_VERSION", "KEY_WRITER", "KEY_TENSORS", "file_format_version"]

KEY_VERSION = "darex_ext.format_version"
KEY_WRITER = "darex_ext.version"
KEY_TENSORS = "darex_ext.tensors"
_RESERVED = "darex_ext."


# Every tensor a delta file holds (values, indices, masks, offsets) has one of these dtypes.
_FILE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8,
                torch.uint16, torch.uint32)


@dataclass(frozen=True)
class DeltaRecord:
    """What a file's header needs of one delta: its index entry and its tensors' specs
    ((file key, dtype, shape), in FILE_KEYS order). The bytes can live anywhere (see write_file)."""

    name: str
    entry: dict
    tensors: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]


def _file_tensors(name: str, sd: SparseDelta) -> dict[str, torch.Tensor]:
    pl = {k: v.detach().cpu().contiguous() for k, v in sd.payload.items()}
    if sd.format == "bitmask":
        pl["shape"] = torch.tensor(sd.shape, dtype=torch.int64).reshape(len(sd.shape))
    out = {f"{name}.{k}": pl[k] for k in FILE_KEYS[sd.format]}
    if isinstance(sd.meta.get("q"), list):  # per-row q: a tensor, not JSON text in the header
        out[f"{name}.{_Q_KEY}"] = torch.tensor(sd.meta["q"], dtype=torch.float64)
    return out


_Q_KEY = "q"         # file key of per-row q
_Q_TENSOR = "tensor"  # the index entry's "q" when per-row q is the tensor <name>.q


def _file_keys(entry: dict) -> tuple[str, ...]:
    return FILE_KEYS[entry["format"]] + ((_Q_KEY,) if entry.get("q") == _Q_TENSOR else ())


def delta_record(name: str, sd: SparseDelta) -> tuple[DeltaRecord, dict[str, torch.Tensor]]:
    """The header record of `sd` stored as `name`, and its file tensors {file key: CPU tensor}."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"delta names must be non-empty strings, got {name!r}")
    if not isinstance(sd, SparseDelta):
        raise TypeError(f"deltas[{name!r}] must be a SparseDelta, got {type(sd).__name__}")
    tensors = _file_tensors(name, sd)
    entry = {"format": sd.format, "dtype": DTYPE_NAMES[sd.dtype], "shape": list(sd.shape), **sd.meta}
    if isinstance(entry.get("q"), list):
        entry["q"] = _Q_TENSOR
    specs = tuple((k, t.dtype, tuple(t.shape)) for k, t in tensors.items())
    return DeltaRecord(name, entry, specs), tensors


def _needs_v2(entry: Mapping) -> bool:
    """Whether an index entry needs file format version "2": a seeded delta with mask spec v2."""
    return entry.get("format") == "seeded" and entry.get("mask") == "skip"


def file_format_version(entries: Iterable[Mapping]) -> str:
    """The format version of a file holding these index entries: "2" if any needs it, else "1"
    (files a reader that knows only "1" still decodes correctly stay readable by it)."""
    return "2" if any(_needs_v2(e) for e in entries) else "1"


def _header_metadata(metadata: Mapping[str, str] | None, version: str = "1") -> dict[str, str]:
    header = {KEY_VERSION: version, KEY_WRITER: __version__}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k.startswith(_RESERVED):
            raise ValueError(f"metadata key {k!r} is reserved (prefix {_RESERVED!r})")
        header[k] = v
    return header


def file_header(records: Sequence[DeltaRecord], metadata: Mapping[str, str] | None = None
                ) -> tuple[bytes, list[tuple[str, int]]]:
    """The safetensors header of a delta file, and its tensors as (file key, byte count) in the
    order their bytes follow the header.

    Tensors are laid out widest element first (8-byte, then 4, 2, 1), each class in record order,
    so every tensor starts aligned to its element size, as safetensors' own writer arranges; the
    metadata is sorted. The bytes depend only on the records and metadata, never on the process.
    """
    meta = _header_metadata(metadata, file_format_version(rec.entry for rec in records))
    index: dict[str, dict] = {}
    specs = []
    for rec in records:
        if rec.name in index:
            raise ValueError(f"delta {rec.name!r} appears twice")
        index[rec.name] = rec.entry
        for key, dtype, shape in rec.tensors:
            if dtype not in _FILE_DTYPES:
                raise TypeError(f"{key}: dtype {dtype} cannot be stored")
            specs.append((key, dtype, shape))
    try:
        meta[KEY_TENSORS] = json.dumps(index, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"delta metadata must be JSON-serialisable: {exc}") from exc
    order = sorted(range(len(specs)), key=lambda i: (-specs[i][1].itemsize, i))
    head, offsets = encode_header([specs[i] for i in order], {k: meta[k] for k in sorted(meta)})
    return head, [(specs[i][0], offsets[specs[i][0]][1] - offsets[specs[i][0]][0]) for i in order]


def write_file(path: str | os.PathLike, records: Sequence[DeltaRecord], metadata: Mapping[str, str] | None,
               chunks: Callable[[str], Iterable]) -> None:
    """Write a delta file atomically from header records and a source of bytes: `chunks(key)`
    yields the bytes (buffers) of file tensor `key`, so the tensors need not be in memory."""
    head, layout = file_header(records, metadata)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(head)
            for key, n in layout:
                written = 0
                for chunk in chunks(key):
                    written += out.write(chunk)
                if written != n:
                    raise RuntimeError(f"internal error: {key} has {written} bytes, its header says {n}")


def save(path: str | os.PathLike, deltas: Mapping[str, SparseDelta],
         metadata: Mapping[str, str] | None = None) -> None:
    """Write `deltas` to a safetensors file at `path`, atomically.

    Args:
        path: destination; an existing file is replaced only once the new one is complete.
        deltas: {name: SparseDelta}; names are non-empty strings (tensor `<name>.<key>`).
        metadata: extra string -> string entries for the header (not "darex_ext."-prefixed).
    """
    if not isinstance(deltas, Mapping):
        raise TypeError(f"deltas must be a mapping of name -> SparseDelta, got {type(deltas).__name__}")
    _header_metadata(metadata)  # argument errors before any other work
    records, tensors = [], {}
    for name, sd in deltas.items():
        rec, ts = delta_record(name, sd)
        records.append(rec)
        tensors.update(ts)
    write_file(path, records, metadata, lambda key: (tensor_bytes(tensors[key]),))


def load(path: str | os.PathLike, device=None, names=None) -> DeltaFile:
    """Open a file written by save(): a lazy, read-only {name: SparseDelta} mapping.

    Args:
        path: the safetensors file.
        device: where looked-up deltas are put (default: CPU).
        names: only these deltas (an iterable of names; KeyError for a name not in the file).

    Raises:
        FileNotFoundError / IsADirectoryError: `path` is missing / a directory.
        FormatError: `path` is not a regular file (a FIFO is refused without being opened), or
            not a valid darex_ext sparse delta file (any inconsistency in its header, metadata
            or, on lookup, a delta's tensors). Every message names the path.
    """
    return DeltaFile(path, device=device, names=names)


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
          stat.S_IFSOCK: "socket"}


def _check_regular_file(path: str) -> None:
    """A clear error for a path that is missing or not a regular file, decided by stat alone:
    a FIFO or a device is never opened (opening a FIFO blocks until a writer comes)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a parent is a file
        raise FileNotFoundError(errno.ENOENT, "no such file", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a delta file", path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: not a regular file (a {_KINDS.get(stat.S_IFMT(st.st_mode), 'special file')}), "
                          "cannot be a delta file")


def _parse_index(meta: dict[str, str]) -> dict[str, dict]:
    version = meta.get(KEY_VERSION)
    if version not in FORMAT_VERSIONS:
        raise FormatError(f"unsupported darex_ext format version {version!r:.80} (this reader knows "
                          f"{', '.join(map(repr, FORMAT_VERSIONS))})")
    try:
        index = json.loads(meta.get(KEY_TENSORS, ""))
    except (TypeError, ValueError, RecursionError) as exc:
        raise FormatError(f"metadata {KEY_TENSORS!r} is not valid JSON: {exc}") from None
    if not isinstance(index, dict):
        raise FormatError(f"metadata {KEY_TENSORS!r} must be a JSON object")
    for name, entry in index.items():
        if not isinstance(entry, dict):
            raise FormatError(f"{label(name)}: index entry must be an object, got {entry!r}")
        if not isinstance(entry.get("format"), str) or entry["format"] not in FORMATS:
            raise FormatError(f"{label(name)}: unknown format {entry.get('format')!r}")
        if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES_BY_NAME:
            raise FormatError(f"{label(name)}: unknown dtype {entry.get('dtype')!r}")
        check_shape(entry.get("shape"), name)
        if version == "1" and _needs_v2(entry):
            raise FormatError(f"{label(name)}: mask 'skip' (mask spec v2) needs format version '2', "
                              "the file says '1'")
    return index


class DeltaFile(Mapping):
    """Read-only mapping over the deltas of one file; each lookup reads and validates one
    delta. Use as a context manager (or call close()) to release the memory map early."""

    def __init__(self, path: str | os.PathLike, device=None, names=None):
        from safetensors import safe_open

        self.path = os.fspath(path)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        _check_regular_file(self.path)
        try:
            self._file = safe_open(self.path, framework="pt", device="cpu")
            raw_meta = self._file.metadata() or {}
            keys = set(self._file.keys())
        except Exception as exc:  # safetensors reports a bad header in several exception types
            raise FormatError(f"{self.path}: not a valid safetensors file: {exc}") from None
        # safetensors releases differ in what they let through; the header's __metadata__ must
        # be a str -> str object whatever the reader accepted.
        if not isinstance(raw_meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in raw_meta.items()):
            raise FormatError(f"{self.path}: the header's __metadata__ must map strings to strings, "
                              f"got {raw_meta!r:.80}")
        try:
            self._index = _parse_index(raw_meta)
        except FormatError as exc:
            raise FormatError(f"{self.path}: {exc}") from None
        expected = {f"{n}.{k}" for n, e in self._index.items() for k in _file_keys(e)}
        if keys != expected:
            extra, missing = sorted(keys - expected)[:5], sorted(expected - keys)[:5]
            raise FormatError(f"{self.path}: tensors do not match the index (missing {missing}, unexpected {extra})")
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            unknown = [n for n in names if n not in self._index]
            if unknown:
                raise KeyError(f"not in {self.path}: {unknown}")
            self._names = names
        else:
            self._names = list(self._index)
        self.metadata = {k: v for k, v in raw_meta.items() if not k.startswith(_RESERVED)}
        self.format_version = raw_meta[KEY_VERSION]
        self.writer_version = raw_meta.get(KEY_WRITER)

    def __getitem__(self, name: str) -> SparseDelta:
        if name not in self._names:
            raise KeyError(name)
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        entry = self._index[name]
        fmt, shape = entry["format"], tuple(entry["shape"])
        tensors = {}
        for key in FILE_KEYS[fmt]:
            try:
                tensors[key] = self._file.get_tensor(f"{name}.{key}")
            except Exception as exc:
                raise FormatError(f"{label(name)}: cannot read {key}: {exc}") from None
        if fmt == "bitmask":
            stored = tensors.pop("shape")
            if stored.dtype != torch.int64 or stored.dim() != 1 or stored.tolist() != list(shape):
                raise FormatError(f"{label(name)}: shape tensor {stored.tolist()} ({stored.dtype}) "
                                  f"does not match the index shape {list(shape)}")
        meta = {k: v for k, v in entry.items() if k not in ("format", "dtype", "shape")}
        if entry.get("q") == _Q_TENSOR:
            meta["q"] = self._q_rows(name, shape)
        sd = SparseDelta(fmt, shape, DTYPES_BY_NAME[entry["dtype"]], tensors, meta, name=name)
        return sd.to(self.device)

    def _q_rows(self, name: str, shape: tuple[int, ...]) -> list[float]:
        try:
            q = self._file.get_tensor(f"{name}.{_Q_KEY}")
        except Exception as exc:
            raise FormatError(f"{label(name)}: cannot read q: {exc}") from None
        rows = shape[0] if shape else 1
        if q.dtype != torch.float64 or q.dim() != 1 or q.numel() != rows:
            raise FormatError(f"{label(name)}: per-row q must be float64 of shape [{rows}], "
                              f"got {q.dtype} of shape {list(q.shape)}")
        return q.tolist()  # checked (finite, > 0) with the rest of the metadata

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names

    def close(self) -> None:
        self._file = None

    def __enter__(self) -> DeltaFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeltaFile({self.path!r}, {len(self)} deltas)"
