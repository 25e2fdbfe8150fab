"""Reading checkpoints tensor by tensor: HF model directories (one file or a sharded index) and
single `.safetensors` files.

Only the JSON headers are parsed up front, so a plan (names, shapes, dtypes, which shard holds
what) costs no tensor reads; tensors are then read one at a time from memory-mapped files.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["Checkpoint", "ReadBuffer", "TensorInfo", "open_checkpoint", "DTYPE_CODES", "WEIGHT_FILE", "INDEX_FILE"]

WEIGHT_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024

DTYPE_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPE_CODES[_code] = getattr(torch, _name)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, from the header alone."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str          # file name relative to the checkpoint's directory
    begin: int         # byte offsets inside the file's data section
    end: int
    data_start: int = 0  # where the data section begins in the file (8 + header length)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header: ({name: TensorInfo} in data order, metadata)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {n} bytes is implausibly large")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: malformed safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: malformed safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    base = os.path.basename(path)
    data_size = os.path.getsize(path) - 8 - n
    infos = []
    for name, entry in header.items():
        try:
            dtype = DTYPE_CODES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: unsupported or malformed header entry for {name!r}: {entry!r}") from None
        info = TensorInfo(name, dtype, shape, base, begin, end, 8 + n)
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size or \
                end - begin != info.numel * torch.empty((), dtype=dtype).element_size():
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets {entry['data_offsets']} "
                             f"for {entry['dtype']}{list(shape)}")
        infos.append(info)
    infos.sort(key=lambda t: (t.begin, t.end))
    return {t.name: t for t in infos}, dict(metadata)


class ReadBuffer:
    """A grow-only byte buffer that successive reads reuse.

    A fresh tensor-sized allocation is fresh pages from the kernel, one page fault per 4 KiB
    (about a second per GB on the development VM, more than the read itself); reusing one
    buffer per role (base, fine-tuned) pays that once, for the largest tensor.
    """

    def __init__(self) -> None:
        self._data = torch.empty(0, dtype=torch.uint8)

    def take(self, nbytes: int) -> torch.Tensor:
        if self._data.numel() < nbytes:
            self._data = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self._data = torch.empty(nbytes, dtype=torch.uint8)
        return self._data[:nbytes]


class Checkpoint:
    """A model checkpoint opened for streaming reads.

    `path` is an HF model directory (`model.safetensors` or `model.safetensors.index.json`) or a
    single `.safetensors` file. `infos` holds every tensor's TensorInfo in file order (shards in
    index order); `files` the weight files in order; `directory` the folder other files
    (config.json, tokenizer) are copied from, None for a bare file.
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if os.path.isdir(path):
            self.directory: str | None = path
            index = os.path.join(path, INDEX_FILE)
            single = os.path.join(path, WEIGHT_FILE)
            if os.path.isfile(index):
                self.index_file: str | None = INDEX_FILE
                files = self._files_from_index(index)
            elif os.path.isfile(single):
                self.index_file = None
                files = [WEIGHT_FILE]
            else:
                raise FileNotFoundError(
                    f"{path}: no {WEIGHT_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)")
        elif os.path.isfile(path):
            if not path.endswith(".safetensors"):
                raise ValueError(f"{path}: expected a model directory or a .safetensors file")
            self.directory = None
            self.index_file = None
            files = [os.path.basename(path)]
            self._root = os.path.dirname(os.path.abspath(path))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        if self.directory is not None:
            self._root = os.path.abspath(path)
        self.path = path
        self.files: list[str] = files
        self.infos: dict[str, TensorInfo] = {}
        self.file_metadata: dict[str, dict[str, str]] = {}
        for file in files:
            infos, meta = read_header(os.path.join(self._root, file))
            self.file_metadata[file] = meta
            for name, info in infos.items():
                if name in self.infos:
                    raise ValueError(f"{path}: tensor {name!r} appears in both {self.infos[name].file} and {file}")
                self.infos[name] = info
        self._handles: dict[str, object] = {}

    def _files_from_index(self, index: str) -> list[str]:
        with open(index, encoding="utf-8") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{index}: malformed index (no weight_map)") from None
        files: list[str] = []
        for file in weight_map.values():
            if os.path.basename(file) != file or not file.endswith(".safetensors"):
                raise ValueError(f"{index}: unexpected shard name {file!r}")
            if file not in files:
                files.append(file)
        return sorted(files)

    def file_path(self, file: str) -> str:
        return os.path.join(self._root, file)

    def names(self) -> list[str]:
        return list(self.infos)

    def names_in(self, file: str) -> list[str]:
        return [n for n, t in self.infos.items() if t.file == file]

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def get(self, name: str, buffer: ReadBuffer | None = None) -> torch.Tensor:
        """Read one tensor: a writable CPU tensor, fresh or (with `buffer`) a view of its memory.

        Positional reads rather than a memory map: mapped file pages would count toward the
        process's resident memory until the whole file is unmapped, so a memory-mapped reader
        looks (and under a cgroup limit, is) as large as the checkpoint. A tensor read into a
        `buffer` is valid until the next read into the same buffer.
        """
        info = self.infos[name]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        handle = self._handles.get(info.file)
        if handle is None:
            handle = open(self.file_path(info.file), "rb", buffering=0)
            self._handles[info.file] = handle
        raw = buffer.take(info.nbytes) if buffer is not None else torch.empty(info.nbytes, dtype=torch.uint8)
        view, pos, done = memoryview(raw.numpy()), info.data_start + info.begin, 0
        while done < info.nbytes:
            n = os.preadv(handle.fileno(), [view[done:]], pos + done)
            if n <= 0:
                raise ValueError(f"{self.file_path(info.file)}: truncated while reading {name!r}")
            done += n
        return raw.view(info.dtype).reshape(info.shape)

    def side_files(self) -> list[str]:
        """Regular files to copy next to a written model: config, tokenizer, generation config."""
        if self.directory is None:
            return []
        skip = set(self.files) | {INDEX_FILE}
        out = []
        for entry in sorted(os.listdir(self.directory)):
            full = os.path.join(self.directory, entry)
            if entry in skip or entry.startswith(".") or not os.path.isfile(full):
                continue
            if entry.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")):
                continue
            out.append(entry)
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    return Checkpoint(path)
