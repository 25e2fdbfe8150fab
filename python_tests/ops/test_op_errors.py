"""Bad input raises ValueError/TypeError naming the argument, and touches no tensor."""

from __future__ import annotations

import pytest
import torch

import darex_ext

from conftest import HAS_CUDA, randn

NAN, INF = float("nan"), float("inf")


def _prune_cases():
    return [
        ("p negative", lambda d: darex_ext.prune_(d, -0.1), ValueError, "p"),
        ("p one", lambda d: darex_ext.prune_(d, 1.0), ValueError, "p"),
        ("p nan", lambda d: darex_ext.prune_(d, NAN), ValueError, "p"),
        ("p str", lambda d: darex_ext.prune_(d, "0.5"), TypeError, "p"),
        ("p bool", lambda d: darex_ext.prune_(d, True), TypeError, "p"),
        ("q zero", lambda d: darex_ext.prune_(d, 0.5, 0.0), ValueError, "q"),
        ("q negative", lambda d: darex_ext.prune_(d, 0.5, -1.0), ValueError, "q"),
        ("q nan", lambda d: darex_ext.prune_(d, 0.5, NAN), ValueError, "q"),
        ("q inf", lambda d: darex_ext.prune_(d, 0.5, INF), ValueError, "q"),
        ("q tiny", lambda d: darex_ext.prune_(d, 0.5, 1e-45), ValueError, "q"),
        ("q rows length", lambda d: darex_ext.prune_(d, 0.5, torch.ones(3)), ValueError, "q"),
        ("q rows 2-d", lambda d: darex_ext.prune_(d, 0.5, torch.ones(4, 1)), ValueError, "q"),
        ("q rows int", lambda d: darex_ext.prune_(d, 0.5, torch.ones(4, dtype=torch.int32)), TypeError, "q"),
        ("q rows zero", lambda d: darex_ext.prune_(d, 0.5, torch.tensor([1.0, 0.0, 1.0, 1.0])), ValueError, "q"),
        ("q rows nan", lambda d: darex_ext.prune_(d, 0.5, torch.tensor([1.0, NAN, 1.0, 1.0])), ValueError, "q"),
        ("q rows inf", lambda d: darex_ext.prune_(d, 0.5, torch.tensor([1.0, INF, 1.0, 1.0])), ValueError, "q"),
        ("rescale bad", lambda d: darex_ext.prune_(d, 0.5, rescale="l2"), ValueError, "rescale"),
        ("rescale l1 with q", lambda d: darex_ext.prune_(d, 0.5, 0.3, rescale="l1"), ValueError, "q"),
        ("seed negative", lambda d: darex_ext.prune_(d, 0.5, seed=-1), ValueError, "seed"),
        ("seed too big", lambda d: darex_ext.prune_(d, 0.5, seed=2**64), ValueError, "seed"),
        ("seed float", lambda d: darex_ext.prune_(d, 0.5, seed=1.5), TypeError, "seed"),
        ("offset negative", lambda d: darex_ext.prune_(d, 0.5, offset=-4), ValueError, "offset"),
    ]


@pytest.mark.parametrize("name,call,exc,arg", _prune_cases(), ids=[c[0] for c in _prune_cases()])
def test_prune_rejects_bad_arguments(name, call, exc, arg):
    delta = randn(4, 5)
    before = delta.clone()
    with pytest.raises(exc, match=arg):
        call(delta)
    assert torch.equal(delta, before)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_tensors_are_rejected(dtype):
    t = torch.ones(5, dtype=dtype)
    with pytest.raises(TypeError, match="delta"):
        darex_ext.prune_(t, 0.5)
    with pytest.raises(TypeError, match="finetuned"):
        darex_ext.dare(t, t, 0.5)
    assert torch.equal(t, torch.ones(5, dtype=dtype))


def test_non_tensor_is_rejected():
    with pytest.raises(TypeError, match="delta"):
        darex_ext.prune_([1.0, 2.0], 0.5)


def test_leaf_requiring_grad_is_rejected():
    w = randn(6).requires_grad_()
    before = w.detach().clone()
    with pytest.raises(ValueError, match="delta"):
        darex_ext.prune_(w, 0.5)
    assert torch.equal(w.detach(), before)


def test_dare_mismatches():
    a = randn(4, 5)
    with pytest.raises(ValueError, match="shape"):
        darex_ext.dare(a, randn(5, 4), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        darex_ext.dare(a, randn(4, 5, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="out"):
        darex_ext.dare(a, randn(4, 5), 0.5, out=torch.empty(3))
    with pytest.raises(TypeError, match="out"):
        darex_ext.dare(a, randn(4, 5), 0.5, out=torch.empty(4, 5, dtype=torch.float16))
    big = randn(10)
    with pytest.raises(ValueError, match="overlap"):
        darex_ext.dare(big[:5], big[5:], 0.5, out=big[2:7])


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_device_mismatches():
    a = randn(4, 5)
    with pytest.raises(ValueError, match="device"):
        darex_ext.dare(a, a.cuda(), 0.5)
    with pytest.raises(ValueError, match="q"):
        darex_ext.prune_(a, 0.5, torch.ones(4, device="cuda"))


def test_keep_mask_bad_shape():
    with pytest.raises(TypeError, match="like_or_shape"):
        darex_ext.keep_mask("abc", 0.5)
    with pytest.raises(ValueError, match="like_or_shape"):
        darex_ext.keep_mask((3, -1), 0.5)
    with pytest.raises(ValueError, match="p"):
        darex_ext.keep_mask((3,), 1.5)


def test_direct_op_calls_are_checked_too():
    # torch.ops.darex.* bypass the wrappers; the kernels still refuse bad input cleanly.
    x = randn(4, 5)
    before = x.clone()
    with pytest.raises(ValueError, match="p must be"):
        torch.ops.darex.prune_(x, 1.5, 0, 0, None, 0.5)
    with pytest.raises(ValueError, match="q must"):
        torch.ops.darex.prune_(x, 0.5, 0, 0, torch.ones(3), 1.0)
    with pytest.raises(TypeError, match="q must be"):
        torch.ops.darex.prune_(x, 0.5, 0, 0, torch.ones(4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="offset"):
        torch.ops.darex.prune_(x, 0.5, 0, -1, None, 0.5)
    with pytest.raises(TypeError, match="delta must be"):
        torch.ops.darex.prune_(torch.ones(3, dtype=torch.int32), 0.5, 0, 0, None, 0.5)
    assert torch.equal(x, before)
