"""Files written by the last release before mask spec v2 (python_tests/fixtures/mask_v1, made
once by make_mask_v1_fixture.py) decode bit for bit forever, and `darex apply` of its seeded
delta rebuilds exactly the model its `--format dense` prune wrote."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from darex_ext import prune_, storage
from darex_ext.storage import FormatError
from darex_ext.pipeline.apply import apply_delta
from darex_ext.reference import keep_mask as reference_keep_mask

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mask_v1")
NAMES = ["f32_odd", "bf16_rows", "f16_3d", "f64_q", "f32_row_q", "f32_offset_piece", "bf16_p0"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.fixture(scope="module")
def dense():
    return load_file(os.path.join(FIXTURE, "dense.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_release_file_decodes_bit_for_bit(dense, name):
    with storage.load(os.path.join(FIXTURE, "deltas.safetensors")) as f:
        sd = f[name]
    want = dense[name]
    got = sd.to_dense()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(_bits(got), _bits(want))
    # the stored positions are the v1 mask of the twin (an independent check of the spec)
    m = sd.meta
    mask = reference_keep_mask(want.shape, m["p"], m["seed"], offset=m["offset"], mask="philox")
    assert torch.equal(mask, want != 0)
    base = torch.randn(want.shape, dtype=torch.float64).to(want.dtype)
    assert torch.equal(sd.add_to_(base.clone()), torch.where(mask, base + want, base))


def test_release_file_records_no_mask_spec():
    # an absent "mask" entry means spec v1: what makes the files above decode as they were written
    with storage.load(os.path.join(FIXTURE, "deltas.safetensors")) as f:
        assert all("mask" not in f[name].meta for name in NAMES)


def test_apply_of_release_delta_equals_its_dense_prune(tmp_path):
    apply_delta(os.path.join(FIXTURE, "base"), os.path.join(FIXTURE, "delta"), tmp_path / "applied")
    got = load_file(str(tmp_path / "applied" / "model.safetensors"))
    want = load_file(os.path.join(FIXTURE, "applied", "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(_bits(got[k]), _bits(want[k])), k
    base = load_file(os.path.join(FIXTURE, "base", "model.safetensors"))
    assert any(not torch.equal(base[k], want[k]) for k in want)  # the delta is not empty


def test_new_files_record_their_mask_spec_and_decode_with_it(tmp_path):
    x = torch.randn(9, 500)
    deltas = {"skip": storage.compress_dare(x, 0.97, seed=5), "philox": storage.compress_dare(x, 0.97, seed=5, mask="philox"),
              "bitmask": storage.compress_dare(x, 0.9, seed=5, format="bitmask")}
    storage.save(tmp_path / "d.safetensors", deltas)
    with storage.load(tmp_path / "d.safetensors") as f:
        assert f["skip"].meta["mask"] == "skip" and f["philox"].meta["mask"] == "philox"
        assert f["bitmask"].meta["mask"] == "skip"
        for name, spec in (("skip", "skip"), ("philox", "philox")):
            want = prune_(x.clone(), 0.97, seed=5, mask=spec)
            assert torch.equal(f[name].to_dense(), want), name
            base = torch.randn(9, 500)
            assert torch.equal(f[name].add_to_(base.clone()), base + want), name
        assert torch.equal(f["bitmask"].to_dense(), prune_(x.clone(), 0.9, seed=5))
    assert not torch.equal(deltas["skip"].to_dense(), deltas["philox"].to_dense())


def test_unknown_mask_spec_in_a_file_is_a_format_error():
    x = torch.randn(50)
    sd = storage.compress_dare(x, 0.5, seed=1)
    with pytest.raises(FormatError, match="mask"):
        storage.SparseDelta("seeded", sd.shape, sd.dtype, sd.payload, {**sd.meta, "mask": "v3"})
    with pytest.raises(ValueError, match="mask"):
        storage.compress_dare(x, 0.5, seed=1, mask="foo")
