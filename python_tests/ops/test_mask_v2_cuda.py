"""Mask spec v2 on CUDA: every v2 op bit for bit equal to the CPU kernel (and so to the twin),
on both sides of p = 0.5, with offsets, per-row q and aliasing outputs. Skips without a GPU."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import ops as kernels
from darex_ext import storage

from conftest import HAS_CUDA, randn

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")

RATES = [0.0, 1e-6, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("n,offset", [(1, 0), (4095, 1), (3 * 4096 + 17, 4090), (300001, 2**40 + 3)])
def test_keep_mask_and_count_cpu_equal_cuda(p, n, offset):
    cpu = darex_ext.keep_mask((n,), p, seed=12345, offset=offset)
    assert torch.equal(darex_ext.keep_mask((n,), p, seed=12345, offset=offset, device="cuda").cpu(), cpu)
    like = torch.empty(n, device="cuda")
    assert kernels.keep_count(like, p, seed=12345, offset=offset) == int(cpu.sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_prune_dare_cpu_equal_cuda(dtype, p):
    x, b = randn(7, 5003, dtype=dtype), randn(7, 5003, dtype=dtype)
    q = torch.linspace(0.2, 0.9, 7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    for qq in (None, q):
        want = darex_ext.prune_(x.clone(), p, qq, seed=3, offset=11)
        got = darex_ext.prune_(x.cuda(), p, None if qq is None else qq.cuda(), seed=3, offset=11)
        assert torch.equal(_bits(got), _bits(want))
        want = darex_ext.dare(x, b, p, qq, seed=3, offset=11)
        got = darex_ext.dare(x.cuda(), b.cuda(), p, None if qq is None else qq.cuda(), seed=3, offset=11)
        assert torch.equal(_bits(got), _bits(want))
    for target in ("base", "finetuned"):  # out aliasing an input
        f, bb = x.cuda(), b.cuda()
        out = bb if target == "base" else f
        darex_ext.dare(f, bb, p, seed=4, out=out)
        assert torch.equal(_bits(out), _bits(darex_ext.dare(x, b, p, seed=4))), target
    got = darex_ext.prune_(x.cuda(), p, seed=2, rescale="l1")
    assert torch.equal(_bits(got), _bits(darex_ext.prune_(x.clone(), p, seed=2, rescale="l1")))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 0.99])
def test_seeded_storage_and_structural_cpu_equal_cuda(dtype, p):
    x = randn(33, 4100, dtype=dtype)
    sd = storage.compress_dare(x, p, seed=8, offset=5)
    sdc = storage.compress_dare(x.cuda(), p, seed=8, offset=5)
    assert torch.equal(_bits(sdc.payload["values"]), _bits(sd.payload["values"]))
    assert torch.equal(_bits(sdc.to_dense()), _bits(sd.to_dense()))
    base = randn(33, 4100, dtype=dtype)
    assert torch.equal(_bits(sdc.add_to_(base.cuda(), 0.7)), _bits(sd.add_to_(base.clone(), 0.7)))
    assert torch.equal(_bits(darex_ext.structural_prune_(x.cuda(), p, dim=1, seed=8)),
                       _bits(darex_ext.structural_prune_(x.clone(), p, dim=1, seed=8)))
