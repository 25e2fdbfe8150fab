"""topk_mask, topk_threshold, magnitude_prune_, wanda_prune_ against torch.topk and the
sort-based reference; ties, edge sizes, NaN, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import darex_ext
from darex_ext import reference as ref

from conftest import randn
from op_samples import check_samples_against_reference


def _distinct(n, dtype, device):
    """n distinct finite values of `dtype`: distinct magnitudes (bit patterns) with random signs."""
    if dtype in (torch.float16, torch.bfloat16):
        assert n <= 0x4000
        bits = (torch.randperm(0x4000)[:n] + 0x1000).to(torch.int16)  # finite in both formats
        out = bits.view(dtype) * (torch.randint(0, 2, (n,)) * 2 - 1).to(dtype)
    else:
        out = (torch.randperm(n).to(dtype) + torch.rand(n, dtype=dtype) * 0.5) * (torch.randint(0, 2, (n,)) * 2 - 1)
    assert out.unique().numel() == n, "test data must be distinct"
    return out.to(device)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (100, 1), (100, 99), (1001, 10), (70000, 700)])
@pytest.mark.parametrize("largest", [True, False])
def test_whole_tensor_equals_torch_topk(n, k, largest, dtype, device):
    if dtype in (torch.float16, torch.bfloat16) and n > 0x4000:
        n, k = 0x4000, 0x4000 // 100  # as many distinct half values as the helper makes
    x = _distinct(n, dtype, device)
    expected = torch.zeros(n, dtype=torch.bool, device=device)
    expected[torch.topk(x.double(), k, largest=largest).indices] = True
    assert torch.equal(darex_ext.topk_mask(x, k, largest=largest), expected)


@pytest.mark.parametrize("shape,k", [((5, 9), 3), ((64, 257), 17), ((3, 1), 1), ((2, 4096), 4095)], ids=str)
@pytest.mark.parametrize("largest", [True, False])
def test_per_row_equals_torch_topk(shape, k, largest, device):
    x = randn(*shape, device=device)
    expected = torch.zeros(shape, dtype=torch.bool, device=device)
    expected.scatter_(1, torch.topk(x, k, dim=1, largest=largest).indices, True)
    assert torch.equal(darex_ext.topk_mask(x, k, dim=-1, largest=largest), expected)


def test_other_dims_and_3d(dtype, device):
    x = randn(4, 6, 5, dtype=dtype, device=device)
    for dim in (0, 1, 2, -1, -3):
        assert torch.equal(darex_ext.topk_mask(x, 2, dim=dim), ref.topk_mask(x, 2, dim=dim))


@pytest.mark.parametrize("kind", ["all_equal", "few_values", "many_zeros", "signed_zeros"])
@pytest.mark.parametrize("dim", [None, -1])
def test_ties_go_to_the_lower_index(kind, dim, dtype, device):
    n = 3000
    if kind == "all_equal":
        x = torch.full((n,), 1.5)
    elif kind == "few_values":
        x = torch.randint(0, 4, (n,)).double()
    elif kind == "many_zeros":
        x = torch.where(torch.rand(n) < 0.9, torch.zeros(n), torch.randn(n))
    else:
        x = torch.where(torch.rand(n) < 0.5, torch.zeros(n), -torch.zeros(n))
    x = x.to(dtype).to(device).reshape(6, 500)
    for k in (0, 1, 7, 250, 499, 500):
        for largest in (True, False):
            kk = k if dim is not None else k * 6
            got = darex_ext.topk_mask(x, kk, dim=dim, largest=largest)
            assert torch.equal(got, ref.topk_mask(x, kk, dim=dim, largest=largest)), (k, largest)
            assert int(got.sum()) == (kk * (6 if dim is not None else 1))


def test_ties_across_parallel_chunks():
    # Ties at the cut spread over many write chunks: ranks must follow index order globally.
    x = torch.randint(0, 3, (300_001,)).float()
    for k in (1, 100_000, 150_000, 299_999):
        assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))


def test_infinities_are_ordinary_values(device):
    x = torch.tensor([1.0, float("inf"), -float("inf"), 0.0, float("inf"), -2.0], device=device)
    assert darex_ext.topk_mask(x, 2).tolist() == [False, True, False, False, True, False]
    assert darex_ext.topk_mask(x, 1, largest=False).tolist() == [False, False, True, False, False, False]


@pytest.mark.parametrize("numel", [0, 1, 5])
def test_edge_sizes(numel, device):
    x = randn(numel, device=device)
    for k in range(numel + 1):
        assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))
    assert darex_ext.topk_mask(torch.empty(0, 4, device=device), 2, dim=-1).shape == (0, 4)
    assert darex_ext.topk_mask(torch.empty(3, 0, device=device), 0, dim=-1).shape == (3, 0)


def test_past_quantiles_limit():
    # torch.quantile refuses more than 2^24 elements; radix select does not care.
    x = torch.randn((1 << 24) + 1)
    k = 1 << 20
    got = darex_ext.topk_mask(x, k)
    assert int(got.sum()) == k
    assert float(x[got].min()) >= float(x[~got].max())
    value, beyond, ties = darex_ext.topk_threshold(x, k)
    assert value == float(torch.topk(x, k).values[-1]) and beyond + ties == k


def test_threshold_with_ties():
    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0])
    assert darex_ext.topk_threshold(x, 3) == (2.0, 1, 2)
    assert darex_ext.topk_threshold(x, 2, largest=False) == (1.0, 1, 1)
    assert darex_ext.topk_threshold(x.half(), 1) == (3.0, 0, 1)


def test_nan_is_refused_with_a_count(device):
    x = randn(100, device=device)
    x[[3, 50, 77]] = float("nan")
    with pytest.raises(ValueError, match="3 NaN"):
        darex_ext.topk_mask(x, 5)
    with pytest.raises(ValueError, match="NaN"):
        darex_ext.topk_mask(x.reshape(10, 10), 5, dim=-1)
    before = x.clone()
    with pytest.raises(ValueError, match="3 NaN"):
        darex_ext.magnitude_prune_(x, 0.5)
    assert torch.equal(x.isnan(), before.isnan()) and torch.equal(x.nan_to_num(), before.nan_to_num())


# --- magnitude and WANDA pruning ------------------------------------------------------------

@pytest.mark.parametrize("scope", ["tensor", "row"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_magnitude_prune_matches_reference(scope, p, dtype, device):
    x = randn(37, 101, dtype=dtype, device=device)
    expected = ref.magnitude_prune(x, p, scope)
    got = darex_ext.magnitude_prune_(x.clone(), p, scope=scope)
    assert torch.equal(got, expected)
    expected_q = ref.magnitude_prune(x, p, scope, q=0.25)
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p, scope=scope, q=0.25), expected_q)


def test_magnitude_prune_counts_round_half_even():
    x = randn(10)  # p * n = 2.5 -> 2 dropped, 3.5 -> 4 dropped
    assert int((darex_ext.magnitude_prune_(x.clone(), 0.25) == 0).sum()) == 2
    assert int((darex_ext.magnitude_prune_(x.clone(), 0.35) == 0).sum()) == 4


def test_magnitude_prune_with_ties_and_noncontiguous(device):
    x = torch.randint(-3, 4, (40, 30)).float().to(device).t()
    expected = ref.magnitude_prune(x.contiguous(), 0.6, "row")
    darex_ext.magnitude_prune_(x, 0.6, scope="row")
    assert torch.equal(x, expected)
    y = torch.randint(-2, 3, (200_000,)).float().to(device)
    assert torch.equal(darex_ext.magnitude_prune_(y.clone(), 0.7), ref.magnitude_prune(y, 0.7))


def test_magnitude_prune_agrees_with_torch_nn_utils_prune():
    x = torch.randn(64, 64)  # distinct |x|: the tie rule does not matter
    m = torch.nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        m.weight.copy_(x)
    torch_prune.l1_unstructured(m, "weight", amount=0.7)
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), 0.7), m.weight.detach())


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_wanda_prune_matches_reference(p, dtype, device):
    x = randn(33, 257, dtype=dtype, device=device)
    a = torch.rand(257, device=device) * 3
    assert torch.equal(darex_ext.wanda_prune_(x.clone(), a, p), ref.wanda_prune(x, a, p))
    assert torch.equal(darex_ext.wanda_prune_(x.clone(), a, p, q=0.5), ref.wanda_prune(x, a, p, q=0.5))


def test_wanda_per_row_counts_and_importance(device):
    x = randn(8, 1000, device=device)
    a = torch.ones(1000, device=device)
    a[:10] = 1e6  # channels with huge activations survive whatever the weight
    out = darex_ext.wanda_prune_(x.clone(), a, 0.95)
    assert torch.equal((out != 0).sum(dim=1), torch.full((8,), 50, device=device))
    assert bool((out[:, :10] != 0).all())


@pytest.mark.parametrize("call,exc,arg", [
    (lambda x: darex_ext.topk_mask(x, -1), ValueError, "k"),
    (lambda x: darex_ext.topk_mask(x, 41), ValueError, "k"),
    (lambda x: darex_ext.topk_mask(x, 1.5), TypeError, "k"),
    (lambda x: darex_ext.topk_mask(x, 3, dim=2), ValueError, "dim"),
    (lambda x: darex_ext.topk_mask(x, 6, dim=1), ValueError, "k"),
    (lambda x: darex_ext.topk_mask(x.int(), 3), TypeError, "scores"),
    (lambda x: darex_ext.topk_threshold(x, 0), ValueError, "k"),
    (lambda x: darex_ext.magnitude_prune_(x, 1.5), ValueError, "p"),
    (lambda x: darex_ext.magnitude_prune_(x, -0.1), ValueError, "p"),
    (lambda x: darex_ext.magnitude_prune_(x, 0.5, scope="col"), ValueError, "scope"),
    (lambda x: darex_ext.magnitude_prune_(x, 0.5, q=0.0), ValueError, "q"),
    (lambda x: darex_ext.magnitude_prune_(x.requires_grad_(), 0.5), ValueError, "delta"),
    (lambda x: darex_ext.wanda_prune_(x, torch.ones(4), 0.5), ValueError, "act_norm"),
    (lambda x: darex_ext.wanda_prune_(x, torch.ones(5, dtype=torch.int64), 0.5), TypeError, "act_norm"),
    (lambda x: darex_ext.wanda_prune_(x.reshape(-1), torch.ones(5), 0.5), ValueError, "delta"),
    (lambda x: darex_ext.wanda_prune_(x, [1.0] * 5, 0.5), TypeError, "act_norm"),
])
def test_bad_arguments(call, exc, arg):
    x = randn(8, 5)
    before = x.clone()
    with pytest.raises(exc, match=arg):
        call(x)
    assert torch.equal(x.detach(), before)


def test_opcheck_topk_ops(device):
    x = randn(9, 13, device=device)
    a = torch.rand(13, device=device)
    for op, args in [
        (torch.ops.darex.topk_mask.default, (x, 5, True, False)),
        (torch.ops.darex.topk_mask.default, (x, 5, False, True)),
        (torch.ops.darex.topk_threshold.default, (x, 5, True)),
        (torch.ops.darex.magnitude_prune_.default, (x.clone(), 40, False, 0.5)),
        (torch.ops.darex.magnitude_prune_.default, (x.clone(), 4, True, None)),
        (torch.ops.darex.wanda_prune_.default, (x.clone(), a, 4, 0.5)),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.slow
def test_topk_past_int32():
    n = (1 << 31) + 7
    x = torch.empty(n, dtype=torch.bfloat16)
    x.copy_(torch.arange(1, 1001, dtype=torch.bfloat16).repeat(n // 1000 + 1)[:n])  # many ties
    k = 3
    m = darex_ext.topk_mask(x, k)
    # bf16 steps by 4 near 1000: 998 (half way, to even), 999 and 1000 all round to 1000, the
    # maximum, so its first three occurrences are indices 997, 998, 999; lower index wins.
    assert x[997:1000].tolist() == [1000.0] * 3 and float(x.max()) == 1000.0 and float(x[996]) < 1000.0
    idx = m.nonzero().flatten().tolist()
    assert idx == [997, 998, 999]


@pytest.mark.parametrize("k", [1, 2, 1000, 1 << 20, (1 << 21) - 1])
def test_sample_guided_path_on_large_tensors(k):
    # >= 2^20 elements take the sample-bracketed single pass; check it at the extremes.
    x = torch.randn(1 << 21)
    for largest in (True, False):
        assert torch.equal(darex_ext.topk_mask(x, k, largest=largest), ref.topk_mask(x, k, largest=largest))


def test_sample_guided_path_falls_back_when_the_sample_misleads():
    n = 1 << 21
    x = torch.zeros(n)
    step = n // (1 << 16)
    x[step // 2::step] = 1.0  # the strided sample sees only ones; the tensor is mostly zeros
    for k in (10, 1 << 16, (1 << 16) + 5, n // 2):
        assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["topk_mask", "topk_threshold", "magnitude_prune_", "wanda_prune_"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
