"""The kernels of mask spec v2 (mask="skip", the default): bit for bit against the twin
(darex_ext/reference/skip_mask.py), the Bernoulli law, independence across stripes, seeds, rows
and offsets, invariance under threads and pieces; spec v1 stays selectable."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.reference.skip_mask import STRIPE

from conftest import randn

RATES = [1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("p", [0.0] + RATES)
@pytest.mark.parametrize("n,offset", [(1, 0), (4095, 1), (3 * STRIPE + 17, 4090), (10000, 2**40 + 3)])
def test_keep_mask_is_the_twin(p, n, offset):
    got = darex_ext.keep_mask((n,), p, seed=2**64 - 7, offset=offset)
    want = ref.keep_mask((n,), p, 2**64 - 7, offset=offset, mask="skip")
    assert torch.equal(got, want)


def test_skip_is_the_default_and_philox_is_v1():
    x = torch.empty(20000)
    assert torch.equal(darex_ext.keep_mask(x, 0.9, seed=3), darex_ext.keep_mask(x, 0.9, seed=3, mask="skip"))
    v1 = darex_ext.keep_mask(x, 0.9, seed=3, mask="philox")
    assert torch.equal(v1, ref.keep_mask(x.shape, 0.9, 3, mask="philox"))
    assert not torch.equal(v1, darex_ext.keep_mask(x, 0.9, seed=3))


@pytest.mark.parametrize("p", RATES)
def test_keep_rate_within_binomial_bounds(p):
    n = 1 << 24
    kept = int(darex_ext.keep_mask((n,), p, seed=11).sum())
    mean, sd = n * (1 - p), math.sqrt(n * p * (1 - p))
    assert abs(kept - mean) <= 6 * sd + 3, (kept, mean, sd)


@pytest.mark.parametrize("p", [0.99, 0.3, 0.9999])
def test_gaps_follow_the_geometric_law(p):
    # gaps between consecutive rare elements, pooled over stripes, against P(G = g) = rho (1 - rho)^g
    n = 1 << 24
    keep = darex_ext.keep_mask((n,), p, seed=5)
    rare = (keep if p >= 0.5 else ~keep).nonzero()[:, 0]
    gaps = (rare[1:] - rare[:-1] - 1).double()
    rho = min(p, 1 - p)
    m = gaps.numel()
    # bins of roughly equal probability: quantiles of the geometric law
    edges = sorted({int(math.floor(math.log(1 - k / 20) / math.log(1 - rho))) for k in range(1, 20)})
    edges = [e for e in edges if e > 0]
    bounds = [0] + edges + [math.inf]
    chi2, dof = 0.0, -1
    for lo, hi in zip(bounds, bounds[1:]):
        prob = (1 - rho) ** lo - ((1 - rho) ** hi if hi != math.inf else 0.0)
        obs = int(((gaps >= lo) & (gaps < hi)).sum())
        chi2 += (obs - m * prob) ** 2 / (m * prob)
        dof += 1
    assert dof >= 5
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)  # far above the 99.99% point


def _pair_rate_ok(a: torch.Tensor, b: torch.Tensor, q: float) -> bool:
    # P(a and b) against q^2 for independent Bernoulli(q) indicators
    n = a.numel()
    both = int((a & b).sum())
    var = n * q * q * (1 - q * q)
    return abs(both - n * q * q) <= 6 * math.sqrt(var) + 2


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_no_correlation_across_stripe_boundaries(p):
    keep = darex_ext.keep_mask((4096 * STRIPE,), p, seed=17).reshape(-1, STRIPE)
    q = 1 - p
    assert _pair_rate_ok(keep[:-1, -1], keep[1:, 0], q)        # last of a stripe, first of the next
    assert _pair_rate_ok(keep[:-1, -8:].reshape(-1), keep[1:, :8].reshape(-1), q)
    assert _pair_rate_ok(keep[:, 0], keep[:, 1], q)              # neighbours inside a stripe


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_no_correlation_across_seeds_rows_and_offsets(p):
    q = 1 - p
    n = 1 << 22
    a = darex_ext.keep_mask((n,), p, seed=100)
    assert _pair_rate_ok(a, darex_ext.keep_mask((n,), p, seed=101), q)
    assert _pair_rate_ok(a, darex_ext.keep_mask((n,), p, seed=100 + (1 << 32)), q)  # the seed's high word
    assert _pair_rate_ok(a, darex_ext.keep_mask((n,), p, seed=100, offset=STRIPE), q)
    assert _pair_rate_ok(a, darex_ext.keep_mask((n,), p, seed=100, offset=1), q)
    rows = darex_ext.keep_mask((1024, STRIPE), p, seed=100)
    assert _pair_rate_ok(rows[:-1].reshape(-1), rows[1:].reshape(-1), q)


@pytest.mark.parametrize("p", [0.3, 0.99])
def test_threads_do_not_change_the_mask(p):
    n = 3 * (1 << 20) + 5
    x = randn(n)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m1, y1 = darex_ext.keep_mask((n,), p, seed=8), darex_ext.prune_(x.clone(), p, seed=8)
        torch.set_num_threads(max(2, before))
        m2, y2 = darex_ext.keep_mask((n,), p, seed=8), darex_ext.prune_(x.clone(), p, seed=8)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(m1, m2) and torch.equal(_bits(y1), _bits(y2))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.95])
def test_pieces_with_offsets_are_the_whole(p):
    n = 5 * STRIPE + 123
    x, b = randn(n), randn(n)
    whole_mask = darex_ext.keep_mask((n,), p, seed=4)
    whole_prune = darex_ext.prune_(x.clone(), p, seed=4)
    whole_dare = darex_ext.dare(x, b, p, seed=4)
    cuts = [0, 1, 4095, 4097, 9000, 3 * STRIPE, n]
    for lo, hi in zip(cuts, cuts[1:]):
        assert torch.equal(darex_ext.keep_mask((hi - lo,), p, seed=4, offset=lo), whole_mask[lo:hi])
        assert torch.equal(darex_ext.prune_(x[lo:hi].clone(), p, seed=4, offset=lo), whole_prune[lo:hi])
        assert torch.equal(darex_ext.dare(x[lo:hi], b[lo:hi], p, seed=4, offset=lo), whole_dare[lo:hi])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1,), (37,), (5, 1000), (3, 4097)])
def test_prune_and_dare_are_the_twin(dtype, p, shape):
    x, b = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    assert torch.equal(_bits(darex_ext.prune_(x.clone(), p, seed=9, offset=77)),
                       _bits(ref.prune(x, p, seed=9, offset=77)))
    assert torch.equal(_bits(darex_ext.dare(x, b, p, seed=9, offset=77)), _bits(ref.dare(x, b, p, seed=9, offset=77)))
    q = torch.linspace(0.2, 0.9, shape[0], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(_bits(darex_ext.prune_(x.clone(), p, q, seed=9)), _bits(ref.prune(x, p, q, seed=9)))
    assert torch.equal(_bits(darex_ext.dare(x, b, p, q, seed=9)), _bits(ref.dare(x, b, p, q, seed=9)))


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_dare_out_aliases(p):
    x, b = randn(3, 5000), randn(3, 5000)
    want = ref.dare(x, b, p, seed=6)
    for target in ("base", "finetuned", "other", "strided"):
        f, bb = x.clone(), b.clone()
        out = {"base": bb, "finetuned": f, "other": torch.empty_like(x),
               "strided": torch.empty(5000, 3).t()}[target]
        got = darex_ext.dare(f, bb, p, seed=6, out=out)
        assert got is out and torch.equal(got, want), target


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_l1_rescale_uses_the_mask(p):
    x = randn(70000)
    assert torch.equal(darex_ext.prune_(x.clone(), p, seed=2, rescale="l1", offset=5),
                       ref.prune_l1(x, p, seed=2, offset=5))
    assert torch.equal(torch.ops.darex.kept_abs_sum(x, p, 2, 5, 2), ref.kept_abs_sum(x, p, seed=2, offset=5))


def test_philox_paths_are_spec_v1():
    x, b = randn(4, 3000), randn(4, 3000)
    for p in (0.3, 0.9):
        assert torch.equal(darex_ext.prune_(x.clone(), p, seed=1, mask="philox"), ref.prune(x, p, seed=1, mask="philox"))
        assert torch.equal(darex_ext.dare(x, b, p, seed=1, mask="philox"), ref.dare(x, b, p, seed=1, mask="philox"))


def test_bad_mask_names_the_argument():
    x = randn(10)
    with pytest.raises(ValueError, match="mask"):
        darex_ext.prune_(x, 0.5, mask="foo")
    with pytest.raises(TypeError, match="mask"):
        darex_ext.dare(x, x, 0.5, mask=2)
    with pytest.raises(ValueError, match="mask"):
        darex_ext.keep_mask(x, 0.5, mask="Skip")
    with pytest.raises(ValueError, match="mask_spec"):
        torch.ops.darex.keep_mask(x, 0.5, 0, 0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 0.9, 0.999])
def test_seeded_storage_ops_are_the_twin(dtype, p):
    from darex_ext import ops as kernels

    x = randn(5, 3001, dtype=dtype)
    values = kernels.seeded_pack(x, p, seed=7, offset=4000)
    assert torch.equal(_bits(values), _bits(ref.seeded_pack(x, p, seed=7, offset=4000)))
    assert kernels.keep_count(x, p, seed=7, offset=4000) == values.numel() == ref.keep_count(x.numel(), p, 7, offset=4000)
    out = torch.empty(3001, 5, dtype=dtype).t()  # non-contiguous
    kernels.seeded_scatter_(out, values, p, seed=7, offset=4000)
    assert torch.equal(_bits(out), _bits(ref.seeded_scatter(x, values, p, seed=7, offset=4000)))
    base = randn(5, 3001, dtype=dtype)
    got = kernels.seeded_scatter_(base.clone(), values, p, seed=7, offset=4000, alpha=0.7, accumulate=True)
    want = ref.seeded_scatter(base, values, p, seed=7, offset=4000, alpha=0.7, accumulate=True)
    assert torch.equal(_bits(got), _bits(want))
    with pytest.raises(ValueError, match="values has"):  # a wrong count is refused before any write
        before = base.clone()
        kernels.seeded_scatter_(base, values[:-1] if values.numel() else torch.zeros(1, dtype=dtype), p, seed=7,
                                offset=4000)
    assert torch.equal(_bits(base), _bits(before))


def test_merge_sparsify_random_passes_the_mask_through():
    from darex_ext.algorithms.merge_sparsify import random

    x = randn(40, 300)
    for mask in ("skip", "philox"):
        for rescale in ("q", "l1", None):
            got = random(x, 0.2, rescale, seed=5, mask=mask)
            assert torch.equal(got != 0, darex_ext.keep_mask(x, 0.8, seed=5, mask=mask)), (mask, rescale)
    with pytest.raises(ValueError, match="mask"):
        random(x, 0.2, "q", seed=5, mask="foo")
