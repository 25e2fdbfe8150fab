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


def _cuda_ops(p: float, mask: str, x: torch.Tensor, b: torch.Tensor) -> dict:
    spec = {"philox": 1, "skip": 2}[mask]
    values = kernels.seeded_pack(x, p, seed=21, offset=4090, mask=mask)
    base = b.clone()
    return {
        "keep_mask": darex_ext.keep_mask(x, p, seed=21, offset=4090, mask=mask),
        "prune_": _bits(darex_ext.prune_(x.clone(), p, seed=21, offset=4090, mask=mask)),
        "prune_l1": _bits(darex_ext.prune_(x.clone(), p, seed=21, rescale="l1", mask=mask)),
        "dare": _bits(darex_ext.dare(x, b, p, seed=21, offset=4090, mask=mask)),
        "dare_out_base": _bits(darex_ext.dare(x, base, p, seed=21, offset=4090, out=base, mask=mask)),
        "kept_abs_sum": _bits(torch.ops.darex.kept_abs_sum(x, p, 21, 4090, spec)),
        "seeded_pack": _bits(values),
        "keep_count": kernels.keep_count(x, p, seed=21, offset=4090, mask=mask),
        "seeded_scatter_": _bits(kernels.seeded_scatter_(torch.empty_like(x), values, p, seed=21, offset=4090,
                                                         mask=mask)),
        "seeded_add": _bits(kernels.seeded_scatter_(b.clone(), values, p, seed=21, offset=4090, alpha=0.7,
                                                    accumulate=True, mask=mask)),
        "structural": _bits(darex_ext.structural_prune_(x.clone(), p, dim=1, seed=21, offset=3, mask=mask)),
    }


def _same(a, b) -> bool:
    a = a.cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    b = b.cpu() if isinstance(b, torch.Tensor) else torch.as_tensor(b)
    return torch.equal(a, b)


@pytest.mark.parametrize("p", [0.124, 0.125, 0.3, 0.5, 0.7, 0.875, 0.876])
def test_hybrid_rule_on_cuda(p):
    # spec v2 is spec v1 for 1/8 <= p <= 7/8 (docs/mask_spec.md, "Version 2"), the walk outside;
    # either way CUDA equals the CPU kernels bit for bit
    x, b = randn(6, 3 * 4096 + 1001), randn(6, 3 * 4096 + 1001)
    cpu_skip = _cuda_ops(p, "skip", x, b)
    cuda_skip = _cuda_ops(p, "skip", x.cuda(), b.cuda())
    cuda_philox = _cuda_ops(p, "philox", x.cuda(), b.cuda())
    for name in cpu_skip:
        assert _same(cuda_skip[name], cpu_skip[name]), name
        if 0.125 <= p <= 0.875:
            assert _same(cuda_skip[name], cuda_philox[name]), name
        elif name != "keep_count":  # two independent counts may coincide
            assert not _same(cuda_skip[name], cuda_philox[name]), name
