"""positions_add_ / positions_put_ (the DeltaBank's kept-position ops): bit for bit against the
twin in every dtype (NaN payloads, -0.0 and subnormals in the target), a round trip that puts the
target back exactly, threads and sizes, and bad positions refused before any write."""

from __future__ import annotations

import pytest
import torch

from darex_ext import reference as ref
from darex_ext.ops import positions_add_, positions_put_

from conftest import DTYPES, randn

INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
SPECIAL = {  # a signalling NaN with payload, -0.0, the smallest subnormal, -inf
    torch.bfloat16: [0x7F81, -0x8000, 0x0001, -0x0080],
    torch.float16: [0x7C01, -0x8000, 0x0001, -0x0400],
    torch.float32: [0x7F800001, -0x80000000, 0x00000001, -0x00800000],
    torch.float64: [0x7FF0000000000001, -0x8000000000000000, 0x1, -0x0010000000000000],
}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT[t.element_size()])


def special(n: int, dtype, device) -> torch.Tensor:
    t = randn(n, dtype=dtype, device=device)
    b = t.view(INT[t.element_size()])
    for j, i in enumerate(range(0, n, 3)):
        b[i] = SPECIAL[dtype][j % 4]
    return t


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("n,k", [(1, 1), (7, 0), (1000, 37), (300001, 3000), (70000, 70000)])
def test_add_then_put_is_the_twin_and_restores_the_bits(dtype, n, k, device):
    target = special(n, dtype, device)
    pos = torch.randperm(n, device=device)[:k].sort().values
    vals = randn(k, dtype=dtype, device=device)
    vals.view(INT[vals.element_size()])[::5] = SPECIAL[dtype][0]  # NaN values too
    want, want_saved = ref.positions_add(target, pos, vals)
    before = bits(target).clone()
    saved = positions_add_(target, pos, vals)
    assert torch.equal(bits(saved), bits(want_saved))
    assert torch.equal(bits(target), bits(want))
    assert torch.equal(bits(ref.positions_put(target, pos, saved)), before)
    positions_put_(target, pos, saved)
    assert torch.equal(bits(target), before)


def test_threads_do_not_change_the_result():
    n, k = 1 << 20, 20000
    target = randn(n)
    pos = torch.randperm(n)[:k].sort().values
    vals = randn(k)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t = target.clone()
            saved = positions_add_(t, pos, vals)
            results.append((t, saved))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("bad", ["unsorted", "duplicate", "negative", "past the end"])
def test_bad_positions_refused_before_any_write(bad, device):
    target = randn(50, device=device)
    pos = {"unsorted": [1, 5, 3], "duplicate": [1, 5, 5], "negative": [-1, 2, 3],
           "past the end": [1, 2, 50]}[bad]
    pos = torch.tensor(pos, dtype=torch.int64, device=device)
    before = target.clone()
    with pytest.raises(ValueError, match="positions"):
        positions_add_(target, pos, randn(3, device=device))
    with pytest.raises(ValueError, match="positions"):
        positions_put_(target, pos, randn(3, device=device))
    assert torch.equal(target, before)


def test_argument_errors_name_the_argument():
    t = randn(10)
    pos = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="positions must be int64"):
        positions_add_(t, pos.int(), randn(2))
    with pytest.raises(TypeError, match="values must have target's dtype"):
        positions_add_(t, pos, randn(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="values must be 1-D with 2"):
        positions_add_(t, pos, randn(3))
    with pytest.raises(ValueError, match="saved must be a contiguous 1-D tensor of 2"):
        positions_put_(t, pos, randn(3))
    with pytest.raises(ValueError, match="target must be contiguous"):
        positions_add_(randn(4, 5).t(), pos, randn(2))
    with pytest.raises(TypeError, match="target must be"):
        positions_add_([1.0], pos, randn(2))
