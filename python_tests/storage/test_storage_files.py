"""darex_ext.storage files: save/load round trips, plain safetensors readers, the
compressed-tensors bitmask layout read back independently, metadata, atomic writes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open

import darex_ext
from darex_ext import storage
from darex_ext.storage import compress, compress_dare, load, save

from conftest import randn

SHAPES = [(), (0,), (1,), (13,), (0, 4), (5, 0), (7, 9), (3, 4, 17), (2, 130)]


def _deltas(dtype, device="cpu"):
    out = {}
    for i, shape in enumerate(SHAPES):
        x = randn(*shape, dtype=dtype, device=device)
        for fmt in ("seeded", "bitmask", "csr"):
            out[f"layer{i}.{fmt}.weight"] = compress_dare(x, 0.8, seed=i + 1, format=fmt)
    return out


def test_round_trip_every_format_and_dtype(tmp_path, dtype):
    deltas = _deltas(dtype)
    path = tmp_path / "d.safetensors"
    save(path, deltas, metadata={"base_model": "x/y", "note": "é"})
    with load(path) as f:
        assert set(f) == set(deltas) and len(f) == len(deltas)
        assert f.metadata == {"base_model": "x/y", "note": "é"}
        for name, sd in deltas.items():
            got = f[name]
            assert got.name == name and got.format == sd.format
            assert got.shape == sd.shape and got.dtype == dtype
            assert got.meta == sd.meta
            assert torch.equal(got.to_dense(), sd.to_dense())


def test_load_subset_and_device(tmp_path, device):
    deltas = _deltas(torch.float32)
    path = tmp_path / "d.safetensors"
    save(path, deltas)
    names = ["layer6.csr.weight", "layer7.seeded.weight"]
    f = load(path, device=device, names=names)
    assert list(f) == names
    assert f[names[0]].device.type == device
    with pytest.raises(KeyError):
        f["layer6.bitmask.weight"]
    with pytest.raises(KeyError):
        load(path, names=["nope"])


def test_plain_safetensors_reads_header_and_tensors(tmp_path):
    x = randn(8, 40, dtype=torch.bfloat16)
    deltas = {"a": compress_dare(x, 0.9, 0.25, seed=3), "b": compress_dare(x, 0.9, seed=3, format="csr")}
    path = tmp_path / "d.safetensors"
    save(path, deltas, metadata={"k": "v"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta["darex_ext.format_version"] == "2"  # "a" is seeded with mask "skip" (spec v2)
        assert meta["darex_ext.version"] == darex_ext.__version__
        assert meta["k"] == "v"
        index = json.loads(meta["darex_ext.tensors"])
        assert index["a"] == {"format": "seeded", "dtype": "bfloat16", "shape": [8, 40], "p": 0.9,
                              "q": 0.25, "seed": 3, "offset": 0, "method": "dare", "mask": "skip"}
        assert index["b"]["format"] == "csr"
        assert sorted(f.keys()) == ["a.values", "b.col", "b.crow", "b.values"]
        assert f.get_tensor("b.col").dtype == torch.uint8  # 40 columns
        assert torch.equal(f.get_tensor("a.values"), deltas["a"].payload["values"])


def _compressed_tensors_reader(tensors: dict, prefix: str) -> torch.Tensor:
    """Independent reader of compressed-tensors' sparse-bitmask layout, from its documentation:
    <p>.shape (int64 dense shape), <p>.compressed (nonzeros, row-major), <p>.bitmask (uint8
    rows x ceil(cols/8), numpy.packbits(mask, axis=-1, bitorder="little")), <p>.row_offsets
    (index of each row's first value). Uses numpy only, none of darex_ext."""
    shape = [int(s) for s in tensors[f"{prefix}.shape"].tolist()]
    rows = shape[0] if len(shape) >= 2 else 1
    cols = int(np.prod(shape)) // rows if rows else int(np.prod(shape[1:]))
    bitmask = tensors[f"{prefix}.bitmask"].numpy()
    values = tensors[f"{prefix}.compressed"].float().numpy()
    offsets = tensors[f"{prefix}.row_offsets"].numpy()
    mask = np.unpackbits(bitmask, axis=-1, count=cols, bitorder="little").astype(bool)
    dense = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):
        n = int(mask[r].sum())
        dense[r, mask[r]] = values[offsets[r]:offsets[r] + n]
    return torch.from_numpy(dense).reshape(shape)


