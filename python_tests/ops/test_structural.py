"""structural_prune_ against the reference (bit for bit), its mask statistics, replay and errors."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import HAS_CUDA, randn
from op_samples import check_samples_against_reference

CASES = [((0,), 0), ((1,), 0), ((7,), 0), ((7,), -1), ((0, 5), 1), ((7, 0), 0), ((3, 5), 0), ((3, 5), 1),
         ((33, 129), 0), ((33, 129), 1), ((4, 3, 65), 0), ((4, 3, 65), 1), ((4, 3, 65), 2),
         ((4, 3, 65), -2), ((1,) * 4, 3), ((2, 1, 3, 5), 2)]


@pytest.mark.parametrize("shape,dim", CASES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_matches_reference(shape, dim, p, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    expected = ref.structural_prune(x, p, dim, seed=42)
    out = darex_ext.structural_prune_(x, p, dim=dim, seed=42)
    assert out is x
    assert torch.equal(x, expected)


@pytest.mark.parametrize("q", [0.05, 0.37, 1.0, 1.7])
@pytest.mark.parametrize("dim", [0, 1])
def test_scalar_q(q, dim, dtype, device):
    x = randn(50, 37, dtype=dtype, device=device)
    expected = ref.structural_prune(x, 0.6, dim, q, seed=7)
    assert torch.equal(darex_ext.structural_prune_(x, 0.6, dim=dim, q=q, seed=7), expected)


_VIEWS = {"transpose": lambda t: t[:, :, 0].t(), "step": lambda t: t[::3, 1::2, 2],
          "permute3d": lambda t: t.permute(2, 0, 1), "offset_slice": lambda t: t[1:, 3:, 1:]}


@pytest.mark.parametrize("view", list(_VIEWS))
def test_non_contiguous(view, dtype, device):
    for dim in range(_VIEWS[view](torch.empty(40, 30, 6)).dim()):
        base = randn(40, 30, 6, dtype=dtype, device=device)
        untouched = base.clone()
        x = _VIEWS[view](base)
        assert not x.is_contiguous()
        expected = ref.structural_prune(x.contiguous(), 0.5, dim, 0.4, seed=dim + 11)
        got = darex_ext.structural_prune_(x, 0.5, dim=dim, q=0.4, seed=dim + 11)
        assert got is x and torch.equal(x, expected)
        # The view writes through to its base and nowhere else.
        outside = torch.ones(base.shape, dtype=torch.bool, device=device)
        _VIEWS[view](outside).fill_(False)
        assert torch.equal(base[outside], untouched[outside])


@pytest.mark.parametrize("shape,dim", [((300, 1001), 1), ((70001, 3), 0), ((5, 40003, 2), 1)], ids=str)
def test_parallel_chunks_start_inside_rows_and_runs(shape, dim):
    # Work is split at fixed element / run counts, not at row starts: each chunk must find its
    # own slice index. Several threads, whatever the machine has.
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        x = randn(*shape, dtype=torch.float16)
        expected = ref.structural_prune(x, 0.5, dim, seed=13)
        assert torch.equal(darex_ext.structural_prune_(x, 0.5, dim=dim, seed=13), expected)
    finally:
        torch.set_num_threads(threads)


def test_slices_follow_the_1d_keep_mask(device):
    # The documented spec: slice j is kept iff keep_mask(n_slices, p, seed)[j]; kept slices are
    # scaled by one float32 rounding of 1/q, dropped ones are exactly zero.
    x = randn(6, 200, 5, device=device)
    y = darex_ext.structural_prune_(x.clone(), 0.5, dim=1, q=0.3, seed=2**63 + 5)
    keep = darex_ext.keep_mask(200, 0.5, seed=2**63 + 5, device=device)
    assert 0 < int(keep.sum()) < 200
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(0.3, dtype=torch.float32)
    assert torch.equal(y[:, keep], x[:, keep] * inv.to(device))
    assert torch.equal(y[:, ~keep], torch.zeros_like(y[:, ~keep]))
    assert not torch.signbit(y[:, ~keep]).any()


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_special_values(dim, dtype, device):
    # inf, nan and -0 in kept slices are scaled like any value; in dropped slices they become +0.
    x = randn(40, 33, dtype=dtype, device=device)
    x[::3, ::4] = float("inf")
    x[1::5, 2::3] = float("nan")
    x[2::7, 1::2] = -0.0
    expected = ref.structural_prune(x, 0.5, dim, 0.3, seed=21)
    got = darex_ext.structural_prune_(x.clone(), 0.5, dim=dim, q=0.3, seed=21)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    # NaN payloads and signs are not specified (torch's own bf16 conversion turns them negative).
    numbers = ~torch.isnan(expected)
    assert torch.equal(torch.signbit(got[numbers]), torch.signbit(expected[numbers]))
    assert torch.isnan(got).any() and torch.isinf(got).any()


def test_p_zero_keeps_everything_unchanged(dtype, device):
    x = randn(9, 11, dtype=dtype, device=device)
    assert torch.equal(darex_ext.structural_prune_(x.clone(), 0.0, dim=1), x)


def _z(count: int, n: int, prob: float) -> float:
    return (count - n * prob) / math.sqrt(n * prob * (1 - prob))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_kept_slice_count_is_binomial(p):
    # Kept slices per seed ~ Binomial(n, 1-p): the mean over seeds (z-test) and the spread
    # (chi-square dispersion of the per-seed counts) both match.
    n, seeds = 500, 300
    x = torch.ones(n, 3)
    counts = []
    for s in range(seeds):
        y = darex_ext.structural_prune_(x.clone(), p, dim=0, q=1.0, seed=1000 + s)
        rows_kept = (y != 0).all(dim=1)
        assert torch.equal(rows_kept, (y != 0).any(dim=1))  # a slice is kept or dropped as a whole
        counts.append(int(rows_kept.sum()))
    keep = 1 - p
    assert abs(_z(sum(counts), n * seeds, keep)) < 5.0
    var = n * keep * (1 - keep)
    chi2 = sum((c - n * keep) ** 2 for c in counts) / var
    assert abs(chi2 - seeds) / math.sqrt(2 * seeds) < 5.0


def test_columns_are_independent_of_each_other():
    # Neighbouring slices share Philox blocks; their keep decisions must still be uncorrelated.
    n = 40000
    y = darex_ext.structural_prune_(torch.ones(2, n), 0.5, dim=1, q=1.0, seed=3)
    k = (y[0] != 0).double()
    a, b = k[:-1] - k[:-1].mean(), k[1:] - k[1:].mean()
    corr = float((a * b).mean() / (a.std() * b.std()))
    assert abs(corr) * math.sqrt(n) < 5.0
    assert abs(_z(int(k.sum()), n, 0.5)) < 5.0


def test_exact_replay_and_seed_dependence(device):
    x = randn(64, 33, device=device)
    a = darex_ext.structural_prune_(x.clone(), 0.5, dim=0, seed=123)
    b = darex_ext.structural_prune_(x.clone(), 0.5, dim=0, seed=123)
    c = darex_ext.structural_prune_(x.clone(), 0.5, dim=0, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(darex_ext.structural_prune_(x.clone(), 0.5, seed=g1),
                       darex_ext.structural_prune_(x.clone(), 0.5, seed=g2))


@pytest.mark.parametrize("split", [1, 3, 4, 50])
def test_offset_streams_rows_in_pieces(split, device):
    x = randn(77, 13, device=device)
    whole = darex_ext.structural_prune_(x.clone(), 0.7, seed=8)
    top = darex_ext.structural_prune_(x[:split].clone(), 0.7, seed=8)
    rest = darex_ext.structural_prune_(x[split:].clone(), 0.7, seed=8, offset=split)
    assert torch.equal(torch.cat([top, rest]), whole)


def test_opcheck(device):
    x = randn(7, 9, device=device)
    for args in [(x.clone(), 0.5, 0, 3, 0, 0.5), (x.clone(), 0.9, 1, -5, 2, 1.0),
                 (randn(3, 4, 5, device=device), 0.4, 2, 1, 0, 0.25)]:
        torch.library.opcheck(torch.ops.darex.structural_prune_.default, args)


def test_compile_fullgraph(device):
    def step(delta):
        darex_ext.structural_prune_(delta, 0.5, dim=1, q=0.25, seed=6)
        return delta * 2

    x = randn(12, 40, device=device)
    expected = ref.structural_prune(x, 0.5, 1, 0.25, seed=6) * 2
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x.clone())
    assert torch.equal(got, expected)


def _bad_cases():
    return [
        ("p negative", lambda d: darex_ext.structural_prune_(d, -0.1), ValueError, "p"),
        ("p one", lambda d: darex_ext.structural_prune_(d, 1.0), ValueError, "p"),
        ("p str", lambda d: darex_ext.structural_prune_(d, "0.5"), TypeError, "p"),
        ("dim out of range", lambda d: darex_ext.structural_prune_(d, 0.5, dim=2), ValueError, "dim"),
        ("dim too negative", lambda d: darex_ext.structural_prune_(d, 0.5, dim=-3), ValueError, "dim"),
        ("dim float", lambda d: darex_ext.structural_prune_(d, 0.5, dim=1.0), TypeError, "dim"),
        ("dim bool", lambda d: darex_ext.structural_prune_(d, 0.5, dim=True), TypeError, "dim"),
        ("q zero", lambda d: darex_ext.structural_prune_(d, 0.5, q=0.0), ValueError, "q"),
        ("q nan", lambda d: darex_ext.structural_prune_(d, 0.5, q=float("nan")), ValueError, "q"),
        ("q tensor", lambda d: darex_ext.structural_prune_(d, 0.5, q=torch.ones(4)), TypeError, "q"),
        ("seed negative", lambda d: darex_ext.structural_prune_(d, 0.5, seed=-1), ValueError, "seed"),
        ("seed float", lambda d: darex_ext.structural_prune_(d, 0.5, seed=0.5), TypeError, "seed"),
        ("offset negative", lambda d: darex_ext.structural_prune_(d, 0.5, offset=-1), ValueError, "offset"),
        ("op dim", lambda d: torch.ops.darex.structural_prune_(d, 0.5, 5, 0, 0, 0.5), ValueError, "dim"),
        ("op p", lambda d: torch.ops.darex.structural_prune_(d, 1.5, 0, 0, 0, 0.5), ValueError, "p"),
        ("op q", lambda d: torch.ops.darex.structural_prune_(d, 0.5, 0, 0, 0, -1.0), ValueError, "q"),
        ("op offset", lambda d: torch.ops.darex.structural_prune_(d, 0.5, 0, 0, -2, 0.5), ValueError, "offset"),
    ]


@pytest.mark.parametrize("name,call,exc,arg", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_rejects_bad_arguments(name, call, exc, arg):
    delta = randn(4, 5)
    before = delta.clone()
    with pytest.raises(exc, match=arg):
        call(delta)
    assert torch.equal(delta, before)


def test_rejects_bad_tensors():
    with pytest.raises(TypeError, match="delta"):
        darex_ext.structural_prune_(torch.ones(3, dtype=torch.int32), 0.5)
    with pytest.raises(TypeError, match="delta"):
        darex_ext.structural_prune_([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="dim"):
        darex_ext.structural_prune_(torch.tensor(1.0), 0.5)
    with pytest.raises(ValueError, match="delta"):
        darex_ext.structural_prune_(torch.ones(3, requires_grad=True), 0.5)
    with pytest.raises(TypeError, match="delta"):
        torch.ops.darex.structural_prune_(torch.ones(3, dtype=torch.int64), 0.5, 0, 0, 0, 0.5)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
@pytest.mark.parametrize("shape,dim", [((1001,), 0), ((300, 77), 0), ((300, 77), 1), ((5, 6, 4099), 2),
                                       ((3, 1 << 18), 0)], ids=str)
def test_cpu_equals_cuda(shape, dim, dtype):
    x = randn(*shape, dtype=dtype)
    cpu = darex_ext.structural_prune_(x.clone(), 0.6, dim=dim, q=0.3, seed=2**40 + 1)
    gpu = darex_ext.structural_prune_(x.cuda(), 0.6, dim=dim, q=0.3, seed=2**40 + 1)
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.slow
@pytest.mark.parametrize("dim", [0, 1])
def test_past_int32(dim):
    # 523906 x 4099 bf16 ones: more than 2^31 elements; rows around 2^31 // 4099 straddle it.
    rows, cols = (1 << 31) // 4099 + 2, 4099
    x = torch.ones(rows, cols, dtype=torch.bfloat16)
    assert x.numel() > (1 << 31)
    darex_ext.structural_prune_(x, 0.5, dim=dim, q=0.5, seed=99)
    keep = darex_ext.keep_mask(x.shape[dim], 0.5, seed=99).to(torch.bfloat16) * 2
    for r in (0, (1 << 31) // cols - 1, (1 << 31) // cols, rows - 1):
        expected = keep if dim == 1 else keep[r].expand(cols)
        assert torch.equal(x[r], expected), r
    col_sums = x[:, :7].float().sum(0)  # one reduction pass over a thin slice
    if dim == 1:
        assert torch.equal(col_sums, keep[:7].float() * rows)
    else:
        assert torch.equal(col_sums, torch.full((7,), float(keep.float().sum())))


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["structural_prune_"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
