"""The kernels of mask spec v2 (mask="skip", the default): bit for bit against the twin
(darex_ext/reference/skip_mask.py), the Bernoulli law, independence across stripes, seeds, rows
and offsets, invariance under threads and pieces; spec v1 stays selectable. Spec v2 is hybrid
(docs/mask_spec.md, "Version 2"): the stripe walk only for p < 1/8 or p > 7/8, spec v1's mask for
1/8 <= p <= 7/8, so the tests of the walk's own properties use p in the walk regime."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.reference.skip_mask import STRIPE

from conftest import randn

RATES = [1e-6, 0.01, 0.1, math.nextafter(0.125, 0.0), 0.125, 0.3, 0.5, 0.7, 0.875, math.nextafter(0.875, 1.0),
         0.9, 0.99, 1 - 1e-6]
# docs/mask_spec.md, "Version 2", known answers: keep mask at p = 0.5, seed 0, elements 0..15
KNOWN_P_HALF_SEED0 = "0111101000001010"
MODERATE = [0.125, 0.3, 0.5, 0.7, 0.875]  # spec v2 is spec v1 here, ends included
WALK_EDGE = [0.124, 0.876]                # just outside: the stripe walk
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


@pytest.mark.parametrize("p", [0.99, 0.1, 0.3, 0.9999])
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


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_no_correlation_across_stripe_boundaries(p):
    keep = darex_ext.keep_mask((4096 * STRIPE,), p, seed=17).reshape(-1, STRIPE)
    q = 1 - p
    assert _pair_rate_ok(keep[:-1, -1], keep[1:, 0], q)        # last of a stripe, first of the next
    assert _pair_rate_ok(keep[:-1, -8:].reshape(-1), keep[1:, :8].reshape(-1), q)
    assert _pair_rate_ok(keep[:, 0], keep[:, 1], q)              # neighbours inside a stripe


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
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


@pytest.mark.parametrize("p", [0.05, 0.3, 0.99])
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


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.95])
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
@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1,), (37,), (5, 1000), (3, 4097)])
def test_prune_and_dare_are_the_twin(dtype, p, shape):
    x, b = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    assert torch.equal(_bits(darex_ext.prune_(x.clone(), p, seed=9, offset=77)),
                       _bits(ref.prune(x, p, seed=9, offset=77)))
    assert torch.equal(_bits(darex_ext.dare(x, b, p, seed=9, offset=77)), _bits(ref.dare(x, b, p, seed=9, offset=77)))
    q = torch.linspace(0.2, 0.9, shape[0], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(_bits(darex_ext.prune_(x.clone(), p, q, seed=9)), _bits(ref.prune(x, p, q, seed=9)))
    assert torch.equal(_bits(darex_ext.dare(x, b, p, q, seed=9)), _bits(ref.dare(x, b, p, q, seed=9)))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.9])
def test_dare_out_aliases(p):
    x, b = randn(3, 5000), randn(3, 5000)
    want = ref.dare(x, b, p, seed=6)
    for target in ("base", "finetuned", "other", "strided"):
        f, bb = x.clone(), b.clone()
        out = {"base": bb, "finetuned": f, "other": torch.empty_like(x),
               "strided": torch.empty(5000, 3).t()}[target]
        got = darex_ext.dare(f, bb, p, seed=6, out=out)
        assert got is out and torch.equal(got, want), target


@pytest.mark.parametrize("p", [0.1, 0.3, 0.9])
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
@pytest.mark.parametrize("p", [0.1, 0.3, 0.9, 0.999])
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


def test_twin_rule_boundaries():
    from darex_ext.reference.skip_mask import WALK_MAX_RHO, effective_mask, uses_walk

    assert WALK_MAX_RHO == 0.125
    for p in (0.0, 1e-12, 0.01, 0.124, math.nextafter(0.125, 0.0), math.nextafter(0.875, 1.0), 0.876, 0.99,
              1 - 1e-12):
        assert uses_walk(p) and effective_mask("skip", p) == "skip", p
    for p in (0.125, math.nextafter(0.125, 1.0), 0.3, 0.5, 0.7, math.nextafter(0.875, 0.0), 0.875):
        assert not uses_walk(p) and effective_mask("skip", p) == "philox", p
    for p in (0.01, 0.5, 0.99):
        assert effective_mask("philox", p) == "philox"


def _all_ops(p: float, mask: str, x: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> dict:
    """Every op that takes a mask, through the Python API and the raw dispatcher ops."""
    from darex_ext import ops as kernels

    spec = {"philox": 1, "skip": 2}[mask]
    values = kernels.seeded_pack(x, p, seed=21, offset=4090, mask=mask)
    base = b.clone()
    return {
        "keep_mask": darex_ext.keep_mask(x, p, seed=21, offset=4090, mask=mask),
        "keep_mask_op": torch.ops.darex.keep_mask(x, p, 21, 4090, spec),
        "prune_": _bits(darex_ext.prune_(x.clone(), p, seed=21, offset=4090, mask=mask)),
        "prune_rows": _bits(darex_ext.prune_(x.clone(), p, q, seed=21, mask=mask)),
        "prune_l1": _bits(darex_ext.prune_(x.clone(), p, seed=21, rescale="l1", mask=mask)),
        "dare": _bits(darex_ext.dare(x, b, p, seed=21, offset=4090, mask=mask)),
        "dare_op": _bits(torch.ops.darex.dare(x, b, p, 21, 4090, None, 1.0 - p, spec)),
        "dare_out_base": _bits(darex_ext.dare(x, base, p, seed=21, offset=4090, out=base, mask=mask)),
        "kept_abs_sum": _bits(torch.ops.darex.kept_abs_sum(x, p, 21, 4090, spec)),
        "seeded_pack": _bits(values),
        "keep_count": kernels.keep_count(x, p, seed=21, offset=4090, mask=mask),
        "seeded_scatter_": _bits(kernels.seeded_scatter_(torch.empty_like(x), values, p, seed=21, offset=4090,
                                                         mask=mask)),
        "seeded_add": _bits(kernels.seeded_scatter_(b.clone(), values, p, seed=21, offset=4090, alpha=0.7,
                                                    accumulate=True, mask=mask)),
        "structural_dim0": _bits(darex_ext.structural_prune_(x.clone(), p, dim=0, seed=21, offset=3, mask=mask)),
        "structural_dim1": _bits(darex_ext.structural_prune_(x.clone(), p, dim=1, seed=21, offset=3, mask=mask)),
    }


def _inputs(dtype=torch.float32):
    x, b = randn(6, 3 * STRIPE + 1001, dtype=dtype), randn(6, 3 * STRIPE + 1001, dtype=dtype)
    q = torch.linspace(0.2, 0.9, 6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return x, b, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", MODERATE)
def test_skip_is_philox_bit_for_bit_at_moderate_p(p, dtype):
    x, b, q = _inputs(dtype)
    skip, philox = _all_ops(p, "skip", x, b, q), _all_ops(p, "philox", x, b, q)
    for name in skip:
        assert torch.equal(torch.as_tensor(skip[name]), torch.as_tensor(philox[name])), name
    # and the twin follows the same rule
    want = ref.keep_mask(x.shape, p, 21, offset=4090, mask="philox")
    assert torch.equal(ref.keep_mask(x.shape, p, 21, offset=4090, mask="skip"), want)
    assert torch.equal(skip["keep_mask"], want)
    slices = darex_ext.keep_mask((x.shape[1],), p, seed=21, offset=3, mask="philox")
    assert torch.equal(torch.ops.darex.keep_mask(torch.empty(x.shape[1]), p, 21, 3, 2), slices)


@pytest.mark.parametrize("p", WALK_EDGE)
def test_skip_walks_just_outside_the_moderate_range(p):
    from darex_ext.reference.skip_mask import skip_keep_mask

    x, b, q = _inputs()
    skip, philox = _all_ops(p, "skip", x, b, q), _all_ops(p, "philox", x, b, q)
    assert torch.equal(skip["keep_mask"], skip_keep_mask(x.shape, p, 21, offset=4090))  # the walk itself
    assert torch.equal(philox["keep_mask"], ref.keep_mask(x.shape, p, 21, offset=4090, mask="philox"))
    for name in skip:
        if name == "keep_count":  # two independent counts may coincide; each matches its own mask
            assert skip[name] == int(skip["keep_mask"].sum()) and philox[name] == int(philox["keep_mask"].sum())
            continue
        if name == "structural_dim0":  # 6 slices: two independent masks may coincide; checked below
            continue
        assert not torch.equal(torch.as_tensor(skip[name]), torch.as_tensor(philox[name])), name
    assert torch.equal(skip["prune_"], _bits(ref.prune(x, p, seed=21, offset=4090, mask="skip")))
    assert torch.equal(skip["dare"], _bits(ref.dare(x, b, p, seed=21, offset=4090, mask="skip")))
    assert torch.equal(skip["kept_abs_sum"], _bits(ref.kept_abs_sum(x, p, seed=21, offset=4090, mask="skip")))
    assert torch.equal(skip["structural_dim0"],
                       _bits(ref.structural_prune(x, p, dim=0, seed=21, offset=3, mask="skip")))
    assert torch.equal(skip["structural_dim1"],
                       _bits(ref.structural_prune(x, p, dim=1, seed=21, offset=3, mask="skip")))


def test_known_answer_p_half_skip_is_philox():
    # docs/mask_spec.md, "Version 2", known answers: the first 16 bits at p = 0.5, seed 0, either spec
    want = [int(v) for v in KNOWN_P_HALF_SEED0]
    for mask in ("skip", "philox"):
        assert darex_ext.keep_mask((16,), 0.5, seed=0, mask=mask).int().tolist() == want, mask
        assert ref.keep_mask((16,), 0.5, 0, mask=mask).int().tolist() == want, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.9, 0.99])
@pytest.mark.parametrize("threads", [1, 2])
def test_kept_only_paths_on_unaligned_views_and_split_stripes(dtype, p, threads):
    # The keep-rare paths stage each stripe piece and stream whole cache lines out: views that
    # start mid-line, and parallel tasks that split a stripe, must still give the twin's bits.
    n, offset = 3 * 65536 + 777, 4093
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        store = randn(4 * n + 8, dtype=dtype)
        x, b = store[1:n + 1], store[n + 3:2 * n + 3]  # element offsets 1 and n + 3: not line-aligned
        want_prune = ref.prune(x, p, seed=5, offset=offset)
        want_dare = ref.dare(x, b, p, seed=5, offset=offset)
        assert torch.equal(_bits(darex_ext.prune_(x.clone()[0:], p, seed=5, offset=offset)), _bits(want_prune))
        y = torch.empty(n + 5, dtype=dtype)[5:].copy_(x)
        assert torch.equal(_bits(darex_ext.prune_(y, p, seed=5, offset=offset)), _bits(want_prune))
        out = torch.empty(n + 3, dtype=dtype)[3:]
        assert torch.equal(_bits(darex_ext.dare(x, b, p, seed=5, offset=offset, out=out)), _bits(want_dare))
        bb = b.clone()
        assert torch.equal(_bits(darex_ext.dare(x, bb, p, seed=5, offset=offset, out=bb)), _bits(want_dare))
        ff = torch.empty(n + 7, dtype=dtype)[7:].copy_(x)
        assert torch.equal(_bits(darex_ext.dare(ff, b, p, seed=5, offset=offset, out=ff)), _bits(want_dare))

        from darex_ext import ops as kernels
        values = kernels.seeded_pack(x, p, seed=5, offset=offset)
        assert torch.equal(_bits(values), _bits(ref.seeded_pack(x, p, seed=5, offset=offset)))
        dec = torch.full((n + 1,), 7.0, dtype=dtype)[1:]
        kernels.seeded_scatter_(dec, values, p, seed=5, offset=offset)
        assert torch.equal(_bits(dec), _bits(want_prune))
        acc = torch.empty(n + 2, dtype=dtype)[2:].copy_(b)
        want_acc = ref.seeded_scatter(acc, values, p, seed=5, offset=offset, alpha=1.0, accumulate=True)
        kernels.seeded_scatter_(acc, values, p, seed=5, offset=offset, accumulate=True)
        assert torch.equal(_bits(acc), _bits(want_acc))
    finally:
        torch.set_num_threads(before)
