"""Merge methods: against mergekit's generalized task arithmetic and PEFT, per-tensor seeds,
and the model-level `merge_models` (streaming, workers)."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext.algorithms.merge import (dare_linear, dare_ties, elect_sign, merge_seed, merge_tensor,
                                        task_arithmetic, ties)
from darex_ext.pipeline import CheckpointMismatch, MergeConfig, merge_models
from conftest import randn
from pipeline_models import dir_bytes, llama_pair, load_all

mergekit = pytest.importorskip("mergekit")
from mergekit.merge_methods import TensorGroup, get  # noqa: E402


def _models(n=3, shape=(40, 24), dtype=torch.float32):
    base = randn(*shape, dtype=dtype)
    return base, [(base.double() + 0.1 * randn(*shape, dtype=torch.float64)).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mk,ours,extra", [("task_arithmetic", "task-arithmetic", {}),
                                           ("ties", "ties", {"density": 0.5}),
                                           ("ties", "ties", {"density": 0.5, "normalize": False, "lambda": 0.7})])
def test_equals_mergekit(dtype, mk, ours, extra):
    base, fts = _models(dtype=dtype)
    weights = [1.0, 0.5, -0.25]
    group = TensorGroup.from_tensors([base, *fts], base_index=0, name="w")
    (want,) = get(mk)([group], parameters={"weight": weights, **extra})
    got = merge_tensor(base, fts, ours, weights=weights, p=1 - extra.get("density", 1.0),
                       lam=extra.get("lambda", 1.0), normalize=extra.get("normalize"))
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_ties_equals_peft_with_unit_weights():
    import peft.utils.merge_utils as mu

    base, fts = _models(n=4)
    deltas = [f - base for f in fts]
    got = ties(deltas, None, p=0.6)
    want = mu.ties(deltas, torch.ones(4), density=0.4)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_sign_election_and_disjoint_mean_by_hand():
    d = [torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([-3.0, -1.0, 0.5, 0.0]), torch.tensor([1.0, 4.0, -2.0, 0.0])]
    assert elect_sign(d).tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert elect_sign(d, "count").tolist() == [1.0, -1.0, 1.0, 1.0]
    # agreeing entries: [-3] / [4] / [-2] / none -> mean of agreeing (normalized, unit weights)
    assert ties(d, p=0.0).tolist() == [-3.0, 4.0, -2.0, 0.0]
    assert task_arithmetic(d, [1.0, 1.0, 0.5]).tolist() == [-1.5, -1.0, 0.0, 0.0]
    assert task_arithmetic(d, [1.0, 1.0, 2.0], normalize=True).tolist() == [0.0, 1.25, -0.75, 0.0]


def test_dare_variants_use_per_model_per_tensor_seeds():
    base, fts = _models()
    deltas = [f - base for f in fts]
    name = "model.layers.3.mlp.down_proj.weight"
    seeds = [merge_seed(7, i, name) for i in range(3)]
    assert seeds[0] == darex_ext.tensor_seed(7, name) and len(set(seeds)) == 3
    pruned = [darex_ext.prune_(d.clone(), 0.8, seed=s) for d, s in zip(deltas, seeds)]
    want_linear = pruned[0] + 0.5 * pruned[1] + 2.0 * pruned[2]
    got = merge_tensor(base, fts, "dare-linear", weights=[1.0, 0.5, 2.0], p=0.8, seed=7, name=name)
    torch.testing.assert_close(got, base + want_linear, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dare_linear(deltas, [1.0, 0.5, 2.0], p=0.8, seeds=seeds), want_linear)
    weighted = [pruned[0], 0.5 * pruned[1], 2.0 * pruned[2]]
    sign = elect_sign(weighted)
    want_ties = sum(torch.where(w.sign() == sign, w, 0.0) for w in weighted)
    torch.testing.assert_close(dare_ties(deltas, [1.0, 0.5, 2.0], p=0.8, seeds=seeds), want_ties)
    # another tensor name or seed gives another mask; the same ones replay exactly
    again = merge_tensor(base, fts, "dare-ties", p=0.8, seed=7, name=name)
    assert torch.equal(again, merge_tensor(base, fts, "dare-ties", p=0.8, seed=7, name=name))
    assert not torch.equal(again, merge_tensor(base, fts, "dare-ties", p=0.8, seed=7, name=name + "x"))


def test_dare_linear_is_unbiased():
    base, fts = _models(n=2, shape=(8, 8))
    runs = 600
    mean = torch.stack([merge_tensor(base, fts, "dare-linear", p=0.7, seed=s) for s in range(runs)]).mean(0)
    target = merge_tensor(base, fts, "task-arithmetic")
    sd = torch.stack([(f - base).abs() for f in fts]).pow(2).sum(0).sqrt() * (0.7 / 0.3) ** 0.5
    assert ((mean - target).abs() <= 6 * sd / runs ** 0.5 + 1e-6).all()


def test_inputs_are_not_modified_and_errors_name_arguments():
    base, fts = _models()
    copies = [base.clone()] + [f.clone() for f in fts]
    for method in ("task-arithmetic", "ties", "dare-ties", "dare-linear"):
        merge_tensor(base, fts, method, p=0.5)
    assert all(torch.equal(a, b) for a, b in zip(copies, [base, *fts]))
    with pytest.raises(ValueError, match="method"):
        merge_tensor(base, fts, "slerp")
    with pytest.raises(ValueError, match="needs p"):
        merge_tensor(base, fts, "dare-ties")
    with pytest.raises(ValueError, match="weights"):
        task_arithmetic([f - base for f in fts], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        merge_tensor(base, [fts[0], fts[1][:3]], "ties")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return llama_pair(str(tmp_path_factory.mktemp("fam")), n_finetuned=3, shard="30KB")


@pytest.mark.parametrize("method,p", [("ties", 0.5), ("dare-ties", 0.9), ("dare-linear", 0.5), ("task-arithmetic", None)])
def test_merge_models_equals_merge_tensor_per_tensor(family, tmp_path, method, p):
    base_dir, fts = family
    cfg = MergeConfig(method=method, p=p, weights=(1.0, 0.5, 0.25), seed=3, preset="decoder")
    merge_models(base_dir, fts, tmp_path / "m", cfg)
    base, models, got = load_all(base_dir), [load_all(f) for f in fts], load_all(str(tmp_path / "m"))
    assert got.keys() == base.keys()
    for name in base:
        if ".mlp." in name or ".self_attn." in name:
            want = merge_tensor(base[name], [m[name] for m in models], method, weights=[1.0, 0.5, 0.25], p=p,
                                seed=3, name=name)
            assert torch.equal(got[name], want), name
        else:
            assert torch.equal(got[name], base[name]), name


def test_merge_workers_and_mismatch(family, tmp_path):
    base_dir, fts = family
    cfg = MergeConfig(method="dare-ties", p=0.8, seed=1)
    merge_models(base_dir, fts, tmp_path / "one", cfg)
    assert merge_models(base_dir, fts, tmp_path / "two", cfg, workers=2)["workers"] == 2
    assert dir_bytes(str(tmp_path / "one")) == dir_bytes(str(tmp_path / "two"))
    _, (wide,) = llama_pair(str(tmp_path / "wide"), hidden=48)
    with pytest.raises(CheckpointMismatch, match=r"fine-tuned #2"):
        merge_models(base_dir, [fts[0], wide], tmp_path / "bad", cfg)
    assert not (tmp_path / "bad").exists()
