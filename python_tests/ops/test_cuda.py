"""CPU == CUDA bit for bit (skipped cleanly without a GPU or a CUDA build)."""

from __future__ import annotations

import pytest
import torch

import darex_ext

from conftest import DTYPES, HAS_CUDA, randn
from op_samples import SAMPLE_COUNTS, same_result, samples

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", [1, 3, 4097, (1 << 20) + 3])
@pytest.mark.parametrize("offset", [0, 1, 6])
def test_cpu_equals_cuda(dtype, numel, offset):
    x = randn(numel, dtype=dtype)
    b = randn(numel, dtype=dtype)
    cpu = darex_ext.prune_(x.clone(), 0.9, 0.3, seed=2**40 + 1, offset=offset)
    gpu = darex_ext.prune_(x.cuda(), 0.9, 0.3, seed=2**40 + 1, offset=offset)
    assert torch.equal(cpu, gpu.cpu())
    assert torch.equal(darex_ext.dare(x, b, 0.5, seed=3, offset=offset),
                       darex_ext.dare(x.cuda(), b.cuda(), 0.5, seed=3, offset=offset).cpu())
    assert torch.equal(darex_ext.keep_mask(x, 0.5, seed=4, offset=offset),
                       darex_ext.keep_mask(x.cuda(), 0.5, seed=4, offset=offset).cpu())


def test_per_row_q_cpu_equals_cuda():
    x = randn(300, 77)
    q = torch.rand(300) + 0.05
    assert torch.equal(darex_ext.prune_(x.clone(), 0.8, q, seed=1),
                       darex_ext.prune_(x.cuda(), 0.8, q.cuda(), seed=1).cpu())


def test_misaligned_views_cpu_equals_cuda():
    x = randn(1001)
    cpu = darex_ext.prune_(x.clone()[1:], 0.5, seed=2)
    gpu = darex_ext.prune_(x.cuda()[1:], 0.5, seed=2)
    assert torch.equal(cpu, gpu.cpu())


def test_l1_cpu_close_to_cuda():
    x = randn(100, 100)
    torch.testing.assert_close(darex_ext.prune_(x.clone(), 0.9, seed=1, rescale="l1"),
                               darex_ext.prune_(x.cuda(), 0.9, seed=1, rescale="l1").cpu(), rtol=1e-6, atol=0)


def test_other_device_index_and_stream():
    x = randn(4096).cuda()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = darex_ext.prune_(x.clone(), 0.5, seed=9)
    s.synchronize()
    assert torch.equal(y.cpu(), darex_ext.prune_(x.cpu(), 0.5, seed=9))


# ---- every dispatcher op on every shared sample (python_tests/op_samples.py): CPU == CUDA, bit
# for bit (the declared inexact float64 reductions to 1e-12, as against the reference).
ALL_CASES = [(op, i) for op, n in SAMPLE_COUNTS.items() for i in range(n)]


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


@pytest.mark.parametrize("op,case", ALL_CASES, ids=[f"{op}-{i}" for op, i in ALL_CASES])
def test_every_op_cpu_equals_cuda(op, case):
    sample = samples(op, "cpu")[case]
    fn = getattr(torch.ops.darex, op).default
    cpu_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args)
    gpu_args = _to(sample.args, "cuda")
    cpu, gpu = fn(*cpu_args), fn(*gpu_args)
    if sample.mutated is not None:
        cpu, gpu = cpu_args[sample.mutated], gpu_args[sample.mutated]
    assert same_result(_to(gpu, "cpu"), cpu, sample.exact), f"darex::{op} sample {case}: CUDA differs from CPU"
