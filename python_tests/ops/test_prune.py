"""The prune op against its reference: prune_ (every dtype, size, layout and q form, bit for bit)
and dare (fused base + pruned delta; out=, aliasing and autograd)."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import randn
from op_samples import check_samples_against_reference

SHAPES = [(0,), (1,), (3,), (31,), (33,), (1001,), (0, 5), (7, 0), (3, 5), (17, 129), (4, 3, 65), (1,) * 4]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 0.99])
def test_prune_matches_reference(shape, p, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    expected = ref.prune(x, p, seed=42)
    out = darex_ext.prune_(x, p, seed=42)
    assert out is x
    assert torch.equal(x, expected)


def test_zero_dim_tensor(dtype, device):
    x = randn(dtype=dtype, device=device)
    expected = ref.prune(x, 0.3, seed=1)
    assert torch.equal(darex_ext.prune_(x, 0.3, seed=1), expected)


@pytest.mark.parametrize("q", [0.05, 0.3, 0.77, 1.0, 1.7])
def test_scalar_q(q, dtype, device):
    x = randn(50, 37, dtype=dtype, device=device)
    expected = ref.prune(x, 0.9, q, seed=7)
    assert torch.equal(darex_ext.prune_(x, 0.9, q, seed=7), expected)


@pytest.mark.parametrize("shape", [(1, 5), (6, 1), (5, 3), (33, 70), (9, 4, 5), (3, 40000)], ids=str)
def test_per_row_q(shape, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    q = torch.rand(shape[0], device=device, dtype=torch.float64) * 0.9 + 0.05
    expected = ref.prune(x, 0.8, q, seed=9)
    assert torch.equal(darex_ext.prune_(x, 0.8, q, seed=9), expected)


def test_per_row_q_of_empty_rows(device):
    x = torch.empty(4, 0, device=device)
    darex_ext.prune_(x, 0.5, torch.full((4,), 0.5, device=device), seed=0)
    assert x.shape == (4, 0)


def test_rows_crossing_parallel_chunks():
    # Row boundaries not aligned with word buffers or Philox blocks, many rows per chunk.
    x = randn(1025, 3001)
    q = torch.linspace(0.1, 0.9, 1025)
    expected = ref.prune(x, 0.5, q, seed=3)
    assert torch.equal(darex_ext.prune_(x, 0.5, q, seed=3), expected)


def test_rescale_none_keeps_values(dtype, device):
    x = randn(300, dtype=dtype, device=device)
    mask = darex_ext.keep_mask(x, 0.6, seed=4)
    expected = torch.where(mask, x, torch.zeros_like(x))
    assert torch.equal(darex_ext.prune_(x.clone(), 0.6, seed=4, rescale="none"), expected)


def test_rescale_l1_preserves_norm(dtype, device):
    x = randn(64, 257, dtype=dtype, device=device)
    expected = ref.prune_l1(x, 0.9, seed=5)
    got = darex_ext.prune_(x.clone(), 0.9, seed=5, rescale="l1")
    # The twin sums in the documented order (docs/mask_spec.md), so this holds bit for bit too;
    # python_tests/ops/test_kept_abs_sum.py checks the bits.
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(got, expected, rtol=tol, atol=0)
    assert torch.equal(got != 0, expected != 0)
    if dtype in (torch.float32, torch.float64):
        l1_in, l1_out = x.double().abs().sum(), got.double().abs().sum()
        assert abs(float(l1_out / l1_in) - 1) < 1e-5


def test_rescale_l1_when_everything_is_dropped():
    x = randn(3)
    for seed in range(200):  # find a seed that drops all three at p = 0.99
        if not bool(darex_ext.keep_mask(x, 0.99, seed=seed).any()):
            break
    assert torch.equal(darex_ext.prune_(x, 0.99, seed=seed, rescale="l1"), torch.zeros(3))


def test_non_contiguous_gives_the_contiguous_mask(dtype, device):
    base = randn(40, 30, dtype=dtype, device=device)
    view = base.t()  # logical row-major order differs from memory order
    expected = ref.prune(view.contiguous(), 0.5, seed=6)
    darex_ext.prune_(view, 0.5, seed=6)
    assert torch.equal(view, expected)
    assert torch.equal(base, expected.t())


def test_strided_slice_leaves_the_rest_untouched(device):
    base = randn(10, 12, device=device)
    before = base.clone()
    view = base[::2, 1::3]
    expected = ref.prune(view.contiguous(), 0.5, seed=6)
    darex_ext.prune_(view, 0.5, seed=6)
    assert torch.equal(base[::2, 1::3], expected)
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[::2, 1::3] = False
    assert torch.equal(base[untouched], before[untouched])


def test_offset_pieces_equal_the_whole(device):
    x = randn(10007, device=device)
    whole = ref.prune(x, 0.9, 0.2, seed=11)
    y = x.clone()
    for a, b in [(0, 3), (3, 4100), (4100, 10007)]:
        darex_ext.prune_(y[a:b], 0.9, 0.2, seed=11, offset=a)
    assert torch.equal(y, whole)


def test_replay_and_seed_forms(device):
    x = randn(999, device=device)
    a = darex_ext.prune_(x.clone(), 0.5, seed=2**64 - 1)
    b = darex_ext.prune_(x.clone(), 0.5, seed=2**64 - 1)
    assert torch.equal(a, b)
    assert torch.equal(a, ref.prune(x, 0.5, seed=2**64 - 1))
    assert not torch.equal(a, darex_ext.prune_(x.clone(), 0.5, seed=2**64 - 2))


def test_special_values_propagate(device):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 1e-40, 3.0] * 50, device=device)
    expected = ref.prune(x, 0.3, 0.25, seed=2)
    got = darex_ext.prune_(x.clone(), 0.3, 0.25, seed=2)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))


def test_under_no_grad_a_parameter_can_be_pruned():
    w = torch.nn.Parameter(randn(8, 8))
    expected = ref.prune(w.detach(), 0.5, seed=1)
    with torch.no_grad():
        darex_ext.prune_(w, 0.5, seed=1)
    assert torch.equal(w.detach(), expected)


# ---- dare: base + pruned delta, fused
@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (33,), (129, 7), (3, 4, 11)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.99])
def test_dare_matches_reference(shape, p, dtype, device):
    ft, base = randn(*shape, dtype=dtype, device=device), randn(*shape, dtype=dtype, device=device)
    got = darex_ext.dare(ft, base, p, seed=3)
    assert got.dtype == dtype and got.shape == ft.shape and got.is_contiguous()
    assert torch.equal(got, ref.dare(ft, base, p, seed=3))


def test_dare_q_forms(dtype, device):
    ft, base = randn(20, 9, dtype=dtype, device=device), randn(20, 9, dtype=dtype, device=device)
    assert torch.equal(darex_ext.dare(ft, base, 0.9, 0.3, seed=1), ref.dare(ft, base, 0.9, 0.3, seed=1))
    q = torch.rand(20, device=device) + 0.1
    assert torch.equal(darex_ext.dare(ft, base, 0.9, q, seed=1), ref.dare(ft, base, 0.9, q, seed=1))


def test_dropped_entries_are_exactly_base(dtype, device):
    ft, base = randn(1000, dtype=dtype, device=device), randn(1000, dtype=dtype, device=device)
    got = darex_ext.dare(ft, base, 0.7, seed=2)
    mask = darex_ext.keep_mask(ft, 0.7, seed=2)
    assert torch.equal(got[~mask], base[~mask])


def test_dare_is_base_plus_pruned_delta_in_fp64(device):
    ft, base = randn(500, dtype=torch.float64, device=device), randn(500, dtype=torch.float64, device=device)
    via_prune = base + darex_ext.prune_(ft - base, 0.6, seed=4)
    torch.testing.assert_close(darex_ext.dare(ft, base, 0.6, seed=4), via_prune, rtol=1e-15, atol=1e-15)


def test_dare_out_argument_and_aliasing(device):
    ft, base = randn(257, device=device), randn(257, device=device)
    expected = ref.dare(ft, base, 0.5, seed=9)
    out = torch.empty_like(ft)
    assert darex_ext.dare(ft, base, 0.5, seed=9, out=out) is out
    assert torch.equal(out, expected)
    b2 = base.clone()
    darex_ext.dare(ft, b2, 0.5, seed=9, out=b2)  # merge into the base in place
    assert torch.equal(b2, expected)
    f2 = ft.clone()
    darex_ext.dare(f2, base, 0.5, seed=9, out=f2)
    assert torch.equal(f2, expected)


def test_dare_non_contiguous_inputs_and_out(device):
    ft, base = randn(30, 40, device=device).t(), randn(30, 40, device=device).t()
    expected = ref.dare(ft.contiguous(), base.contiguous(), 0.5, seed=5)
    assert torch.equal(darex_ext.dare(ft, base, 0.5, seed=5), expected)
    out = torch.empty(30, 40, device=device).t()
    darex_ext.dare(ft, base, 0.5, seed=5, out=out)
    assert torch.equal(out, expected)


def test_dare_offset_pieces_equal_the_whole(device):
    ft, base = randn(5001, device=device), randn(5001, device=device)
    whole = ref.dare(ft, base, 0.8, seed=2)
    parts = [darex_ext.dare(ft[a:b], base[a:b], 0.8, seed=2, offset=a) for a, b in [(0, 7), (7, 4099), (4099, 5001)]]
    assert torch.equal(torch.cat(parts), whole)


def test_dare_gradients_regenerate_the_mask(device):
    ft = randn(6, 5, dtype=torch.float64, device=device).requires_grad_()
    base = randn(6, 5, dtype=torch.float64, device=device).requires_grad_()
    q = torch.rand(6, dtype=torch.float64, device=device) + 0.2
    torch.autograd.gradcheck(lambda f, b: darex_ext.dare(f, b, 0.5, q, seed=3), (ft, base))
    out = darex_ext.dare(ft, base, 0.5, 0.25, seed=3)
    out.sum().backward()
    mask = darex_ext.keep_mask(ft, 0.5, seed=3).double()
    assert torch.equal(ft.grad, mask * 4.0)
    assert torch.equal(base.grad, 1.0 - mask * 4.0)


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["prune_", "dare", "dare_out", "keep_mask", "kept_abs_sum"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
