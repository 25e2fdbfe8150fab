"""darex_ext.io.safetensors: the one header encoder / parser and positional writer, checked
against the safetensors package itself."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from darex_ext.io.safetensors import (DTYPE_CODES, dtype_code, encode_header, nbytes, pwrite_all, read_header,
                                      tensor_bytes)


def _write(path, tensors: dict[str, torch.Tensor], metadata=None):
    head, offsets = encode_header([(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], metadata)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        pwrite_all(fd, head, 0)
        for k, t in tensors.items():
            assert pwrite_all(fd, tensor_bytes(t), len(head) + offsets[k][0]) == offsets[k][1] - offsets[k][0]
    finally:
        os.close(fd)
    return head, offsets


def test_encoded_files_read_back_with_safetensors(tmp_path):
    tensors = {"w": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "i": torch.arange(4), "e": torch.empty(0, 2),
               "h": torch.randn(2, 2).half(), "u": torch.tensor([1, 2, 255], dtype=torch.uint8), "ü": torch.ones(1)}
    path = str(tmp_path / "x.safetensors")
    head, _ = _write(path, tensors, {"format": "pt", "z": "1"})
    assert (len(head) - 8) % 8 == 0  # the data section starts 8-byte aligned
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "z": "1"}
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t)
    infos, meta = read_header(path)
    assert meta == {"format": "pt", "z": "1"}
    assert list(infos) == list(tensors)  # data order
    for k, t in tensors.items():
        assert infos[k].dtype == t.dtype and infos[k].shape == tuple(t.shape) and infos[k].nbytes == nbytes(t.dtype, t.shape)


def test_read_header_of_a_safetensors_written_file(tmp_path):
    path = str(tmp_path / "y.safetensors")
    save_file({"a": torch.randn(4, 4), "b": torch.zeros(3, dtype=torch.int32)}, path, metadata={"k": "v"})
    infos, meta = read_header(path)
    assert meta == {"k": "v"} and infos["a"].shape == (4, 4) and infos["b"].dtype == torch.int32


def test_header_without_metadata_and_bytes_depend_only_on_arguments():
    entries = [("a", torch.float32, (2, 3)), ("b", torch.bfloat16, (5,))]
    h1, o1 = encode_header(entries)
    h2, o2 = encode_header(entries, {})
    assert h1 == h2 and o1 == o2 == {"a": (0, 24), "b": (24, 34)}
    assert b"__metadata__" not in h1


def test_bad_arguments():
    with pytest.raises(TypeError, match="cannot be stored"):
        dtype_code(torch.complex64)
    with pytest.raises(ValueError, match="twice"):
        encode_header([("a", torch.float32, (1,)), ("a", torch.float32, (1,))])
    assert all(dtype_code(d) == c for c, d in DTYPE_CODES.items())


@pytest.mark.parametrize("blob", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{bad", b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
                                  b"\xff" * 8])
def test_read_header_rejects_malformed_files(tmp_path, blob):
    path = str(tmp_path / "bad.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_header(path)


def test_read_header_rejects_offsets_beyond_the_file(tmp_path):
    path = str(tmp_path / "short.safetensors")
    head, _ = encode_header([("a", torch.float32, (100,))])
    with open(path, "wb") as f:
        f.write(head + b"\0" * 10)  # 400 bytes promised, 10 present
    with pytest.raises(ValueError, match="inconsistent offsets"):
        read_header(path)


@pytest.mark.parametrize("meta", ['[["a","b"]]', '{"a":1}', '"x"'])
def test_read_header_rejects_metadata_that_is_not_str_to_str(tmp_path, meta):
    raw = ('{"__metadata__":' + meta + ',"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}').encode()
    path = str(tmp_path / "m.safetensors")
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(ValueError, match="__metadata__"):
        read_header(path)