@pytest.mark.parametrize("shape", [(1,), (17,), (9, 33), (64, 64), (3, 5, 7)], ids=str)
def test_bitmask_layout_read_by_independent_reader(tmp_path, shape):
    x = darex_ext.prune_(randn(*shape), 0.7, seed=5)
    path = tmp_path / "bm.safetensors"
    save(path, {"model.layers.0.mlp.weight": compress(x, "bitmask")})
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    prefix = "model.layers.0.mlp.weight"
    assert tensors[f"{prefix}.shape"].dtype == torch.int64
    assert tensors[f"{prefix}.bitmask"].dtype == torch.uint8
    assert tensors[f"{prefix}.row_offsets"].dtype == torch.int64
    assert torch.equal(_compressed_tensors_reader(tensors, prefix), x)
    if len(shape) == 2:  # exactly numpy.packbits of the 2-D mask
        packed = np.packbits((x != 0).numpy(), axis=-1, bitorder="little")
        assert np.array_equal(tensors[f"{prefix}.bitmask"].numpy(), packed)


def test_seeded_file_size_is_values_plus_small_header(tmp_path):
    x = randn(512, 1024, dtype=torch.bfloat16)
    sd = compress_dare(x, 0.99, seed=1)
    path = tmp_path / "s.safetensors"
    save(path, {"model.layers.0.self_attn.q_proj.weight": sd})
    assert os.path.getsize(path) <= 1.01 * sd.nbytes + 4096


def test_save_argument_errors(tmp_path):
    sd = compress_dare(randn(3), 0.5, seed=1)
    with pytest.raises(ValueError, match="reserved"):
        save(tmp_path / "x", {"a": sd}, metadata={"darex_ext.version": "9"})
    with pytest.raises(TypeError, match="metadata"):
        save(tmp_path / "x", {"a": sd}, metadata={"a": 1})
    with pytest.raises(TypeError, match="SparseDelta"):
        save(tmp_path / "x", {"a": torch.zeros(3)})
    with pytest.raises(ValueError, match="names"):
        save(tmp_path / "x", {"": sd})
    assert not (tmp_path / "x").exists()


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_error_mid_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    good = {"a": compress_dare(randn(5, 5), 0.5, seed=1)}
    save(path, good)
    before = path.read_bytes()
    import darex_ext.storage.files as files

    def failing(t):  # fails after the header is written: the temporary holds a partial file
        raise OSError("disk full")

    monkeypatch.setattr(files, "tensor_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"b": compress_dare(randn(7), 0.5, seed=2)})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.safetensors"]  # temporary removed


def test_error_mid_write_leaves_no_file(tmp_path, monkeypatch):
    import darex_ext.storage.files as files

    def failing(t):
        raise RuntimeError("boom")

    monkeypatch.setattr(files, "tensor_bytes", failing)
    with pytest.raises(RuntimeError):
        save(tmp_path / "new.safetensors", {"a": compress_dare(randn(3), 0.5, seed=1)})
    assert os.listdir(tmp_path) == []


