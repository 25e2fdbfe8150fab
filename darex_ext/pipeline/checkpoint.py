"""Reading checkpoints tensor by tensor: HF model directories (one file or a sharded index) and
single `.safetensors` files.

Only the JSON headers are parsed up front, so a plan (names, shapes, dtypes, which shard holds
what) costs no tensor reads; tensors are then read one at a time from memory-mapped files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch

from ..io.safetensors import DTYPE_CODES, TensorInfo, read_header

__all__ = ["Checkpoint", "ReadBuffer", "TensorInfo", "open_checkpoint", "DTYPE_CODES", "WEIGHT_FILE", "INDEX_FILE",
           "read_header"]

WEIGHT_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


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
