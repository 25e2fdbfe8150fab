"""dare (fused base + pruned delta) against the reference; out=, aliasing and autograd."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import randn


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


def test_out_argument_and_aliasing(device):
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


def test_non_contiguous_inputs_and_out(device):
    ft, base = randn(30, 40, device=device).t(), randn(30, 40, device=device).t()
    expected = ref.dare(ft.contiguous(), base.contiguous(), 0.5, seed=5)
    assert torch.equal(darex_ext.dare(ft, base, 0.5, seed=5), expected)
    out = torch.empty(30, 40, device=device).t()
    darex_ext.dare(ft, base, 0.5, seed=5, out=out)
    assert torch.equal(out, expected)


def test_offset_pieces_equal_the_whole(device):
    ft, base = randn(5001, device=device), randn(5001, device=device)
    whole = ref.dare(ft, base, 0.8, seed=2)
    parts = [darex_ext.dare(ft[a:b], base[a:b], 0.8, seed=2, offset=a) for a, b in [(0, 7), (7, 4099), (4099, 5001)]]
    assert torch.equal(torch.cat(parts), whole)


def test_gradients_regenerate_the_mask(device):
    ft = randn(6, 5, dtype=torch.float64, device=device).requires_grad_()
    base = randn(6, 5, dtype=torch.float64, device=device).requires_grad_()
    q = torch.rand(6, dtype=torch.float64, device=device) + 0.2
    torch.autograd.gradcheck(lambda f, b: darex_ext.dare(f, b, 0.5, q, seed=3), (ft, base))
    out = darex_ext.dare(ft, base, 0.5, 0.25, seed=3)
    out.sum().backward()
    mask = darex_ext.keep_mask(ft, 0.5, seed=3).double()
    assert torch.equal(ft.grad, mask * 4.0)
    assert torch.equal(base.grad, 1.0 - mask * 4.0)
