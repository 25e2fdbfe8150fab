"""The mergekit `sparsify` drop-in against installed mergekit's own: exact for magnitude (every
dtype, mergekit's count, the norm guard), in law for random, gradients as mergekit's."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("mergekit")
import mergekit.sparsify as mks  # noqa: E402

import darex_ext  # noqa: E402
import darex_ext.integrations.mergekit as dm  # noqa: E402
from conftest import randn  # noqa: E402
from darex_ext.algorithms import merge_sparsify  # noqa: E402
from merge_samples import distinct_magnitudes, distinct_values  # noqa: E402

NORMS = [None, mks.RescaleNorm.l1, mks.RescaleNorm.l2, mks.RescaleNorm.linf]
LOW = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
MAG = mks.SparsificationMethod.magnitude
RND = mks.SparsificationMethod.random


def _tie_free(shape, dtype, seed=0):
    t = distinct_values(shape, dtype, torch.Generator().manual_seed(seed))
    assert distinct_magnitudes(t)
    return t


# 0.37 * 91 = 33.67 and 0.3 * 91 = 27.3: the fraction above and below 0.5, where mergekit's
# int() and a rounded count differ; 0.001 keeps max(1, 0) = 1.
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 0.37, 0.5, 0.9, 1.0, 1.5])
@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("shape", [(1,), (91,), (7, 13), (40, 25)])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_magnitude_sparsify_is_exactly_mergekit(density, norm, shape, dtype):
    t = _tie_free(shape, dtype)
    ours = dm.sparsify(t, density, MAG, rescale_norm=norm)
    theirs = mks.sparsify(t, density, MAG, rescale_norm=norm)
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)
    n = t.numel()
    want_kept = n if density >= 1 else (0 if density <= 0 else max(1, int(density * n)))
    assert int((ours != 0).sum()) == want_kept
    if density >= 1:
        assert ours is t  # pass-through, as mergekit


def test_keep_count_is_mergekits_not_rounded():
    assert merge_sparsify.keep_count(0.37, 91) == 33  # round would keep 34
    assert merge_sparsify.keep_count(0.001, 91) == 1
    assert merge_sparsify.keep_count(0.3, 1) == 1
    assert merge_sparsify.keep_count(0.5, 0) == 0


def test_magnitude_with_tied_magnitudes_keeps_the_count_and_the_lower_index():
    t = torch.tensor([1.0, -3.0, 2.0, 3.0, -2.0, 3.0, 0.5])
    out = dm.sparsify(t, 0.43, MAG)  # int(0.43 * 7) = 3: the three 3.0s
    assert out.tolist() == [0.0, -3.0, 0.0, 3.0, 0.0, 3.0, 0.0]
    out = dm.sparsify(t, 0.58, MAG)  # 4: the three 3.0s and the first of the tied 2.0s
    assert out.tolist() == [0.0, -3.0, 2.0, 3.0, 0.0, 3.0, 0.0]
    theirs = mks.sparsify(t, 0.58, MAG)
    assert int((theirs != 0).sum()) == 4 and torch.equal(theirs.abs().sort().values, out.abs().sort().values)


@pytest.mark.parametrize("norm", NORMS[1:], ids=str)
@pytest.mark.parametrize("method", [MAG, RND], ids=str)
def test_norm_guard_skips_the_rescale_of_tiny_tensors(norm, method):
    # every norm below 1e-7: mergekit returns the masked tensor unscaled
    t = randn(8, 8) * 1e-10
    out = dm.sparsify(t, 0.5, method, rescale_norm=norm, seed=3)
    kept = out != 0
    assert 0 < int(kept.sum()) < t.numel()
    assert torch.equal(out[kept], t[kept])
    if method == MAG:
        assert torch.equal(out, mks.sparsify(t, 0.5, method, rescale_norm=norm))


@pytest.mark.parametrize("shape", [(0,), (2, 0)])
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_empty_tensors(shape, norm):
    t = torch.empty(shape)
    for method in (MAG, RND):
        assert dm.sparsify(t, 0.5, method, rescale_norm=norm).shape == t.shape


@pytest.mark.parametrize("density", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_random_sparsify_matches_mergekit_in_law(density, norm, dtype):
    x = randn(300, 400, dtype=dtype)
    n = x.numel()
    for fn in (dm.sparsify, mks.sparsify):
        out = fn(x, density, RND, rescale_norm=norm)
        assert out.dtype == dtype
        kept = out != 0
        assert abs(int(kept.sum()) - n * density) <= 6 * math.sqrt(n * density * (1 - density))
        ratio = out[kept].double() / x[kept].double()
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=tol)  # one scale for the tensor
        if norm == mks.RescaleNorm.l1:
            torch.testing.assert_close(out.double().abs().sum(), x.double().abs().sum(), rtol=tol, atol=0)
        elif norm == mks.RescaleNorm.l2:
            torch.testing.assert_close(out.double().norm(), x.double().norm(), rtol=tol, atol=0)
        elif norm is None:
            assert torch.equal(out[kept], x[kept])


def test_random_density_edges():
    x = randn(20, 30)
    assert dm.sparsify(x, 1.0, RND) is x
    assert torch.equal(dm.sparsify(x, 0.0, RND, rescale_norm="l1"), torch.zeros_like(x))
    with pytest.raises(ValueError, match="density"):
        dm.sparsify(x, -0.1, RND)
    with pytest.raises(ValueError, match="method"):
        dm.sparsify(x, 0.5, "sideways")
    with pytest.raises(ValueError, match="rescale"):
        dm.sparsify(x, 0.5, MAG, rescale_norm="l3")
    with pytest.raises(TypeError, match="tensor"):
        dm.sparsify(x.to(torch.int32), 0.5, MAG)


def test_random_sparsify_follows_torch_seed_and_explicit_seed():
    x = randn(50, 50)
    torch.manual_seed(3)
    a = dm.sparsify(x, 0.3, "random")
    torch.manual_seed(3)
    b = dm.sparsify(x, 0.3, "random")
    assert torch.equal(a, b)
    assert torch.equal(dm.sparsify(x, 0.3, "random", seed=9), dm.sparsify(x, 0.3, "random", seed=9))
    assert not torch.equal(dm.sparsify(x, 0.3, "random", seed=9), dm.sparsify(x, 0.3, "random", seed=10))
    # the mask is darex's documented one
    keep = darex_ext.keep_mask(x, 0.7, seed=9)
    assert torch.equal(dm.sparsify(x, 0.3, "random", seed=9), torch.where(keep, x, 0.0))


# ---- gradients
def _grads(fn, x: torch.Tensor, probe: torch.Tensor):
    leaf = x.detach().clone().requires_grad_(True)
    out = fn(leaf)
    (grad,) = torch.autograd.grad((out * probe).sum(), leaf)
    return out.detach(), grad


@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("density", [0.001, 0.37, 0.9])
def test_magnitude_gradients_equal_mergekits(norm, density):
    x = randn(7, 13, dtype=torch.float64)
    probe = randn(7, 13, dtype=torch.float64)
    ours = _grads(lambda t: dm.sparsify(t, density, MAG, rescale_norm=norm), x, probe)
    theirs = _grads(lambda t: mks.sparsify(t, density, MAG, rescale_norm=norm), x, probe)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=1e-12)
    # the no-grad (in-place kernel) path gives the same values
    assert torch.equal(dm.sparsify(x, density, MAG, rescale_norm=norm), ours[0])
    leaf = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: dm.sparsify(t, density, MAG, rescale_norm=norm), (leaf,))


@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_random_gradients_are_mergekits_for_the_same_mask(norm):
    # mergekit's own rescaled_masked_tensor with darex's mask is the stock code given the mask
    x = randn(9, 11, dtype=torch.float64)
    probe = randn(9, 11, dtype=torch.float64)
    mask = darex_ext.keep_mask(x, 0.6, seed=21).to(x.dtype)
    ours = _grads(lambda t: dm.sparsify(t, 0.4, RND, rescale_norm=norm, seed=21), x, probe)
    theirs = _grads(lambda t: mks.rescaled_masked_tensor(t, mask, norm), x, probe)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-15, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dm.sparsify(x, 0.4, RND, rescale_norm=norm, seed=21), ours[0], rtol=1e-14, atol=0)
    leaf = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: dm.sparsify(t, 0.4, RND, rescale_norm=norm, seed=21), (leaf,))


def test_dare_q_rescale_gradient_is_mask_over_q():
    x = randn(6, 10, dtype=torch.float64)
    keep = darex_ext.keep_mask(x, 0.7, seed=4)
    out, grad = _grads(lambda t: merge_sparsify.random(t, 0.3, "q", seed=4), x, torch.ones_like(x))
    torch.testing.assert_close(grad, keep.double() / 0.3, rtol=1e-15, atol=0)
    assert torch.equal(out, merge_sparsify.random(x, 0.3, "q", seed=4))


def test_install_patches_and_uninstall_restores():
    import mergekit.merge_methods.generalized_task_arithmetic as gta

    original = mks.sparsify
    dm.install()
    try:
        assert gta.sparsify is dm.sparsify and mks.sparsify is dm.sparsify
    finally:
        dm.uninstall()
    assert mks.sparsify is original and gta.sparsify is original


@pytest.mark.parametrize("method,kw", [("magnitude_outliers", {"gamma": 0.05}), ("della_magprune", {"epsilon": 0.1})])
def test_breadcrumbs_and_della_route_to_darex(method, kw, monkeypatch):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    import darex_ext.algorithms.sparsify as natives

    calls = []
    real = getattr(natives, method)
    monkeypatch.setattr(natives, method, lambda *a, **k: calls.append(k) or real(*a, **k))
    x = randn(20, 30)
    dm.sparsify(x, 0.5, method, rescale_norm=mks.RescaleNorm.l1, seed=7, **kw)
    assert len(calls) == 1 and calls[0]["rescale_norm"] == "l1"
    if method == "della_magprune":
        assert calls[0]["seed"] == 7
