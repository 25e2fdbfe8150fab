"""torch.library.opcheck for every dispatcher op, generated from the shared samples
(python_tests/op_samples.py), and a torch.compile(fullgraph=True) smoke test."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import randn
from op_samples import SAMPLE_COUNTS, SAMPLES, samples

ALL_CASES = [(op, i) for op, n in SAMPLE_COUNTS.items() for i in range(n)]


@pytest.mark.parametrize("op,case", ALL_CASES, ids=[f"{op}-{i}" for op, i in ALL_CASES])
def test_opcheck(op, case, device):
    sample = samples(op, device)[case]
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args)
    torch.library.opcheck(getattr(torch.ops.darex, op).default, args)


def test_every_dispatcher_op_has_samples():
    # A new op without samples would go unchecked: the registered darex ops must equal the samples.
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("darex::")}
    assert registered == set(SAMPLES), (registered ^ set(SAMPLES))


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
