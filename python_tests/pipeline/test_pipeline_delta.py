"""Delta output (seeded / bitmask / csr) and `apply`: apply(base, delta) == prune --format dense."""

from __future__ import annotations

import io
import os

import pytest
import torch

import darex_ext
from darex_ext import storage
from darex_ext.pipeline import CheckpointMismatch, PruneConfig, apply_delta, prune_model
from darex_ext.pipeline.inspect import inspect_path
from conftest import DEVICES
from pipeline_models import bert_pair, dir_bytes, llama_pair, load_all


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("llama"))
    base, (ft,) = llama_pair(root, shard="20KB")
    return base, ft


CASES = [("seeded", "dare", None), ("seeded", "darex-q", 0.3), ("bitmask", "dare", None),
         ("csr", "darex-q", 0.25), ("bitmask", "magnitude", None), ("csr", "magnitude", 0.5)]


@pytest.mark.parametrize("fmt,method,q", CASES, ids=[f"{f}-{m}" for f, m, _ in CASES])
@pytest.mark.parametrize("preset", ["all", "decoder"])
def test_apply_of_a_delta_reproduces_dense_byte_for_byte(llama, tmp_path, fmt, method, q, preset):
    base_dir, ft_dir = llama
    common = dict(method=method, p=0.9, q=q, seed=21, preset=preset)
    prune_model(base_dir, ft_dir, tmp_path / "dense", PruneConfig(**common))
    summary = prune_model(base_dir, ft_dir, tmp_path / "delta", PruneConfig(format=fmt, **common))
    files = sorted(os.listdir(tmp_path / "delta"))
    assert "delta.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.startswith(".")]
    with storage.load(tmp_path / "delta" / "delta.safetensors") as deltas:
        assert {deltas[n].format for n in deltas} == {fmt}
        assert len(deltas) == summary["selected"] == summary["deltas"]
        assert deltas.metadata["darex.method"] == method
    # unselected tensors changed by the fine-tune are stored as they are
    assert summary["dense"] == (0 if preset == "all" else 7)
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "applied")
    dense, applied = dir_bytes(str(tmp_path / "dense")), dir_bytes(str(tmp_path / "applied"))
    assert list(dense) == list(applied)
    for name in dense:
        assert dense[name] == applied[name], name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("fmt,method,q", [("seeded", "darex-q", 0.2), ("csr", "dare", None), ("bitmask", "magnitude", None)])
def test_apply_equals_dense_for_other_dtypes(tmp_path, dtype, fmt, method, q):
    base_dir, (ft_dir,) = llama_pair(str(tmp_path / "m"), dtype=dtype)
    common = dict(method=method, p=0.9, q=q, seed=4)
    prune_model(base_dir, ft_dir, tmp_path / "dense", PruneConfig(**common))
    prune_model(base_dir, ft_dir, tmp_path / "delta", PruneConfig(format=fmt, **common))
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "applied")
    assert dir_bytes(str(tmp_path / "dense")) == dir_bytes(str(tmp_path / "applied"))
    base, ft, got = load_all(base_dir), load_all(ft_dir), load_all(str(tmp_path / "dense"))
    for name in ft:  # and the dense output is base + the op's pruned delta in the model dtype
        delta = torch.sub(ft[name], base[name])
        if method == "magnitude":
            darex_ext.magnitude_prune_(delta, 0.9)
        else:
            darex_ext.prune_(delta, 0.9, q, seed=darex_ext.tensor_seed(4, name))
        want = torch.where(delta != 0, base[name] + delta, base[name])
        assert torch.equal(got[name], want), name


def test_seeded_delta_is_the_dare_delta_and_small(llama, tmp_path):
    base_dir, ft_dir = llama
    cfg = PruneConfig(method="dare", p=0.99, seed=5, format="seeded")
    summary = prune_model(base_dir, ft_dir, tmp_path / "d", cfg)
    base, ft = load_all(base_dir), load_all(ft_dir)
    payload = 0
    with storage.load(tmp_path / "d" / "delta.safetensors") as deltas:
        for name in deltas:
            want = darex_ext.prune_(torch.sub(ft[name], base[name]), 0.99, seed=darex_ext.tensor_seed(5, name))
            assert torch.equal(deltas[name].to_dense(), want), name
            payload += deltas[name].nbytes
    dense_bytes = sum(t.numel() * t.element_size() for t in ft.values())
    assert payload < 0.03 * dense_bytes  # ~1% of the values survive; the header is the rest
    assert summary["bytes"] < 0.15 * dense_bytes


def test_unchanged_tensors_are_not_stored(llama, tmp_path):
    base_dir, _ = llama
    summary = prune_model(base_dir, base_dir, tmp_path / "d", PruneConfig(format="bitmask", preset="decoder"))
    assert summary["dense"] == 0 and not (tmp_path / "d" / "dense.safetensors").exists()
    apply_delta(base_dir, tmp_path / "d", tmp_path / "m")
    got, want = load_all(str(tmp_path / "m")), load_all(base_dir)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_head_only_in_the_finetuned_model_travels_in_the_delta(tmp_path):
    base_dir, ft_dir = bert_pair(str(tmp_path))
    cfg = PruneConfig(method="dare", p=0.9, preset="encoder", seed=2)
    prune_model(base_dir, ft_dir, tmp_path / "dense", cfg)
    prune_model(base_dir, ft_dir, tmp_path / "delta", PruneConfig(format="seeded", **{
        k: getattr(cfg, k) for k in ("method", "p", "preset", "seed")}))
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "applied")
    assert dir_bytes(str(tmp_path / "dense")) == dir_bytes(str(tmp_path / "applied"))


