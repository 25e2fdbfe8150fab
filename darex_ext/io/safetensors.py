"""The safetensors file format, once: dtype codes, header encoding and parsing, and positional
writes of raw tensor bytes. Used by the delta files (darex_ext.storage.files) and the model
pipeline's readers and writers, so both agree on every byte.

A file is `u64 little-endian header length | JSON header | data`. The header maps each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets inside the data section) and
may hold "__metadata__" (str -> str). The JSON is written compactly, in UTF-8 as the reference
writer does, padded with spaces so the data section starts 8-byte aligned.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["DTYPE_CODES", "dtype_code", "nbytes", "encode_header", "TensorInfo", "read_header",
           "tensor_bytes", "pwrite_all", "MAX_HEADER"]

MAX_HEADER = 100 * 1024 * 1024  # bytes of JSON a reader accepts before calling a file implausible

DTYPE_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
# Codes whose torch dtype only newer torch releases have.
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPE_CODES[_code] = getattr(torch, _name)
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype ("F32", "BF16", ...); TypeError if it has none."""
    try:
        return _CODE_OF[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored in safetensors") from None


def nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this dtype and shape."""
    return dtype.itemsize * math.prod(int(s) for s in shape)


def encode_header(entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
                  metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header bytes (length prefix included) of a file holding `entries` (name, dtype,
    shape) back to back in the given order, and {name: (begin, end)} inside the data section.

    `metadata` is written in its own order and left out when empty. The bytes depend only on
    the arguments.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, dtype, shape in entries:
        if name in offsets or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} appears twice or is reserved")
        n = nbytes(dtype, shape)
        header[name] = {"dtype": dtype_code(dtype), "shape": [int(s) for s in shape], "data_offsets": [pos, pos + n]}
        offsets[name] = (pos, pos + n)
        pos += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw, offsets


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
    """Parse a safetensors header: ({name: TensorInfo} in data order, metadata). Every entry is
    checked against the file's size; anything malformed is a ValueError naming the file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {n} bytes is implausibly large")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: malformed safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: malformed safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: malformed safetensors header (__metadata__ must map str to str)")
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
                end - begin != info.numel * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets {entry['data_offsets']} "
                             f"for {entry['dtype']}{list(shape)}")
        infos.append(info)
    infos.sort(key=lambda t: (t.begin, t.end))
    return {t.name: t for t in infos}, dict(metadata)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (copied to the CPU, without a copy when it is a
    contiguous CPU tensor)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def pwrite_all(fd: int, data, pos: int) -> int:
    """Write all of `data` at file position `pos` (pwrite may write less than asked); returns
    the byte count."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done
