"""The NaN rule of docs/mask_spec.md ("Numerics"), checked bit for bit on every op that writes
values: a copied value keeps its exact bits (NaN payload and sign, -0.0, subnormals), a computed
NaN is the canonical NaN of its dtype. Inputs mix random data with NaNs of several payloads and
signs (quiet and signaling), -0.0, +-inf, subnormals and the largest finite value; results are
compared as integers, against the reference twins, across the CPU's ISA paths, and CPU vs CUDA.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import darex_ext
from darex_ext import ops as kernels
from darex_ext import reference as ref

from conftest import DTYPES, HAS_CUDA

INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}

CANONICAL = {torch.bfloat16: 0x7FC0, torch.float16: 0x7E00, torch.float32: 0x7FC00000,
             torch.float64: 0x7FF8000000000000}

# Special values as unsigned bit patterns: NaNs (quiet, signaling, both signs, payloads), -0.0,
# +-inf, subnormals (smallest, negative, largest), the largest finite value.
SPECIAL_BITS = {
    torch.bfloat16: [0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF, 0x7FC1, 0x8000, 0x7F80, 0xFF80,
                     0x0001, 0x8001, 0x007F, 0x7F7F],
    torch.float16: [0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0xFFFF, 0x7E01, 0x8000, 0x7C00, 0xFC00,
                    0x0001, 0x8001, 0x03FF, 0x7BFF],
    torch.float32: [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                    0x7FC12345, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x80000001,
                    0x007FFFFF, 0x7F7FFFFF],
    torch.float64: [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFF0000000000001,
                    0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FF8000012345678, 0x8000000000000000,
                    0x7FF0000000000000, 0xFFF0000000000000, 0x0000000000000001, 0x8000000000000001,
                    0x000FFFFFFFFFFFFF, 0x7FEFFFFFFFFFFFFF],
}


def _signed(bits: int, width: int) -> int:
    return bits - (1 << width) if bits >= 1 << (width - 1) else bits


def specials(dtype: torch.dtype, *, nan: bool = True) -> torch.Tensor:
    width = 8 * torch.empty((), dtype=dtype).element_size()
    vals = [_signed(b, width) for b in SPECIAL_BITS[dtype]]
    t = torch.tensor(vals, dtype=INT_OF[dtype]).view(dtype)
    return t if nan else t[~t.isnan()]


def with_specials(*shape, dtype, seed: int, nan: bool = True, density: float = 0.3) -> torch.Tensor:
    """Random data with about `density` of the entries replaced by special values."""
    gen = torch.Generator().manual_seed(seed)  # no global RNG: the ISA test's subprocesses agree
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float64).reshape(-1)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x).to(dtype)  # no zeros, as conftest.randn
    sp = specials(dtype, nan=nan)
    where = torch.rand(x.numel(), generator=gen) < density
    pick = torch.randint(0, sp.numel(), (x.numel(),), generator=gen)
    return torch.where(where, sp[pick], x).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_OF[t.dtype])


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = bits(got.cpu()), bits(want.cpu())
    diff = (g != w).nonzero()
    assert diff.numel() == 0, (f"{diff.shape[0]} element(s) differ, first at {diff[0].tolist()}: "
                               f"got {int(g.reshape(-1)[int(diff[0, 0]) if g.dim() == 1 else 0])} "
                               f"want {int(w.reshape(-1)[int(diff[0, 0]) if w.dim() == 1 else 0])}")


def assert_nans_canonical(t: torch.Tensor) -> None:
    b = bits(t.cpu())[t.cpu().isnan()]
    assert torch.all(b == _signed(CANONICAL[t.dtype], 8 * t.element_size())), b.unique().tolist()


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def fdtype(request):
    return request.param


# ---- the reference's own rule ------------------------------------------------------------

def test_reference_canonical_nan_bits(fdtype):
    assert int(bits(ref.canonical_nan(fdtype))) == _signed(CANONICAL[fdtype], 8 * torch.empty((), dtype=fdtype).element_size())


def test_reference_to_storage_makes_every_nan_canonical(fdtype):
    acc = ref.acc_dtype(fdtype)
    v = with_specials(4097, dtype=acc, seed=1)  # long enough for torch's vectorized conversion
    out = ref.to_storage(v, fdtype)
    assert_nans_canonical(out)
    assert torch.equal(out.isnan(), v.isnan())


def test_bf16_canonical_nan_is_c10s():
    # c10::BFloat16(float NaN) on the host is 0x7FC0 for any NaN: torch's scalar conversion.
    for v in (float("nan"), -float("nan")):
        assert int(bits(torch.tensor(v, dtype=torch.float32).to(torch.bfloat16))) == 0x7FC0


# ---- each op: kernel == reference, bit for bit; copies keep bits; computed NaN canonical --

SHAPES = [(1,), (7,), (1001,), (33, 70)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_prune(shape, p, fdtype):
    x = with_specials(*shape, dtype=fdtype, seed=2)
    want = ref.prune(x, p, 0.3, seed=5, offset=1)
    got = darex_ext.prune_(x.clone(), p, 0.3, seed=5, offset=1)
    assert_same_bits(got, want)
    assert_nans_canonical(got)
    assert torch.equal(got.isnan(), x.isnan() & darex_ext.keep_mask(x, p, seed=5, offset=1))


def test_prune_per_row_q_and_rescale_none(fdtype):
    x = with_specials(33, 70, dtype=fdtype, seed=3)
    q = torch.rand(33, dtype=torch.float64) * 0.9 + 0.05
    assert_same_bits(darex_ext.prune_(x.clone(), 0.5, q, seed=6), ref.prune(x, 0.5, q, seed=6))
    # rescale="none" still computes x * 1: NaN payloads do not survive a kept entry.
    got = darex_ext.prune_(x.clone(), 0.5, seed=6, rescale="none")
    assert_same_bits(got, ref.prune(x, 0.5, 1.0, seed=6))
    assert_nans_canonical(got)


def test_prune_non_contiguous(fdtype):
    x = with_specials(40, 30, dtype=fdtype, seed=4)
    view = x.clone().t()
    darex_ext.prune_(view, 0.5, seed=7)
    assert_same_bits(view.contiguous(), ref.prune(x.t().contiguous(), 0.5, seed=7))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.99])
def test_dare(shape, p, fdtype):
    ft = with_specials(*shape, dtype=fdtype, seed=5)
    base = with_specials(*shape, dtype=fdtype, seed=6)
    want = ref.dare(ft, base, p, 0.4, seed=8, offset=3)
    got = darex_ext.dare(ft, base, p, 0.4, seed=8, offset=3)
    assert_same_bits(got, want)
    mask = darex_ext.keep_mask(ft, p, seed=8, offset=3)
    assert torch.equal(bits(got)[~mask], bits(base)[~mask])  # dropped: base's bits, NaN or not
    assert_nans_canonical(got[mask])


def test_dare_out_aliasing_base(fdtype):
    ft = with_specials(1001, dtype=fdtype, seed=7)
    base = with_specials(1001, dtype=fdtype, seed=8)
    want = ref.dare(ft, base, 0.5, seed=9)
    out = base.clone()
    darex_ext.dare(ft, out, 0.5, seed=9, out=out)
    assert_same_bits(out, want)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("shape", [(9, 130), (64, 5)], ids=str)
def test_structural(shape, dim, fdtype):
    x = with_specials(*shape, dtype=fdtype, seed=9)
    want = ref.structural_prune(x, 0.5, dim, 0.7, seed=10)
    got = darex_ext.structural_prune_(x.clone(), 0.5, dim=dim, q=0.7, seed=10)
    assert_same_bits(got, want)
    assert_nans_canonical(got)


@pytest.mark.parametrize("q", [None, 0.3])
@pytest.mark.parametrize("per_row", [False, True])
def test_magnitude(q, per_row, fdtype):
    # NaN scores are refused, so: -0.0, +-inf, subnormals and the largest value (scaled to inf).
    x = with_specials(33, 70, dtype=fdtype, seed=11, nan=False)
    scope = "row" if per_row else "tensor"
    want = ref.magnitude_prune(x, 0.6, scope, q)
    got = darex_ext.magnitude_prune_(x.clone(), 0.6, scope=scope, q=q)
    assert_same_bits(got, want)


def test_magnitude_refuses_nan(fdtype):
    x = with_specials(100, dtype=fdtype, seed=12)
    with pytest.raises(ValueError, match="NaN"):
        darex_ext.magnitude_prune_(x, 0.5)


@pytest.mark.parametrize("q", [None, 0.3])
def test_wanda(q, fdtype):
    x = with_specials(33, 70, dtype=fdtype, seed=13, nan=False)
    act = torch.rand(70, dtype=ref.acc_dtype(fdtype)) + 0.1
    assert_same_bits(darex_ext.wanda_prune_(x.clone(), act, 0.6, q=q), ref.wanda_prune(x, act, 0.6, q))


@pytest.mark.parametrize("n", [1, 7, 1001, 70001])
def test_seeded(n, fdtype):
    x = with_specials(n, dtype=fdtype, seed=14)
    values = kernels.seeded_pack(x, 0.5, 0.3, seed=15, offset=2)
    assert_same_bits(values, ref.seeded_pack(x, 0.5, 0.3, seed=15, offset=2))
    assert_nans_canonical(values)
    out = with_specials(n, dtype=fdtype, seed=16)
    stored = with_specials(values.numel(), dtype=fdtype, seed=17)  # NaN payloads in stored values
    decoded = kernels.seeded_scatter_(out.clone(), stored, 0.5, seed=15, offset=2)
    assert_same_bits(decoded, ref.seeded_scatter(out, stored, 0.5, seed=15, offset=2))
    for alpha in (1.0, -0.7):
        added = kernels.seeded_scatter_(out.clone(), stored, 0.5, seed=15, offset=2, alpha=alpha,
                                          accumulate=True)
        assert_same_bits(added, ref.seeded_scatter(out, stored, 0.5, seed=15, offset=2, alpha=alpha,
                                                   accumulate=True))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (70, 513), (3, 70001)], ids=str)
def test_bitmask(shape, fdtype):
    x = with_specials(*shape, dtype=fdtype, seed=18)
    x = torch.where(torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5, torch.zeros_like(x), x)
    values, bitmask, row_offsets = kernels.bitmask_pack(x)
    want_values, want_bitmask, want_offsets = ref.bitmask_pack(x)
    assert_same_bits(values, want_values)  # packing copies: NaN payloads kept
    assert torch.equal(bitmask, want_bitmask) and torch.equal(row_offsets, want_offsets)
    out = with_specials(*shape, dtype=fdtype, seed=19)
    stored = with_specials(values.numel(), dtype=fdtype, seed=20)
    assert_same_bits(kernels.bitmask_scatter_(out.clone(), stored, bitmask, row_offsets),
                     ref.bitmask_scatter(out, stored, bitmask))
    for alpha in (1.0, 0.3):
        assert_same_bits(
            kernels.bitmask_scatter_(out.clone(), stored, bitmask, row_offsets, alpha=alpha, accumulate=True),
            ref.bitmask_scatter(out, stored, bitmask, alpha=alpha, accumulate=True))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (70, 513)], ids=str)
def test_csr(shape, fdtype):
    x = with_specials(*shape, dtype=fdtype, seed=21)
    x = torch.where(torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5, torch.zeros_like(x), x)
    crow, col, values = kernels.csr_pack(x)
    want_crow, want_col, want_values = ref.csr_pack(x)
    assert_same_bits(values, want_values)
    assert torch.equal(crow, want_crow) and torch.equal(col, want_col)
    out = with_specials(*shape, dtype=fdtype, seed=22)
    stored = with_specials(values.numel(), dtype=fdtype, seed=23)
    assert_same_bits(kernels.csr_scatter_(out.clone(), crow, col, stored),
                     ref.csr_scatter(out, crow, col, stored))
    assert_same_bits(kernels.csr_scatter_(out.clone(), crow, col, stored, alpha=0.3, accumulate=True),
                     ref.csr_scatter(out, crow, col, stored, alpha=0.3, accumulate=True))


# ---- every CPU ISA path gives the same bits --------------------------------------------------

_ISA_SCRIPT = r"""
import hashlib, sys, torch, darex_ext
sys.path[:0] = [{tests!r}, {here!r}]
from test_nan_bits import run_all_ops
print(hashlib.sha256(b"".join(run_all_ops())).hexdigest())
"""


def run_all_ops() -> list[bytes]:
    """Every value-writing op on special-laden data, as raw bytes (shared with the ISA test)."""
    out = []
    for dtype in DTYPES:
        x = with_specials(3, 70001, dtype=dtype, seed=30)
        b = with_specials(3, 70001, dtype=dtype, seed=31)
        sparse = torch.where(x.abs() < 0.5, torch.zeros_like(x), x)
        results = [darex_ext.prune_(x.clone(), 0.5, 0.3, seed=1),
                   darex_ext.dare(x, b, 0.5, 0.3, seed=2),
                   darex_ext.structural_prune_(x.clone(), 0.5, dim=1, q=0.3, seed=3)]
        values = kernels.seeded_pack(x, 0.5, 0.3, seed=4)
        results += [values, kernels.seeded_scatter_(b.clone(), values, 0.5, seed=4),
                    kernels.seeded_scatter_(b.clone(), values, 0.5, seed=4, alpha=0.7, accumulate=True)]
        v, bm, ro = kernels.bitmask_pack(sparse)
        results += [v, kernels.bitmask_scatter_(b.clone(), v, bm, ro, alpha=0.7, accumulate=True)]
        crow, col, cv = kernels.csr_pack(sparse)
        results += [cv, kernels.csr_scatter_(b.clone(), crow, col, cv, alpha=0.7, accumulate=True)]
        finite = with_specials(3, 70001, dtype=dtype, seed=32, nan=False)
        results += [darex_ext.magnitude_prune_(finite.clone(), 0.5, q=0.3)]
        out += [bits(r).numpy().tobytes() for r in results]
    return out


def test_isa_paths_give_the_same_bits():
    here = os.path.dirname(os.path.abspath(__file__))
    script = _ISA_SCRIPT.format(tests=os.path.dirname(here), here=here)
    expected = hashlib.sha256(b"".join(run_all_ops())).hexdigest()
    for isa in ("", "avx2", "scalar"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DAREX_CPU_ISA=isa)
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == expected, f"DAREX_CPU_ISA={isa!r}"


# ---- CPU == CUDA -------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")


@cuda_only
@pytest.mark.parametrize("offset", [0, 1, 6])
@pytest.mark.parametrize("n", [1, 7, 4099, (1 << 16) + 5])
def test_prune_and_dare_cpu_equals_cuda(n, offset, fdtype):
    x = with_specials(n, dtype=fdtype, seed=40)
    b = with_specials(n, dtype=fdtype, seed=41)
    for p in (0.0, 0.5, 0.99):  # 0.99: most groups of 4 all dropped, the no-load path
        assert_same_bits(darex_ext.prune_(x.cuda(), p, 0.3, seed=1, offset=offset),
                         darex_ext.prune_(x.clone(), p, 0.3, seed=1, offset=offset))
        assert_same_bits(darex_ext.dare(x.cuda(), b.cuda(), p, 0.3, seed=2, offset=offset),
                         darex_ext.dare(x, b, p, 0.3, seed=2, offset=offset))
        # Misaligned views take the element-wise path.
        assert_same_bits(darex_ext.dare(x.cuda()[1:], b.cuda()[1:], p, seed=2, offset=offset),
                         darex_ext.dare(x[1:], b[1:], p, seed=2, offset=offset))


@cuda_only
def test_every_value_op_cpu_equals_cuda(fdtype):
    x = with_specials(37, 129, dtype=fdtype, seed=42)
    b = with_specials(37, 129, dtype=fdtype, seed=43)
    sparse = torch.where(x.abs() < 0.5, torch.zeros_like(x), x)
    finite = with_specials(37, 129, dtype=fdtype, seed=44, nan=False)
    act = torch.rand(129, dtype=ref.acc_dtype(fdtype)) + 0.1

    def ops(dev):
        xs, bs, sp, fi = x.to(dev), b.to(dev), sparse.to(dev), finite.to(dev)
        values = kernels.seeded_pack(xs, 0.5, 0.3, seed=4)
        v, bm, ro = kernels.bitmask_pack(sp)
        crow, col, cv = kernels.csr_pack(sp)
        return [darex_ext.structural_prune_(xs.clone(), 0.5, dim=0, q=0.3, seed=3),
                darex_ext.structural_prune_(xs.clone(), 0.5, dim=1, q=0.3, seed=3),
                values, kernels.seeded_scatter_(bs.clone(), values, 0.5, seed=4),
                kernels.seeded_scatter_(bs.clone(), values, 0.5, seed=4, alpha=0.7, accumulate=True),
                v, kernels.bitmask_scatter_(bs.clone(), v, bm, ro),
                kernels.bitmask_scatter_(bs.clone(), v, bm, ro, alpha=0.7, accumulate=True),
                cv, kernels.csr_scatter_(bs.clone(), crow, col, cv),
                kernels.csr_scatter_(bs.clone(), crow, col, cv, alpha=0.7, accumulate=True),
                darex_ext.magnitude_prune_(fi.clone(), 0.5, q=0.3),
                darex_ext.magnitude_prune_(fi.clone(), 0.5, scope="row"),
                darex_ext.wanda_prune_(fi.clone(), act.to(dev), 0.5, q=0.3)]

    for got, want in zip(ops("cuda"), ops("cpu")):
        assert_same_bits(got, want)
