"""One argument rule everywhere: q is positive, finite and normal in the accumulation type
(float32 for float32/float16/bfloat16 tensors, float64 for float64) whether it is a scalar or
per row, in the ops and in the storage encoders; meta tensors are refused by name while
FakeTensors (torch.compile, opcheck) keep working."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import darex_ext
from darex_ext import storage

from conftest import randn

F32_TINY = torch.finfo(torch.float32).tiny
F64_TINY = torch.finfo(torch.float64).tiny


def _meta(*shape):
    return torch.empty(shape, device="meta")


@pytest.mark.parametrize("call,name", [
    (lambda: darex_ext.prune_(_meta(3), 0.5), "delta"),
    (lambda: darex_ext.magnitude_prune_(_meta(3, 4), 0.5), "delta"),
    (lambda: darex_ext.wanda_prune_(_meta(3, 4), torch.ones(4), 0.5), "delta"),
    (lambda: darex_ext.structural_prune_(_meta(3, 4), 0.5), "delta"),
    (lambda: darex_ext.topk_mask(_meta(3, 4), 2), "scores"),
    (lambda: darex_ext.dare(_meta(3), _meta(3), 0.5), "finetuned"),
    (lambda: darex_ext.row_moments(_meta(3, 4), torch.ones(4)), "delta"),
    (lambda: storage.compress(_meta(3, 4)), "pruned"),
    (lambda: storage.compress_dare(_meta(3, 4), 0.5, seed=1), "delta"),
], ids=["prune_", "magnitude_prune_", "wanda_prune_", "structural_prune_", "topk_mask", "dare", "row_moments",
        "compress", "compress_dare"])
def test_meta_tensors_are_refused_by_name(call, name):
    with pytest.raises(ValueError, match=rf"^{name} is a meta tensor"):
        call()


def test_fake_tensors_still_pass_the_checks():
    # FakeTensors report the device they stand for, so the wrappers run their fake kernels.
    with FakeTensorMode():
        x = torch.empty(5, 6)
        assert x.device.type == "cpu"
        assert darex_ext.prune_(x, 0.5, seed=1) is x
        assert darex_ext.dare(x, torch.empty(5, 6), 0.5, 0.25, seed=1).shape == (5, 6)
        assert darex_ext.topk_mask(x, 3).dtype == torch.bool


def test_compile_with_scalar_q_and_meta_check_traces(device):
    def step(delta):
        return darex_ext.prune_(delta, 0.5, 0.25, seed=3) * 2

    x = randn(7, 9, device=device)
    expected = darex_ext.prune_(x.clone(), 0.5, 0.25, seed=3) * 2
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x.clone())
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "subnormal", "too large"])
def test_scalar_and_per_row_q_follow_one_rule(dtype, bad):
    x = randn(4, 5, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    info = torch.finfo(acc)
    value = {"subnormal": info.tiny / 4, "too large": float(info.max) * 2 if acc == torch.float32 else 1e308 * 10}.get(
        bad, bad)
    before = x.clone()
    with pytest.raises(ValueError, match=r"^q must be .*normal") as scalar:
        darex_ext.prune_(x, 0.5, value, seed=1)
    rows = torch.tensor([0.5, value, 0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^q must be .* in every row .*normal") as per_row:
        darex_ext.prune_(x, 0.5, rows, seed=1)
    assert str(acc) in str(scalar.value) and str(acc) in str(per_row.value)
    assert torch.equal(x, before)


def test_subnormal_float32_q_rows_are_refused_like_the_scalar():
    # The attack: 1e-40 is subnormal in float32, 1/q = inf, kept entries became inf.
    x = randn(3, 4)
    before = x.clone()
    with pytest.raises(ValueError, match="q must be"):
        darex_ext.prune_(x, 0.5, torch.full((3,), 1e-40), seed=1)
    with pytest.raises(ValueError, match="q must be"):
        darex_ext.prune_(x, 0.5, 1e-40, seed=1)
    with pytest.raises(ValueError, match="q must be"):
        darex_ext.dare(x, randn(3, 4), 0.5, torch.full((3,), 1e-40), seed=1)
    with pytest.raises(ValueError, match="q must be"):
        darex_ext.magnitude_prune_(x, 0.5, q=1e-40)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype,q", [(torch.float32, F32_TINY), (torch.float16, F32_TINY), (torch.float64, F64_TINY),
                                     (torch.float64, 1e-300)], ids=["f32", "f16", "f64-tiny", "f64-1e-300"])
def test_the_smallest_normal_q_is_accepted_and_gives_a_finite_inverse(dtype, q):
    x = torch.full((2, 3), 1e-30, dtype=torch.float64).to(dtype)
    x = torch.where(x == 0, torch.full_like(x, 2 ** -20), x)  # float16: the smallest positives
    for qq in (q, torch.full((2,), q, dtype=torch.float64)):
        out = darex_ext.prune_(x.clone(), 0.0, qq, seed=1)
        if dtype != torch.float16:  # x / q itself overflows float16's range
            assert torch.isfinite(out).all()


def test_compress_validates_p_and_q_by_name():
    pruned = randn(3, 4) * (randn(3, 4).abs() > 1)
    with pytest.raises(ValueError, match=r"^q must be"):
        storage.compress(pruned, q=-1)
    with pytest.raises(ValueError, match=r"^q must be"):
        storage.compress(pruned, q=float("nan"))
    with pytest.raises(ValueError, match=r"^q must be .* in every row"):
        storage.compress(pruned, q=torch.tensor([0.5, 1e-40, 0.5]))
    with pytest.raises(ValueError, match=r"^q must be 1-D with length"):
        storage.compress(pruned, q=torch.ones(4))
    with pytest.raises(TypeError, match=r"^q must be a real number"):
        storage.compress(pruned, q="0.5")
    with pytest.raises(ValueError, match=r"^p \(the drop rate\)"):
        storage.compress(pruned, p=float("nan"))
    with pytest.raises(ValueError, match=r"^p \(the drop rate\)"):
        storage.compress(pruned, p=1.5)
    assert storage.compress(pruned, p=0.5, q=0.25).meta["q"] == 0.25
    assert storage.compress(pruned, p=0.5, q=torch.full((3,), 0.5)).meta["q"] == [0.5] * 3


@pytest.mark.parametrize("fmt", ["seeded", "bitmask", "csr"])
def test_compress_dare_validates_q_by_name(fmt):
    delta = randn(3, 4)
    for bad in (-1.0, 0.0, float("inf"), 1e-40, torch.tensor([0.5, 1e-40, 0.5])):
        with pytest.raises(ValueError, match=r"^q must be"):
            storage.compress_dare(delta, 0.5, bad, seed=1, format=fmt)
    with pytest.raises(ValueError, match=r"^p \(the drop rate\)"):
        storage.compress_dare(delta, float("nan"), seed=1, format=fmt)


def test_a_stored_q_must_be_positive_and_finite():
    x = randn(3, 4)
    sd = storage.compress_dare(x, 0.5, 0.25, seed=1)
    for bad in (-1.0, 0.0, [0.5, -0.5, 0.5], float("nan")):
        with pytest.raises(storage.FormatError, match="'q'"):
            storage.SparseDelta("seeded", sd.shape, sd.dtype, sd.payload, dict(sd.meta, q=bad))