def test_killed_writer_leaves_no_partial_file(tmp_path):
    # The child is SIGKILLed while the temporary file is being written: `path` never appears.
    path = tmp_path / "d.safetensors"
    script = textwrap.dedent(f"""
        import os, signal, torch
        import darex_ext.storage.files as files
        from darex_ext.storage import compress_dare, save
        def dying(t):  # the header is written: a partial temporary at the moment of death
            os.kill(os.getpid(), signal.SIGKILL)
        files.tensor_bytes = dying
        save({str(path)!r}, {{"a": compress_dare(torch.randn(100, 100), 0.9, seed=1)}})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not path.exists()
    leftovers = os.listdir(tmp_path)
    assert all(name.startswith(".d.safetensors.tmp-") for name in leftovers)


def test_save_is_byte_identical_across_processes(tmp_path):
    # save() writes the header itself (safetensors' writer orders `__metadata__` by a
    # per-process hash): the same deltas give the same bytes in any process (multi-worker
    # pipelines rely on it).
    script = textwrap.dedent("""
        import sys, torch
        from darex_ext.storage import compress, compress_dare, save
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 48, generator=g)
        save(sys.argv[1], {"a": compress_dare(x, 0.9, seed=3), "b": compress(x * (x.abs() > 1), "csr")},
             metadata={"k%d" % i: str(i) for i in range(20)})
    """)
    outs = []
    for hash_seed in ("1", "2", "3"):
        out = tmp_path / f"d{hash_seed}.safetensors"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_tensors_are_aligned_and_read_by_plain_safetensors(tmp_path):
    # Widest elements first: every tensor starts at a multiple of its element size (int64
    # offsets, float32 / bf16 values, uint16 columns, uint8 bitmasks), so readers may map it.
    from safetensors import safe_open

    from darex_ext.storage.files import _file_tensors

    g = torch.Generator().manual_seed(5)
    deltas = {
        "odd.bf16": compress_dare(torch.randn(3, 7, generator=g).bfloat16(), 0.5, seed=1, format="bitmask"),
        "csr.f32": compress(torch.randn(5, 300, generator=g) * (torch.rand(5, 300, generator=g) > 0.9), "csr"),
        "seeded.f16": compress_dare(torch.randn(11, generator=g).half(), 0.3, seed=2),
        "bm.f64": compress_dare(torch.randn(2, 9, generator=g).double(), 0.6, seed=3, format="bitmask"),
    }
    path = tmp_path / "d.safetensors"
    save(path, deltas, metadata={"z": "1", "a": "2"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    sizes = {"I64": 8, "F64": 8, "F32": 4, "BF16": 2, "F16": 2, "U16": 2, "U8": 1}
    spans = sorted(tuple(v["data_offsets"]) + (k,) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    for (a, b, k), nxt in zip(spans, spans[1:] + [(spans[-1][1],)]):
        assert nxt[0] == b, "tensors must be contiguous"
        assert (8 + n + a) % sizes[header[k]["dtype"]] == 0, k
    with safe_open(str(path), framework="pt") as f:
        for name, sd in deltas.items():
            for key, t in _file_tensors(name, sd).items():
                assert torch.equal(f.get_tensor(key), t), key


def test_load_a_directory_names_it(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory") as exc:
        load(tmp_path)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_load_a_fifo_is_refused_without_opening_it(tmp_path):
    import threading

    from darex_ext.storage import FormatError

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            load(fifo)
        except Exception as exc:  # noqa: BLE001  (checked below)
            outcome.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10.0)
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("load() blocked opening a FIFO")
    (exc,) = outcome
    assert isinstance(exc, FormatError) and "not a regular file" in str(exc) and "FIFO" in str(exc)
    assert str(fifo) in str(exc)


def _raw_file(path, metadata) -> None:
    header = json.dumps({"__metadata__": metadata, "a.values": {"dtype": "F32", "shape": [1],
                                                              "data_offsets": [0, 4]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"\0" * 4)


@pytest.mark.parametrize("metadata", [[1, 2], ["darex_ext.format_version", "1"], "1", 3,
                                      {"darex_ext.format_version": 1}, {"darex_ext.format_version": ["1"]},
                                      {"darex_ext.format_version": "1", "darex_ext.tensors": {"a": {}}}],
                         ids=["list", "pairs", "string", "number", "int value", "list value", "object value"])
def test_load_malformed_metadata_is_a_format_error_naming_the_file(tmp_path, metadata):
    from darex_ext.storage import FormatError

    path = tmp_path / "bad.safetensors"
    _raw_file(path, metadata)
    with pytest.raises(FormatError) as exc:
        load(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("raw_meta", [[("a", "b")], {"darex_ext.format_version": 1}, {1: "x"}],
                         ids=["list", "int value", "int key"])
def test_load_metadata_check_does_not_rely_on_the_safetensors_release(tmp_path, monkeypatch, raw_meta):
    # Some safetensors releases hand back what the header holds; the loader checks it itself.
    import safetensors

    from darex_ext.storage import FormatError

    path = tmp_path / "ok.safetensors"
    save(path, {"a": compress_dare(randn(3), 0.5, seed=1)})
    real_open = safetensors.safe_open

    class Handle:
        def __init__(self, *args, **kwargs):
            self._inner = real_open(*args, **kwargs)

        def metadata(self):
            return raw_meta

        def keys(self):
            return self._inner.keys()

    monkeypatch.setattr(safetensors, "safe_open", Handle)
    with pytest.raises(FormatError, match="__metadata__") as exc:
        load(path)
    assert str(path) in str(exc.value)


def test_load_bad_index_names_the_file(tmp_path):
    from darex_ext.storage import FormatError

    path = tmp_path / "noversion.safetensors"
    _raw_file(path, {"k": "v"})
    with pytest.raises(FormatError, match="format version") as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_per_row_q_is_a_tensor_not_header_text(tmp_path):
    # Per-row q (e.g. analytic q per row) goes to the float64 tensor "<name>.q": the JSON header
    # stays small however many rows there are, and the values come back exactly.
    import json

    from darex_ext.io.safetensors import read_header

    delta = torch.randn(4096, 8)
    q = torch.rand(4096) * 0.5 + 0.05
    sd = storage.compress_dare(delta, 0.9, q, seed=3)
    path = tmp_path / "d.safetensors"
    storage.save(path, {"w": sd})
    header, meta = read_header(str(path))
    index = json.loads(meta["darex_ext.tensors"])
    assert index["w"]["q"] == "tensor" and len(meta["darex_ext.tensors"]) < 300
    assert "w.q" in header
    back = storage.load(path)["w"]
    assert back.meta["q"] == [float(v) for v in q.double()]
    assert torch.equal(back.to_dense(), sd.to_dense())


def test_files_with_per_row_q_as_json_still_load(tmp_path):
    # The layout darex_ext wrote before per-row q became a tensor: a JSON list in the index.
    import json

    from safetensors.torch import save_file

    delta = torch.randn(6, 5)
    q = [0.2, 0.3, 0.25, 0.5, 0.4, 0.1]
    sd = storage.compress_dare(delta, 0.5, torch.tensor(q), seed=9, mask="philox")  # files of that era: spec v1
    entry = {"format": "seeded", "dtype": "float32", "shape": [6, 5], "method": "darex-q", "p": 0.5, "q": q,
             "seed": 9, "offset": 0}
    path = tmp_path / "old.safetensors"
    save_file({"w.values": sd.payload["values"]}, str(path),
              metadata={"darex_ext.format_version": "1", "darex_ext.tensors": json.dumps({"w": entry})})
    back = storage.load(path)["w"]
    assert back.meta["q"] == q and torch.equal(back.to_dense(), sd.to_dense())


@pytest.mark.parametrize("bad", [lambda q: q.float(), lambda q: q[:-1], lambda q: q.reshape(2, -1)])
def test_a_bad_per_row_q_tensor_is_a_format_error(tmp_path, bad):
    import json

    from safetensors.torch import save_file

    delta = torch.randn(6, 5)
    q = torch.full((6,), 0.3, dtype=torch.float64)
    sd = storage.compress_dare(delta, 0.5, q, seed=9)
    entry = {"format": "seeded", "dtype": "float32", "shape": [6, 5], "method": "darex-q", "p": 0.5, "q": "tensor",
             "seed": 9, "offset": 0}
    path = tmp_path / "bad.safetensors"
    save_file({"w.values": sd.payload["values"], "w.q": bad(q).contiguous()}, str(path),
              metadata={"darex_ext.format_version": "1", "darex_ext.tensors": json.dumps({"w": entry})})
    with pytest.raises(storage.FormatError, match="per-row q"):
        storage.load(path)["w"]


def _format_version(path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["darex_ext.format_version"]


def test_format_version_is_2_only_for_mask_spec_v2(tmp_path):
    # "2" exactly when a seeded delta uses mask "skip": a reader that knows only "1" refuses
    # such a file instead of decoding it with spec v1's mask; every other file stays "1".
    x = randn(8, 40)
    cases = {
        "skip": ({"a": compress_dare(x, 0.99, seed=3)}, "2"),
        "skip_moderate_p": ({"a": compress_dare(x, 0.5, seed=3)}, "2"),
        "philox": ({"a": compress_dare(x, 0.99, seed=3, mask="philox")}, "1"),
        "csr_bitmask": ({"b": compress_dare(x, 0.9, seed=3, format="csr"),
                         "c": compress_dare(x, 0.9, seed=3, format="bitmask")}, "1"),
        "mixed": ({"a": compress_dare(x, 0.99, seed=3, mask="philox"),
                   "b": compress_dare(x, 0.99, seed=4, format="csr"),
                   "d": compress_dare(x, 0.99, seed=5)}, "2"),
    }
    for name, (deltas, version) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save(path, deltas)
        assert _format_version(path) == version, name
        with load(path) as f:
            assert f.format_version == version
            for k, sd in deltas.items():
                assert torch.equal(f[k].to_dense(), sd.to_dense()), (name, k)


def _rewrite_version(path, version: str) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["darex_ext.format_version"] = version
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_reader_accepts_1_and_2_refuses_others(tmp_path):
    from darex_ext.storage import FORMAT_VERSIONS, FormatError

    assert FORMAT_VERSIONS == ("1", "2")
    x = randn(8, 40)
    sd = compress_dare(x, 0.99, seed=3, mask="philox")
    path = tmp_path / "v.safetensors"
    save(path, {"a": sd})
    for version in ("1", "2"):  # a philox delta is the same under either version
        _rewrite_version(path, version)
        assert torch.equal(load(path)["a"].to_dense(), sd.to_dense())
    for version in ("0", "3", "", "1.0", "2.0", "two"):
        _rewrite_version(path, version)
        with pytest.raises(FormatError, match="format version"):
            load(path)


def test_a_version_1_file_cannot_claim_mask_skip(tmp_path):
    # A "1" file decodes with spec v1 in any reader that predates spec v2, so mask "skip" in it
    # is a contradiction: refused, never decoded one way here and another way there.
    from darex_ext.storage import FormatError

    x = randn(8, 40)
    path = tmp_path / "v.safetensors"
    save(path, {"a": compress_dare(x, 0.99, seed=3)})
    assert _format_version(path) == "2"
    _rewrite_version(path, "1")
    with pytest.raises(FormatError, match="needs format version '2'"):
        load(path)["a"]


def test_a_version_1_file_without_mask_decodes_with_philox(tmp_path):
    # Files from before spec v2: no "mask" in the entry means spec v1.
    from safetensors.torch import save_file

    x = randn(8, 40)
    sd = compress_dare(x, 0.99, seed=3, mask="philox")
    entry = {"format": "seeded", "dtype": "float32", "shape": [8, 40], "method": "dare", "p": 0.99, "q": None,
             "seed": 3, "offset": 0}
    path = tmp_path / "old.safetensors"
    save_file({"a.values": sd.payload["values"]}, str(path),
              metadata={"darex_ext.format_version": "1", "darex_ext.tensors": json.dumps({"a": entry})})
    with load(path) as f:
        assert f.format_version == "1"
        assert torch.equal(f["a"].to_dense(), sd.to_dense())
