"""torch.library.opcheck for every op, and a torch.compile(fullgraph=True) smoke test."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import randn


def _cases(device):
    x = randn(7, 9, device=device)
    b = randn(7, 9, device=device)
    q = torch.rand(7, device=device) + 0.1
    return [
        (torch.ops.darex.prune_.default, (x.clone(), 0.5, 3, 0, None, 0.5)),
        (torch.ops.darex.prune_.default, (x.clone(), 0.9, -5, 2, q, 1.0)),
        (torch.ops.darex.dare.default, (x, b, 0.5, 3, 0, None, 0.5)),
        (torch.ops.darex.dare.default, (x, b, 0.5, 3, 1, q, 1.0)),
        (torch.ops.darex.dare_out.default, (x, b, 0.5, 3, 0, None, 0.5, torch.empty_like(x))),
        (torch.ops.darex.keep_mask.default, (x, 0.3, 4, 0)),
        (torch.ops.darex.kept_abs_sum.default, (x, 0.3, 4, 0)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case, device):
    op, args = _cases(device)[case]
    torch.library.opcheck(op, args)


def test_opcheck_dare_autograd(device):
    ft = randn(5, 6, dtype=torch.float64, device=device).requires_grad_()
    base = randn(5, 6, dtype=torch.float64, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.darex.dare.default, (ft, base, 0.5, 3, 0, None, 0.5))


def test_compile_fullgraph(device):
    def step(ft, base, delta):
        merged = darex_ext.dare(ft, base, 0.9, 0.2, seed=5)
        darex_ext.prune_(delta, 0.5, seed=6)
        return merged * 2, delta + 1, darex_ext.keep_mask(delta, 0.5, seed=6)

    ft, base, delta = (randn(33, 17, device=device) for _ in range(3))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    d_ref = delta.clone()
    merged, shifted, mask = compiled(ft, base, delta)
    assert torch.equal(merged, ref.dare(ft, base, 0.9, 0.2, seed=5) * 2)
    assert torch.equal(delta, ref.prune(d_ref, 0.5, seed=6))
    assert torch.equal(shifted, delta + 1)
    assert torch.equal(mask, ref.keep_mask(delta.shape, 0.5, 6, device=device))
