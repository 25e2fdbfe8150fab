"""The seeded storage op (seeded_pack, keep_count, seeded_scatter_) against its reference twin,
statistically, across threads, and under torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import ops as kernels
from darex_ext.storage import compress_dare
from darex_ext import reference as ref

from conftest import randn
from op_samples import check_samples_against_reference

SHAPES = [(), (0,), (1,), (7,), (33,), (0, 5), (6, 0), (3, 5), (17, 129), (4, 3, 65), (2, 1, 1, 9), (5, 64)]


def test_keep_count_binomial():
    # Statistical: the kept fraction is Binomial(n, 1 - p); 6 sigma.
    n, p = 1 << 20, 0.9
    k = kernels.keep_count(torch.empty(n), p, seed=99)
    assert abs(k - n * (1 - p)) < 6 * math.sqrt(n * p * (1 - p))
    assert k == ref.keep_count(n, p, 99)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_seeded_pack_matches_reference(shape, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    x = torch.where(torch.rand(x.shape, device=device) < 0.6, torch.zeros_like(x), x)
    assert torch.equal(kernels.seeded_pack(x, 0.7, 0.4, seed=5, offset=3),
                       ref.seeded_pack(x, 0.7, 0.4, seed=5, offset=3))


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", [(0,), (1,), (65,), (7, 9), (2, 3, 17)], ids=str)
def test_seeded_scatter_matches_reference(accumulate, shape, dtype, device):
    x = darex_ext.prune_(randn(*shape, dtype=dtype, device=device), 0.6, seed=9)
    base = randn(*shape, dtype=dtype, device=device)
    sv = kernels.seeded_pack(x, 0.6, seed=9, offset=2)
    got = kernels.seeded_scatter_(base.clone(), sv, 0.6, seed=9, offset=2, alpha=0.75, accumulate=accumulate)
    assert torch.equal(got, ref.seeded_scatter(base, sv, 0.6, seed=9, offset=2, alpha=0.75,
                                               accumulate=accumulate))


def test_seeded_large_chunks_and_thread_independence():
    # Several parallel chunks with rows crossing chunk boundaries; same bytes for 1 or 2 threads.
    x = randn(1025, 301)
    q = torch.linspace(0.1, 0.9, 1025)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.seeded_pack(x, 0.9, q, seed=3)
        torch.set_num_threads(max(2, old))
        two = kernels.seeded_pack(x, 0.9, q, seed=3)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    assert torch.equal(compress_dare(x, 0.9, q, seed=3).to_dense(), darex_ext.prune_(x.clone(), 0.9, q, seed=3))


def test_compile_fullgraph_decode_and_add(device):
    x = randn(33, 17, device=device)
    sd = compress_dare(x, 0.9, seed=5)
    values = sd.payload["values"]

    def step(base, values):
        out = torch.empty_like(base)
        torch.ops.darex.seeded_scatter_(out, values, 0.9, 5, 0, 1.0, False)
        torch.ops.darex.seeded_scatter_(base, values, 0.9, 5, 0, 1.0, True)
        return out * 2, base + 1

    base = randn(33, 17, device=device)
    expected_base = base + sd.to_dense()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    doubled, shifted = compiled(base, values)
    assert torch.equal(doubled, sd.to_dense() * 2)
    assert torch.equal(shifted, expected_base + 1)


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["seeded_pack", "keep_count", "seeded_scatter_"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
