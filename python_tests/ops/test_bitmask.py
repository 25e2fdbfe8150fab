"""The bitmask storage op (bitmask_pack, bitmask_scatter_) against its reference twin (compressed-
tensors' sparse-bitmask layout)."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import ops as kernels
from darex_ext import reference as ref

from conftest import randn
from op_samples import check_samples_against_reference

SHAPES = [(), (0,), (1,), (7,), (33,), (0, 5), (6, 0), (3, 5), (17, 129), (4, 3, 65), (2, 1, 1, 9), (5, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bitmask_pack_matches_reference(shape, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    x = torch.where(torch.rand(x.shape, device=device) < 0.6, torch.zeros_like(x), x)
    for got, want in zip(kernels.bitmask_pack(x), ref.bitmask_pack(x)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", [(0,), (1,), (65,), (7, 9), (2, 3, 17)], ids=str)
def test_bitmask_scatter_matches_reference(accumulate, shape, dtype, device):
    x = darex_ext.prune_(randn(*shape, dtype=dtype, device=device), 0.6, seed=9)
    base = randn(*shape, dtype=dtype, device=device)
    vals, bm, ro = kernels.bitmask_pack(x)
    got = kernels.bitmask_scatter_(base.clone(), vals, bm, ro, alpha=0.75, accumulate=accumulate)
    assert torch.equal(got, ref.bitmask_scatter(base, vals, bm, alpha=0.75, accumulate=accumulate))


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["bitmask_pack", "bitmask_scatter_"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
