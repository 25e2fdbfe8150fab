"""algorithms.prune_tensor: every method equals the op it names, bit for bit; bad methods and
argument combinations raise."""

from __future__ import annotations

import pytest
import torch

import darex_ext
import darex_ext.algorithms
from darex_ext.algorithms import PRUNE_METHODS, analytic_q, prune_tensor, tensor_q

from conftest import randn


def _bits_equal(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                                              b.view(torch.int16 if b.element_size() == 2 else torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_each_method_is_its_op(dtype):
    d = randn(16, 24, dtype=dtype)
    act = torch.rand(24) + 0.1
    x_mean = randn(24)
    cases = {
        "dare": (dict(seed=3), lambda t: darex_ext.prune_(t, 0.9, seed=3)),
        "darex-q": (dict(q=0.2, seed=3), lambda t: darex_ext.prune_(t, 0.9, 0.2, seed=3)),
        "magnitude": (dict(q=0.5), lambda t: darex_ext.magnitude_prune_(t, 0.9, q=0.5)),
        "wanda": (dict(act_norm=act), lambda t: darex_ext.wanda_prune_(t, act, 0.9)),
        "dppa": (dict(drop_rate=0.7), lambda t: darex_ext.algorithms.dppa_prune_(t, 0.7)),
    }
    assert set(cases) == set(PRUNE_METHODS)
    for method, (kwargs, op) in cases.items():
        assert _bits_equal(prune_tensor(d.clone(), method, 0.9, **kwargs), op(d.clone())), method
    # analytic q from the mean input; non-matrices fall back to the given q
    q = analytic_q(d, x_mean, 0.9)
    assert _bits_equal(prune_tensor(d.clone(), "darex-q", 0.9, x_mean=x_mean, seed=3),
                       darex_ext.prune_(d.clone(), 0.9, q, seed=3))
    v = randn(24, dtype=dtype)
    assert tensor_q(v, 0.9, 0.3, x_mean=x_mean) == 0.3
    # wanda without statistics (a bias, a norm) is magnitude
    assert _bits_equal(prune_tensor(v.clone(), "wanda", 0.5), darex_ext.magnitude_prune_(v.clone(), 0.5))
    # the random methods' rescale modes
    assert _bits_equal(prune_tensor(d.clone(), "dare", 0.9, seed=4, rescale="l1"),
                       darex_ext.prune_(d.clone(), 0.9, seed=4, rescale="l1"))


def test_bad_arguments():
    d = randn(4, 4)
    with pytest.raises(ValueError, match="method"):
        prune_tensor(d, "ties", 0.5)
    with pytest.raises(ValueError, match="darex-q"):
        prune_tensor(d, "dare", 0.5, q=0.3)
    with pytest.raises(ValueError, match="rescale"):
        prune_tensor(d, "magnitude", 0.5, rescale="l1")
