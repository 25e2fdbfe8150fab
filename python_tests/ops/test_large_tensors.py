"""More than 2^31 elements: int64 indexing end to end (slow; run with --runslow)."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import DEVICES

pytestmark = pytest.mark.slow

N = (1 << 31) + 4099  # past int32, not a multiple of any vector width


@pytest.mark.parametrize("device", DEVICES)
def test_prune_past_int32(device):
    x = torch.empty(N, dtype=torch.bfloat16, device=device)
    x.copy_(torch.arange(1, 65, dtype=torch.bfloat16, device=device).repeat(N // 64 + 1)[:N])
    darex_ext.prune_(x, 0.5, 0.25, seed=77)
    for start in (0, (1 << 31) - 37, N - 4000):  # the middle window straddles 2^31
        window = torch.arange(start, start + 4000, device=device) % 64 + 1
        expected = ref.prune(window.to(torch.bfloat16), 0.5, 0.25, seed=77, offset=start)
        assert torch.equal(x[start:start + 4000], expected)
    del x
    m = darex_ext.keep_mask((N,), 0.9, seed=5, device=device)
    tail = ref.keep_mask((1000,), 0.9, 5, offset=N - 1000, device=device)
    assert torch.equal(m[-1000:], tail)
    kept = int(m.sum())
    assert abs(kept - 0.1 * N) < 5 * (N * 0.09) ** 0.5
