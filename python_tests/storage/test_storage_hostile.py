"""Hostile files: truncated, bit-flipped, and edited headers, metadata, offsets and indices.
Each mutated file must load and decode correctly or raise FormatError: never another exception,
never a crash, never a write outside the destination."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darex_ext.storage import FormatError, load, save

from storage_samples import sample_deltas

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _valid_file_bytes(tmp_path_factory) -> bytes:
    deltas = sample_deltas()
    path = tmp_path_factory.mktemp("valid") / "valid.safetensors"
    save(path, deltas, metadata={"origin": "test"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return _valid_file_bytes(tmp_path_factory)


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def check_loads_or_format_error(path) -> str:
    """The property: open, read and decode every delta; only FormatError may escape."""
    try:
        with load(path) as f:
            for name in f:
                sd = f[name]
                dense = sd.to_dense()
                assert dense.shape == sd.shape and dense.dtype == sd.dtype
                base = torch.zeros(sd.shape, dtype=sd.dtype)
                sd.add_to_(base)
                assert torch.equal(base, dense) or bool(torch.isnan(dense).any())
        return "loaded"
    except FormatError:
        return "format_error"


def test_valid_file_loads(valid_bytes, tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(valid_bytes)
    with load(path) as f:
        assert len(f) == 8
    check_loads_or_format_error(path)


@SETTINGS
@given(data=st.data())
def test_truncated(valid_bytes, tmp_path, data):
    cut = data.draw(st.integers(0, len(valid_bytes) - 1))
    path = tmp_path / "t.safetensors"
    path.write_bytes(valid_bytes[:cut])
    with pytest.raises(FormatError):
        with load(path) as f:
            for name in f:
                f[name].to_dense()


@SETTINGS
@given(data=st.data())
def test_flipped_bytes(valid_bytes, tmp_path, data):
    buf = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "f.safetensors"
    path.write_bytes(bytes(buf))
    check_loads_or_format_error(path)


@SETTINGS
@given(data=st.data())
def test_flipped_body_bytes(valid_bytes, tmp_path, data):
    # Flips confined to the tensor data: the header stays valid, so the decoders see the damage.
    header, body = _split(valid_bytes)
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path / "b.safetensors"
    path.write_bytes(_join(header, bytes(buf)))
    check_loads_or_format_error(path)


WEIRD = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.sampled_from([2**40, 2**62, 2**64, -2**63, 10**30]),
                  st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=5),
                  st.lists(st.integers(-2, 40), max_size=4))


@SETTINGS
@given(data=st.data())
def test_edited_index_metadata(valid_bytes, tmp_path, data):
    header, body = _split(valid_bytes)
    meta = header["__metadata__"]
    index = json.loads(meta["darex_ext.tensors"])
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(index)))
        field = data.draw(st.sampled_from(["format", "dtype", "shape", "p", "q", "seed", "offset", "method"]))
        if field == "shape":
            value = data.draw(st.one_of(WEIRD, st.lists(st.integers(0, 64), max_size=3)))
        elif field == "format":
            value = data.draw(st.one_of(WEIRD, st.sampled_from(["seeded", "bitmask", "csr"])))
        elif field == "dtype":
            value = data.draw(st.one_of(WEIRD, st.sampled_from(["float32", "bfloat16", "float16", "float64"])))
        elif field == "p":
            value = data.draw(st.one_of(WEIRD, st.floats(0, 1)))
        else:
            value = data.draw(WEIRD)
        index[name][field] = value
    meta["darex_ext.tensors"] = json.dumps(index)
    path = tmp_path / "m.safetensors"
    path.write_bytes(_join(header, body))
    check_loads_or_format_error(path)


@SETTINGS
@given(data=st.data())
def test_edited_header_fields(valid_bytes, tmp_path, data):
    header, body = _split(valid_bytes)
    meta = header["__metadata__"]
    choice = data.draw(st.sampled_from(["version", "tensors_json", "drop_key", "tensor_dtype",
                                        "tensor_shape", "tensor_offsets", "rename", "extra"]))
    keys = sorted(k for k in header if k != "__metadata__")
    key = data.draw(st.sampled_from(keys))
    if choice == "version":
        meta["darex_ext.format_version"] = data.draw(st.sampled_from(["0", "3", "", "1.0", "2.0", "one"]))
    elif choice == "tensors_json":
        text = meta["darex_ext.tensors"]
        pos = data.draw(st.integers(0, len(text) - 1))
        meta["darex_ext.tensors"] = text[:pos] + data.draw(st.text(max_size=3)) + text[pos + 1:]
    elif choice == "drop_key":
        del meta[data.draw(st.sampled_from(sorted(meta)))]
    elif choice == "tensor_dtype":
        header[key]["dtype"] = data.draw(st.sampled_from(["F32", "BF16", "F16", "F64", "U8", "I64", "U16", "U32",
                                                          "I32", "BOOL", "I8"]))
    elif choice == "tensor_shape":
        header[key]["shape"] = data.draw(st.lists(st.integers(0, 50), max_size=3))
    elif choice == "tensor_offsets":
        a, b = header[key]["data_offsets"]
        header[key]["data_offsets"] = [a + data.draw(st.integers(-16, 16)), b + data.draw(st.integers(-16, 16))]
    elif choice == "rename":
        header[key + "x"] = header.pop(key)
    else:
        meta["darex_ext.extra"] = "1"
        header[data.draw(st.sampled_from(keys))]  # noqa: B018 (keep the draw count stable)
    path = tmp_path / "h.safetensors"
    path.write_bytes(_join(header, body))
    check_loads_or_format_error(path)


def _tensor_slices(header: dict) -> dict[str, tuple[str, int, int]]:
    return {k: (v["dtype"], *v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}


@SETTINGS
@given(data=st.data())
def test_edited_offsets_and_indices(valid_bytes, tmp_path, data):
    # Overwrite entries of row_offsets / crow / col / bitmask with chosen integers.
    header, body = _split(valid_bytes)
    slices = {k: v for k, v in _tensor_slices(header).items()
              if k.endswith((".row_offsets", ".crow", ".col", ".bitmask", ".shape"))}
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(slices)))
        dtype, start, end = slices[key]
        fmt, size = {"I64": ("<q", 8), "U8": ("<B", 1), "U16": ("<H", 2), "U32": ("<I", 4)}[dtype]
        count = (end - start) // size
        if count == 0:
            continue
        i = data.draw(st.integers(0, count - 1))
        lo, hi = {"<q": (-(2**63), 2**63 - 1), "<B": (0, 255), "<H": (0, 65535), "<I": (0, 2**32 - 1)}[fmt]
        old = struct.unpack_from(fmt, buf, start + i * size)[0]
        new = data.draw(st.one_of(st.integers(lo, hi), st.integers(max(lo, old - 3), min(hi, old + 3))))
        struct.pack_into(fmt, buf, start + i * size, new)
    path = tmp_path / "i.safetensors"
    path.write_bytes(_join(header, bytes(buf)))
    check_loads_or_format_error(path)


@pytest.mark.parametrize("field,value", [
    ("shape", [2**62, 4]), ("shape", [-1, 3]), ("shape", [2**21, 2**21]), ("shape", "6x21"),
    ("p", 1.0), ("p", -0.1), ("p", 10**400), ("seed", -1), ("seed", 2**64), ("offset", -5),
    ("q", [[1]]), ("format", "rle"), ("dtype", "int8"), ("dtype", ["float32"]),
])
def test_specific_bad_metadata_raises(valid_bytes, tmp_path, field, value):
    header, body = _split(valid_bytes)
    index = json.loads(header["__metadata__"]["darex_ext.tensors"])
    index["float32.seeded"][field] = value
    header["__metadata__"]["darex_ext.tensors"] = json.dumps(index)
    path = tmp_path / "s.safetensors"
    path.write_bytes(_join(header, body))
    with pytest.raises(FormatError, match="float32.seeded|format"):
        with load(path) as f:
            f["float32.seeded"].to_dense()


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(FormatError):
        load(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(FormatError):
        load(path)


def test_plain_safetensors_file_without_darex_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(FormatError, match="format version"):
        load(path)
