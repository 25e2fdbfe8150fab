"""darex_ext.storage in memory: every format and dtype round trips, compress_dare equals prune_
bit for bit, add_to_ equals base + to_dense, sizes follow the formulas. The storage ops themselves: python_tests/ops/test_{seeded,bitmask,csr}.py."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.storage import FormatError, SparseDelta, compress, compress_dare, format_nbytes
from darex_ext.reference._storage import add_at

from conftest import randn

SHAPES = [(), (0,), (1,), (7,), (33,), (0, 5), (6, 0), (3, 5), (17, 129), (4, 3, 65), (2, 1, 1, 9), (5, 64)]
FORMATS = ["seeded", "bitmask", "csr"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 0.99])
def test_compress_dare_equals_prune(shape, fmt, p, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    expected = darex_ext.prune_(x.clone(), p, seed=11)
    sd = compress_dare(x, p, seed=11, format=fmt)
    assert sd.format == fmt and sd.shape == tuple(shape) and sd.dtype == dtype
    got = sd.to_dense()
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, expected)
    assert sd.kept == int((expected != 0).sum()) or fmt == "seeded"


@pytest.mark.parametrize("q", [None, 0.3, "rows"])
@pytest.mark.parametrize("shape", [(1,), (9, 31), (3, 4, 17)], ids=str)
def test_compress_dare_q_forms_bit_exact(q, shape, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    if q == "rows":
        q = torch.rand(shape[0], dtype=torch.float64, device=device) * 0.8 + 0.1
    expected = darex_ext.prune_(x.clone(), 0.8, q, seed=3, offset=5)
    sd = compress_dare(x, 0.8, q, seed=3, offset=5)
    assert torch.equal(sd.to_dense(), expected)
    # -0.0 and +0.0 are different bits: the seeded format keeps them apart.
    assert torch.equal(torch.signbit(sd.to_dense()), torch.signbit(expected))


def test_seeded_keeps_negative_zero_bits():
    x = torch.tensor([-0.0, 1.0, -0.0, -2.0] * 50)
    expected = darex_ext.prune_(x.clone(), 0.3, seed=8)
    got = compress_dare(x, 0.3, seed=8).to_dense()
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_seeded_values_are_pruned_kept_entries(dtype):
    x = randn(40, 50, dtype=dtype)
    sd = compress_dare(x, 0.9, 0.2, seed=4)
    assert torch.equal(sd.payload["values"], ref.seeded_pack(x, 0.9, 0.2, seed=4))
    assert sd.kept == ref.keep_count(x.numel(), 0.9, 4)
    assert set(sd.payload) == {"values"}  # nothing but the kept values is stored


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fmt", ["bitmask", "csr", "auto"])
def test_compress_round_trip(shape, fmt, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    x = torch.where(torch.rand(x.shape, device=device) < 0.7, torch.zeros_like(x), x)
    sd = compress(x, fmt, method="magnitude", p=0.7)
    assert sd.format in ("bitmask", "csr")
    assert torch.equal(sd.to_dense(), x)
    assert sd.kept == int((x != 0).sum())
    assert sd.meta["method"] == "magnitude"


def test_negative_zero_is_dropped_by_compress():
    x = torch.tensor([[-0.0, 1.0, 0.0, -3.0]])
    for fmt in ("bitmask", "csr"):
        sd = compress(x, fmt)
        assert sd.kept == 2
        assert torch.equal(sd.to_dense(), torch.tensor([[0.0, 1.0, 0.0, -3.0]]))


def test_auto_picks_smaller():
    sparse = torch.zeros(64, 4096)
    sparse[:, ::512] = 1.0  # density 1/512: CSR is smaller than a bitmask
    dense_ish = torch.randn(64, 4096)
    dense_ish[:, ::2] = 0  # density 1/2: bitmask is smaller
    assert compress(sparse).format == "csr"
    assert compress(dense_ish).format == "bitmask"
    for t in (sparse, dense_ish):
        sizes = {f: compress(t, f).nbytes for f in ("bitmask", "csr")}
        assert compress(t).nbytes == min(sizes.values())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("alpha", [1.0, 0.5, -2.0])
@pytest.mark.parametrize("shape", [(0,), (1,), (13,), (9, 70), (3, 5, 11), (2, 1000)], ids=str)
@pytest.mark.parametrize("p", [0.3, 0.9])  # the CPU scatter adds sparse words per element, dense ones per vector
def test_add_to_matches_reference(fmt, alpha, shape, p, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    sd = compress_dare(x, p, seed=21, format=fmt)
    base = randn(*shape, dtype=dtype, device=device)
    dense = sd.to_dense()
    mask = ref.keep_mask(shape, p, 21, device=device) if fmt == "seeded" else dense != 0
    expected = add_at(base, mask, dense, alpha)
    out = sd.add_to_(base.clone(), alpha)
    assert torch.equal(out, expected)
    if alpha == 1.0:
        assert torch.equal(out, base + dense)


def test_add_to_in_place_and_non_contiguous(device):
    x = randn(20, 30, device=device)
    sd = compress_dare(x, 0.5, seed=2)
    base_t = randn(30, 20, device=device)
    base = base_t.t()  # non-contiguous view
    expected = base + sd.to_dense()
    ret = sd.add_to_(base)
    assert ret is base
    assert torch.equal(base_t.t(), expected)


def test_add_to_other_dtype_rounds_values_first():
    x = randn(10, 10, dtype=torch.float32)
    sd = compress_dare(x, 0.5, seed=1)
    base = randn(10, 10, dtype=torch.bfloat16)
    expected = base + sd.to_dense().to(torch.bfloat16)
    assert torch.equal(sd.add_to_(base.clone()), expected)


def test_add_to_rejects_bad_base():
    sd = compress_dare(randn(4, 5), 0.5, seed=1)
    with pytest.raises(ValueError, match="shape"):
        sd.add_to_(torch.zeros(5, 4))
    with pytest.raises(TypeError, match="base"):
        sd.add_to_(torch.zeros(4, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="alpha"):
        sd.add_to_(torch.zeros(4, 5), float("nan"))


@pytest.mark.parametrize("shape", [(1000,), (64, 4096), (3, 7, 129)], ids=str)
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_sizes_follow_formulas(shape, p, dtype):
    x = randn(*shape, dtype=dtype)
    item = x.element_size()
    rows, cols = (1, x.numel()) if len(shape) == 1 else (shape[0], math.prod(shape[1:]))
    seeded = compress_dare(x, p, seed=7)
    k = seeded.kept
    assert seeded.nbytes == k * item == format_nbytes("seeded", shape, dtype, k)
    assert seeded.density == k / x.numel()
    bm = compress_dare(x, p, seed=7, format="bitmask")
    assert bm.nbytes == k * item + rows * ((cols + 7) // 8) + 8 * rows == format_nbytes("bitmask", shape, dtype, k)
    csr = compress_dare(x, p, seed=7, format="csr")
    colsize = 1 if cols <= 256 else 2 if cols <= 65536 else 4
    assert csr.payload["col"].element_size() == colsize
    assert csr.nbytes == k * (item + colsize) + 8 * (rows + 1) == format_nbytes("csr", shape, dtype, k)


def test_bf16_sizes_per_parameter_at_p099():
    # The target sizes: seeded 0.02 B/param, bitmask ~0.145; CSR with uint16 columns (4096
    # columns) is 0.04 + crow, below the 0.06+ that 32-bit indices would take.
    x = randn(4096, 4096, dtype=torch.bfloat16)
    n = x.numel()
    seeded = compress_dare(x, 0.99, seed=1)
    bm = compress_dare(x, 0.99, seed=1, format="bitmask")
    csr = compress_dare(x, 0.99, seed=1, format="csr")
    assert abs(seeded.nbytes / n - 0.02) < 0.001
    assert abs(bm.nbytes / n - 0.145) < 0.002
    assert 0.04 <= csr.nbytes / n < 0.043


def test_streaming_offsets_compose():
    # Pieces compressed with offsets decode to the pieces of the whole tensor's prune_.
    x = randn(10_000)
    whole = darex_ext.prune_(x.clone(), 0.9, seed=6)
    a = compress_dare(x[:3333], 0.9, seed=6, offset=0)
    b = compress_dare(x[3333:], 0.9, seed=6, offset=3333)
    assert torch.equal(torch.cat([a.to_dense(), b.to_dense()]), whole)


def test_to_device_and_repr(device):
    sd = compress_dare(randn(3, 4), 0.5, seed=1).to(device)
    assert sd.device.type == device
    assert "seeded" in repr(sd) and "kept=" in repr(sd)


# ---- in-memory malformed deltas: FormatError, never a bad write
def _valid(fmt):
    return compress_dare(randn(6, 20), 0.5, seed=1, format=fmt)


def test_malformed_payload_structure():
    sd = _valid("bitmask")
    with pytest.raises(FormatError, match="bitmask"):
        SparseDelta("bitmask", (6, 20), torch.float32, {**sd.payload, "bitmask": sd.payload["bitmask"][:, :2]})
    with pytest.raises(FormatError, match="row_offsets"):
        SparseDelta("bitmask", (6, 20), torch.float32,
                    {**sd.payload, "row_offsets": sd.payload["row_offsets"].to(torch.int32)})
    with pytest.raises(FormatError, match="unknown format"):
        SparseDelta("rle", (6, 20), torch.float32, sd.payload)
    with pytest.raises(FormatError, match="payload"):
        SparseDelta("csr", (6, 20), torch.float32, sd.payload)
    with pytest.raises(FormatError, match="'p'"):
        SparseDelta("seeded", (6, 20), torch.float32, {"values": torch.zeros(60)}, {"seed": 1})


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_content_raises_before_writing(fmt):
    sd = _valid(fmt)
    pl = dict(sd.payload)
    if fmt == "seeded":
        pl["values"] = pl["values"][:-1]
    elif fmt == "bitmask":
        ro = pl["row_offsets"].clone()
        ro[2] += 1
        pl["row_offsets"] = ro
    else:
        col = pl["col"].clone()
        col[0] = 200  # >= 20 columns
        pl["col"] = col
    bad = SparseDelta(fmt, sd.shape, sd.dtype, pl, sd.meta, name="w")
    base = randn(6, 20)
    before = base.clone()
    with pytest.raises(FormatError, match="'w'"):
        bad.add_to_(base)
    assert torch.equal(base, before)
    with pytest.raises(FormatError):
        bad.to_dense()


def test_csr_columns_must_increase_within_a_row():
    x = torch.zeros(2, 5)
    x[0, 1], x[0, 3], x[1, 0] = 1.0, 2.0, 3.0
    sd = compress(x, "csr")
    col = sd.payload["col"].clone()
    col[0], col[1] = col[1].item(), col[0].item()
    bad = SparseDelta("csr", sd.shape, sd.dtype, {**sd.payload, "col": col})
    with pytest.raises(FormatError, match="col"):
        bad.to_dense()


def test_bitmask_padding_bits_must_be_zero():
    x = torch.ones(2, 5)
    sd = compress(x, "bitmask")
    bm = sd.payload["bitmask"].clone()
    bm[0, 0] |= 0x80  # column 7 of a 5-column row
    bad = SparseDelta("bitmask", sd.shape, sd.dtype, {**sd.payload, "bitmask": bm})
    with pytest.raises(FormatError, match="padding"):
        bad.to_dense()


def test_compress_argument_errors():
    with pytest.raises(ValueError, match="format"):
        compress(torch.zeros(3), "rle")
    with pytest.raises(TypeError, match="pruned"):
        compress(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="p"):
        compress_dare(torch.zeros(3), 1.0, seed=0)
    with pytest.raises(TypeError):
        compress_dare(torch.zeros(3), 0.5)  # seed is required


def test_tiny_float64_values_are_not_zero(device):
    x = torch.tensor([[1e-300, 0.0, -5e-320, 2.0]], dtype=torch.float64, device=device)
    for fmt in ("bitmask", "csr"):
        sd = compress(x, fmt)
        assert sd.kept == 3
        assert torch.equal(sd.to_dense(), x)


_ISA_SCRIPT = """
import hashlib, sys, torch
from darex_ext.storage import compress_dare
h = hashlib.sha256()
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for shape in ((1,), (77,), (9, 70), (3, 300)):
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        base = torch.randn(shape, dtype=torch.float64).to(dtype)
        for fmt in ("seeded", "bitmask"):
            for p in (0.0, 0.5, 0.97):
                sd = compress_dare(x, p, seed=3, format=fmt)
                h.update(sd.to_dense().view(torch.uint8).numpy().tobytes())
                h.update(sd.add_to_(base.clone(), 0.3).view(torch.uint8).numpy().tobytes())
                h.update(sd.add_to_(base.clone()).view(torch.uint8).numpy().tobytes())
