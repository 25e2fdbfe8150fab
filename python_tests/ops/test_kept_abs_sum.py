"""kept_abs_sum's fixed float64 summation order (docs/mask_spec.md, "Numerics"), bit for bit:
against a plain-Python loop written from the spec's text, against the reference twin, for any
thread count, and CPU vs CUDA; prune_(rescale="l1") then agrees with its twin exactly."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import DTYPES, HAS_CUDA

CHUNK, LANES, GROUP = 65536, 256, 4

SIZES = [0, 1, 3, 1023, 1025, 4097, CHUNK, CHUNK + 1, 3 * CHUNK + 12345]


def wide_data(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Normal data times 2**k for k in [-20, 20]: sums whose value depends on the order."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-20, 21, (n,), generator=gen).double())
    if dtype in (torch.float16, torch.bfloat16):
        x = x.clamp(-6e4, 6e4) if dtype == torch.float16 else x
    return x.to(dtype)


def spec_sum(values: list[float], kept: list[bool]) -> tuple[float, float]:
    """The spec, step by step, in plain Python floats (IEEE float64)."""
    n = len(values)
    sums = []
    for only_kept in (True, False):
        result = 0.0
        for c in range(0, n, CHUNK):
            lanes = [0.0] * LANES
            for i in range(c, min(n, c + CHUNK)):
                if only_kept and not kept[i]:
                    continue
                lanes[((i - c) // GROUP) % LANES] += abs(values[i])
            s = LANES // 2
            while s >= 1:
                for j in range(s):
                    lanes[j] = lanes[j] + lanes[j + s]
                s //= 2
            result += lanes[0]
        sums.append(result)
    return sums[0], sums[1]


def as_bits(t: torch.Tensor) -> list[int]:
    return t.double().cpu().contiguous().view(torch.int64).tolist()


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1, 6])
def test_matches_the_spec_in_plain_python(n, offset, threads):
    x = wide_data(n, torch.float32, seed=n)
    kept = ref.keep_mask((n,), 0.7, 11, offset=offset).tolist()
    want = spec_sum(x.double().tolist(), kept)
    got = torch.ops.darex.kept_abs_sum(x, 0.7, 11, offset)
    assert as_bits(got) == as_bits(torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("n", SIZES)
def test_matches_the_reference_every_dtype(n, dtype, threads):
    x = wide_data(n, dtype, seed=n + 1).reshape(-1, 1) if n else wide_data(0, dtype)
    got = torch.ops.darex.kept_abs_sum(x, 0.9, -3, 5)
    assert as_bits(got) == as_bits(ref.kept_abs_sum(x, 0.9, seed=2**64 - 3, offset=5))


def test_thread_count_never_changes_a_bit():
    x = wide_data(5 * CHUNK + 77, torch.bfloat16, seed=3)
    old = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(as_bits(torch.ops.darex.kept_abs_sum(x, 0.5, 1, 0)))
    finally:
        torch.set_num_threads(old)
    assert results[0] == results[1] == results[2]


def test_the_order_matters_for_this_data():
    # The checks above would be vacuous if any order gave the same bits on this data.
    values = wide_data(3 * CHUNK + 12345, torch.float32, seed=4).double().abs().tolist()
    spec = spec_sum(values, [True] * len(values))[1]
    sequential = 0.0  # not sum(): Python >= 3.12 compensates float sums
    for v in values:
        sequential += v
    pairwise = float(torch.tensor(values, dtype=torch.float64).sum())
    assert spec != sequential or spec != pairwise


def test_nan_is_canonical_and_inf_stays():
    x = wide_data(3000, torch.float32, seed=5)
    x[17] = float("inf")
    got = torch.ops.darex.kept_abs_sum(x, 0.0, 1, 0)
    assert got.tolist() == [math.inf, math.inf]
    x[100] = torch.tensor(0xFFC12345 - 2**32, dtype=torch.int32).view(torch.float32)
    got = torch.ops.darex.kept_abs_sum(x, 0.0, 1, 0)
    assert as_bits(got) == [0x7FF8000000000000] * 2


def test_zero_size_and_all_dropped():
    assert torch.ops.darex.kept_abs_sum(torch.empty(0), 0.5, 1, 0).tolist() == [0.0, 0.0]
    x = wide_data(10, torch.float32)
    kept, total = torch.ops.darex.kept_abs_sum(x, 1.0 - 2**-40, 1, 0).tolist()
    assert kept == 0.0 and total == spec_sum(x.double().tolist(), [True] * 10)[1]


@pytest.mark.parametrize("n", [1, 1001, 2 * CHUNK + 3])
def test_rescale_l1_matches_its_twin_bit_for_bit(n, dtype):
    x = wide_data(n, dtype, seed=6)
    x = torch.where(x == 0, torch.ones_like(x), x)
    got = darex_ext.prune_(x.clone(), 0.9, seed=5, rescale="l1")
    want = ref.prune_l1(x, 0.9, seed=5)
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(got.view(width), want.view(width))


# ---- CPU == CUDA ---------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")


@cuda_only
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES + [64 * CHUNK + 5])
@pytest.mark.parametrize("offset", [0, 1, 6])
def test_cpu_equals_cuda(n, offset, dt):
    x = wide_data(n, dt, seed=n + 7)
    cpu = torch.ops.darex.kept_abs_sum(x, 0.7, 13, offset)
    gpu = torch.ops.darex.kept_abs_sum(x.cuda(), 0.7, 13, offset)
    assert gpu.device.type == "cuda"
    assert as_bits(gpu) == as_bits(cpu)


@cuda_only
@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_rescale_l1_cpu_equals_cuda(dt):
    x = wide_data(3 * CHUNK + 999, dt, seed=8)
    cpu = darex_ext.prune_(x.clone(), 0.9, seed=1, rescale="l1")
    gpu = darex_ext.prune_(x.cuda(), 0.9, seed=1, rescale="l1").cpu()
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(cpu.view(width), gpu.view(width))