@pytest.mark.parametrize("fmt", ["seeded", "bitmask"])
def test_two_workers_write_the_same_delta_bytes(llama, tmp_path, fmt):
    base_dir, ft_dir = llama
    cfg = PruneConfig(method="dare", p=0.9, seed=8, format=fmt, preset="decoder")
    assert prune_model(base_dir, ft_dir, tmp_path / "one", cfg)["workers"] == 1
    assert prune_model(base_dir, ft_dir, tmp_path / "two", cfg, workers=2)["workers"] == 2
    assert dir_bytes(str(tmp_path / "one")) == dir_bytes(str(tmp_path / "two"))
    apply_delta(base_dir, tmp_path / "one", tmp_path / "a1")
    apply_delta(base_dir, tmp_path / "two", tmp_path / "a2", workers=2)
    assert dir_bytes(str(tmp_path / "a1")) == dir_bytes(str(tmp_path / "a2"))


def test_apply_to_the_wrong_base_fails_without_writing(llama, tmp_path):
    base_dir, ft_dir = llama
    prune_model(base_dir, ft_dir, tmp_path / "d", PruneConfig(format="csr"))
    other, _ = llama_pair(str(tmp_path / "wide"), hidden=48)
    with pytest.raises(CheckpointMismatch, match="base does not match the delta"):
        apply_delta(other, tmp_path / "d", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".out")]


def test_inspect_tables(llama, tmp_path):
    base_dir, ft_dir = llama
    prune_model(base_dir, ft_dir, tmp_path / "d", PruneConfig(format="bitmask", p=0.99, preset="decoder"))
    buf = io.StringIO()
    inspect_path(str(tmp_path / "d"), out=buf)
    text = buf.getvalue()
    assert "model.layers.0.mlp.up_proj.weight" in text and "bitmask" in text and "stored" in text
    assert "method=dare" in text and "B/param" in text and text.strip().splitlines()[-1].startswith("total:")
    assert "recommend" not in text  # an already pruned delta gets no advice
    buf = io.StringIO()
    inspect_path(ft_dir, base=base_dir, out=buf)
    assert "density(d)" in buf.getvalue() and "lm_head.weight" in buf.getvalue()


def test_write_delta_keeps_no_result_alive(tmp_path):
    # Each computed delta goes to the part file and is dropped before the next one is computed:
    # memory holds one tensor, not the whole compressed model.
    import weakref

    from darex_ext.pipeline.output import DELTA_FILE, DENSE_FILE, write_delta
    from darex_ext.pipeline.workers import SoloGroup

    names = [f"layer{i}.weight" for i in range(6)]
    made, alive_at_compute = {}, []

    def compute(name):
        alive_at_compute.append([n for n, ref in made.items() if ref() is not None])
        x = torch.randn(64, 96, generator=torch.Generator().manual_seed(len(made)))
        if name == "layer3.weight":
            made[name] = weakref.ref(x)
            return "dense", x
        sd = storage.compress_dare(x, 0.9, seed=len(made))
        made[name] = weakref.ref(sd.payload["values"])
        return "delta", sd

    out = tmp_path / "out"
    summary = write_delta(SoloGroup(), str(out), names, [1] * len(names), compute, metadata={"k": "v"})
    assert alive_at_compute == [[]] * len(names)
    assert summary["deltas"] == 5 and summary["dense"] == 1
    assert sorted(os.listdir(out)) == [DELTA_FILE, DENSE_FILE]  # part files removed
    with storage.load(out / DELTA_FILE) as f:
        assert list(f) == [n for n in names if n != "layer3.weight"]
        for i, n in enumerate(names):
            if n == "layer3.weight":
                continue
            x = torch.randn(64, 96, generator=torch.Generator().manual_seed(i))
            assert torch.equal(f[n].to_dense(), storage.compress_dare(x, 0.9, seed=i).to_dense())
        assert f.metadata == {"k": "v"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["seeded", "bitmask", "csr"])
def test_apply_on_a_device_gives_the_cpu_bytes(llama, tmp_path, device, fmt):
    # --device is where the scatter-adds run; every device must write the CPU's bytes.
    base_dir, ft_dir = llama
    prune_model(base_dir, ft_dir, tmp_path / "delta", PruneConfig(format=fmt, p=0.9, seed=8))
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "cpu")
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "dev", device=device)
    assert dir_bytes(str(tmp_path / "cpu")) == dir_bytes(str(tmp_path / "dev"))


BAD_DEVICES = ["tpu", "cuda:x"] + ([] if "cuda" in DEVICES else ["cuda"])  # cuda: not usable here


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_apply_on_an_unusable_device_fails_before_writing(llama, tmp_path, device):
    base_dir, ft_dir = llama
    prune_model(base_dir, ft_dir, tmp_path / "delta", PruneConfig(format="seeded", p=0.9))
    with pytest.raises(ValueError, match="--device"):
        apply_delta(base_dir, tmp_path / "delta", tmp_path / "out", device=device)
    assert not os.path.exists(tmp_path / "out")