print(h.hexdigest())
"""


def test_cpu_isa_paths_agree_bit_for_bit():
    # The scatter loops have an AVX-512 and a scalar path (picked at load time): same bytes.
    import os
    import subprocess
    import sys

    digests = []
    for isa in ("", "avx2", "scalar"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DAREX_CPU_ISA=isa)
        proc = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.strip())
    assert len(set(digests)) == 1, digests


@pytest.mark.parametrize("fmt", FORMATS)
def test_many_chunks_add_and_decode_thread_independent(fmt):
    # Several parallel chunks / row groups, rows not aligned to chunks, odd column count; the
    # bytes must not depend on the thread count.
    x = randn(701, 513, dtype=torch.bfloat16)
    base = randn(701, 513, dtype=torch.bfloat16)
    sd = compress_dare(x, 0.9, 0.3, seed=12, format=fmt)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, max(2, old)):
            torch.set_num_threads(threads)
            results.append((sd.to_dense(), sd.add_to_(base.clone(), 0.5)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    expected = darex_ext.prune_(x.clone(), 0.9, 0.3, seed=12)
    assert torch.equal(results[0][0], expected)
    mask = ref.keep_mask(x.shape, 0.9, 12) if fmt == "seeded" else expected != 0
    assert torch.equal(results[0][1], add_at(base, mask, expected, 0.5))


def test_add_to_keeps_dropped_entries_bit_exact():
    # Dropped positions are not touched at all: -0.0 and NaN in base survive there.
    x = randn(3, 100)
    sd = compress_dare(x, 0.9, seed=2)
    mask = ref.keep_mask(x.shape, 0.9, 2)
    base = torch.full((3, 100), -0.0)
    base[0, ::7] = float("nan")
    out = sd.add_to_(base.clone())
    assert torch.equal(out[~mask].view(torch.int32), base[~mask].view(torch.int32))
