"""row_moments (the fused pass of analytic q) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from darex_ext import reference as ref
from darex_ext.ops import row_moments

from conftest import randn
from op_samples import check_samples_against_reference


def _check(delta, x, bias=None):
    s, q = row_moments(delta, x, bias)
    rs, rq = ref.row_moments(delta, x, bias)
    assert s.dtype == q.dtype == torch.float64 and s.shape == q.shape == (delta.shape[0],)
    assert s.device == delta.device
    # S cancels: compare it against the scale of its terms, not its own (possibly tiny) value.
    c = delta.to(torch.float64) * x.to(torch.float64)
    scale = c.abs().sum(dim=1) + (bias.to(torch.float64).abs() if bias is not None else 0)
    assert torch.all((s - rs).abs() <= 1e-13 * scale + 1e-300)
    assert torch.allclose(q, rq, rtol=1e-13, atol=0)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 0), (7, 33), (65, 1001), (2, 4099)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(shape, with_bias, dtype, device):
    delta = randn(*shape, dtype=dtype, device=device)
    x = randn(shape[1], device=device)
    bias = randn(shape[0], device=device) if with_bias else None
    _check(delta, x, bias)


def test_bias_is_one_more_column(device):
    delta = randn(9, 17, dtype=torch.float64, device=device)
    x, b = randn(17, dtype=torch.float64, device=device), randn(9, dtype=torch.float64, device=device)
    s, q = row_moments(delta, x, b)
    s2, q2 = row_moments(torch.cat([delta, b[:, None]], 1), torch.cat([x, torch.ones(1, dtype=x.dtype, device=device)]))
    assert torch.allclose(s, s2, rtol=1e-14, atol=1e-14) and torch.allclose(q, q2, rtol=1e-14)


def test_non_contiguous_and_side_dtypes(device):
    base = randn(40, 30, device=device)
    delta = base.t()  # [30, 40], not contiguous
    x = randn(40, dtype=torch.float16, device=device)
    _check(delta, x, randn(30, dtype=torch.bfloat16, device=device))


def test_values_are_not_trivial(device):
    # Hand-computed: c = [[1*2, -3*0.5], [4*2, 0]], bias [1, -1].
    delta = torch.tensor([[1.0, -3.0], [4.0, 0.0]], device=device)
    x = torch.tensor([2.0, 0.5], device=device)
    s, q = row_moments(delta, x, torch.tensor([1.0, -1.0], device=device))
    assert s.tolist() == [2.0 - 1.5 + 1.0, 8.0 - 1.0]
    assert q.tolist() == [4.0 + 2.25 + 1.0, 64.0 + 1.0]


def test_thread_count_does_not_change_the_result():
    delta, x = randn(300, 777), randn(777)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = row_moments(delta, x)
        torch.set_num_threads(max(2, threads))
        many = row_moments(delta, x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_opcheck(device):
    delta = randn(7, 9, device=device)
    x = randn(9, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.darex.row_moments.default, (delta, x, None))
    torch.library.opcheck(torch.ops.darex.row_moments.default, (delta, x, randn(7, dtype=torch.float64, device=device)))


def test_compile_fullgraph(device):
    delta, x = randn(5, 6, device=device), randn(6, device=device)
    compiled = torch.compile(lambda d, v: row_moments(d, v), fullgraph=True, backend="aot_eager")
    s, q = compiled(delta, x)
    rs, rq = ref.row_moments(delta, x)
    assert torch.allclose(s, rs, rtol=1e-12, atol=1e-12) and torch.allclose(q, rq, rtol=1e-12)


def test_bad_arguments():
    d, x = randn(4, 5), randn(5)
    with pytest.raises(TypeError, match="delta"):
        row_moments([[1.0]], x)
    with pytest.raises(TypeError, match="delta"):
        row_moments(d.to(torch.int32), x)
    with pytest.raises(ValueError, match="delta"):
        row_moments(randn(20), x)
    with pytest.raises(ValueError, match="x must be 1-D of length 5"):
        row_moments(d, randn(4))
    with pytest.raises(TypeError, match="x must be a floating"):
        row_moments(d, torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="bias must be 1-D of length 4"):
        row_moments(d, x, randn(5))
    # The C++ entry checks hold for direct dispatcher calls too.
    with pytest.raises(TypeError, match="x must be float64"):
        torch.ops.darex.row_moments(d, x, None)
    with pytest.raises(ValueError, match="bias must be 1-D"):
        torch.ops.darex.row_moments(d, x.double(), torch.zeros(3, dtype=torch.float64))


# ---- the shared samples (python_tests/op_samples.py) against the reference twin
@pytest.mark.parametrize("op", ["row_moments"])
def test_samples_match_reference(op, device):
    check_samples_against_reference(op, device)
