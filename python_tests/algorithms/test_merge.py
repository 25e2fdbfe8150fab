"""Merge methods: `merge_tensor` / `merge_deltas` against mergekit's generalized task arithmetic
and SCE (exact in every dtype for the deterministic methods), PEFT, hand-worked cases, gradients,
per-tensor seeds, and the model-level `merge_models` (streaming, workers)."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext.algorithms.merge import (MERGE_METHODS, breadcrumbs, dare_linear, dare_ties, della_linear,
                                        elect_sign, merge_deltas, merge_seed, merge_tensor, task_arithmetic, ties)
from darex_ext.pipeline import CheckpointMismatch, MergeConfig, merge_models
from conftest import randn
from merge_samples import group, tie_free_models
from pipeline_models import dir_bytes, llama_pair, load_all

mergekit = pytest.importorskip("mergekit")
from mergekit.merge_methods import get  # noqa: E402

W = [1.0, 0.5, -0.25]


def _models(n=3, shape=(40, 24), dtype=torch.float32):
    base = randn(*shape, dtype=dtype)
    return base, [(base.double() + 0.1 * randn(*shape, dtype=torch.float64)).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mk,ours,extra", [
    ("task_arithmetic", "task-arithmetic", {}),
    ("task_arithmetic", "task-arithmetic", {"normalize": True, "lambda": 0.7}),
    ("ties", "ties", {"density": 0.37}),
    ("ties", "ties", {"density": 0.3, "normalize": False, "lambda": 0.7}),
    ("ties", "ties", {"density": 0.37, "rescale": True, "int8_mask": True}),
    ("ties", "ties", {"density": 0.0}),
    ("ties", "ties", {"density": 1.0}),
], ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("shape", [(1,), (7, 13)])
def test_merge_tensor_equals_mergekit(dtype, mk, ours, extra, shape):
    base, fts = tie_free_models(shape, 3, dtype, seed=11)
    (want,) = get(mk)([group(base, fts)], parameters={"weight": W, **extra})
    got = merge_tensor(base, fts, ours, weights=W, density=extra.get("density"), lam=extra.get("lambda", 1.0),
                       normalize=extra.get("normalize"), rescale=extra.get("rescale"),
                       int8_mask=extra.get("int8_mask", False))
    assert got.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("mk,ours", [("breadcrumbs", "breadcrumbs"), ("breadcrumbs_ties", "breadcrumbs-ties")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_breadcrumbs_equal_mergekit(mk, ours, dtype):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = tie_free_models((7, 13), 3, dtype, seed=12)
    params = {"weight": W, "density": [0.37, 0.3, 0.8], "gamma": [0.05, 0.0, 0.1]}
    (want,) = get(mk)([group(base, fts)], parameters=params)
    got = merge_tensor(base, fts, ours, weights=W, density=params["density"], gamma=params["gamma"])
    assert torch.equal(got, want)


@pytest.mark.parametrize("density", [1.0, 0.37])
def test_sce_equals_mergekit(density):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = tie_free_models((7, 13), 3, torch.float32, seed=13)
    (want,) = get("sce")([group(base, fts)], parameters={"select_topk": density})
    assert torch.equal(merge_tensor(base, fts, "sce", density=density), want)


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
    # count: [1, 1] / [-2, -1] / [0.5, 0.5] agree
    assert ties(d, p=0.0, consensus="count").tolist() == [1.0, -1.5, 0.5, 0.0]
    assert task_arithmetic(d, [1.0, 1.0, 0.5]).tolist() == [-1.5, -1.0, 0.0, 0.0]
    assert task_arithmetic(d, [1.0, 1.0, 2.0], normalize=True).tolist() == [0.0, 1.25, -0.75, 0.0]


def test_ties_keeps_mergekits_count():
    # one delta: the election keeps every nonzero entry, so the merge shows the kept count
    d = randn(91)
    assert int((ties([d], density=0.37) != 0).sum()) == 33  # max(1, int(33.67)), not round
    assert int((ties([d], density=0.3) != 0).sum()) == 27
    assert int((ties([randn(1)], density=0.3) != 0).sum()) == 1  # at least one
    assert int((ties([d], density=0.0) != 0).sum()) == 0
    assert torch.equal(ties([d], density=1.0), d)
    # p is the decimal complement: p = 0.8 keeps int(0.2 * 10) = 2 of 10, as mergekit's density 0.2
    # (1 - 0.8 is 0.19999999999999996 in binary, and int(1.9999999999999996) would keep 1)
    ten = randn(10)
    assert int((ties([ten], p=0.8) != 0).sum()) == 2
    assert torch.equal(ties([ten], p=0.8), ties([ten], density=0.2))


def test_accumulate_float32_is_one_rounding_and_base_dtype_is_mergekits():
    base, fts = tie_free_models((7, 13), 3, torch.bfloat16, seed=14)
    wide = merge_tensor(base.float(), [f.float() for f in fts], "ties", weights=W, density=0.37)
    got = merge_tensor(base, fts, "ties", weights=W, density=0.37, accumulate="float32")
    assert got.dtype == torch.bfloat16 and torch.equal(got, wide.to(torch.bfloat16))
    narrow = merge_tensor(base, fts, "ties", weights=W, density=0.37)
    assert not torch.equal(narrow, got)  # bf16 arithmetic rounds along the way
    d = [f.double() - base.double() for f in fts]
    assert merge_deltas(d, "ties", W, density=0.37, accumulate="float32").dtype == torch.float64


# ---- gradients
@pytest.mark.parametrize("method,kw", [("task-arithmetic", {}), ("ties", {"density": 0.6}),
                                       ("ties", {"density": 0.6, "rescale": "l2", "consensus": "count"}),
                                       ("dare-ties", {"density": 0.6}),
                                       ("dare-linear", {"density": 0.6, "rescale": "l1"})])
def test_merge_tensor_passes_gradcheck(method, kw):
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def merged(base, *fts):
        return merge_tensor(base, list(fts), method, weights=[0.7, -0.4], seed=1, name="w", lam=0.8, **kw)

    assert torch.autograd.gradcheck(merged, inputs)
    # with autograd, the same values as without
    with torch.no_grad():
        plain = merged(*inputs)
    torch.testing.assert_close(merged(*inputs), plain, rtol=1e-14, atol=1e-15)


# ---- the random methods
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


def test_della_linear_mean_is_mergekits_expected_value():
    # without rescale della_linear's mean is sum_i w_i p_ij delta_ij, p_ij mergekit's rank-based
    # keep probability: density - epsilon + 2 epsilon (rank - 1) / (n - 1) along each row
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = _models(n=2, shape=(4, 9))
    deltas = [f - base for f in fts]
    w, density, eps, runs = [1.0, -0.6], 0.5, 0.2, 800
    samples = torch.stack([della_linear(deltas, w, density=density, epsilon=eps, rescale=False,
                                        seeds=[merge_seed(s, i, "w") for i in range(2)]) for s in range(runs)])
    expected = torch.zeros_like(deltas[0])
    var = torch.zeros_like(deltas[0])
    for wi, d in zip(w, deltas):
        ranks = d.abs().argsort(dim=1).argsort(dim=1).double()
        prob = density - eps + 2 * eps * ranks / (d.shape[1] - 1)
        expected += wi * prob * d
        var += (wi * d) ** 2 * prob * (1 - prob)
    assert ((samples.mean(0) - expected).abs() <= 6 * (var / runs).sqrt() + 1e-6).all()


# ---- arguments
def test_inputs_are_not_modified_and_errors_name_arguments():
    base, fts = _models()
    copies = [base.clone()] + [f.clone() for f in fts]
    for method in ("task-arithmetic", "ties", "dare-ties", "dare-linear"):
        merge_tensor(base, fts, method, p=0.5)
    assert all(torch.equal(a, b) for a, b in zip(copies, [base, *fts]))
    deltas = [f - base for f in fts]
    with pytest.raises(ValueError, match="method"):
        merge_tensor(base, fts, "slerp")
    with pytest.raises(ValueError, match="needs p"):
        merge_tensor(base, fts, "dare-ties")
    with pytest.raises(ValueError, match="needs p"):
        merge_tensor(base, fts, "breadcrumbs")
    with pytest.raises(ValueError, match="weights"):
        task_arithmetic(deltas, [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        merge_tensor(base, [fts[0], fts[1][:3]], "ties")
    with pytest.raises(ValueError, match="not both"):
        ties(deltas, p=0.5, density=0.5)
    with pytest.raises(ValueError, match="density"):
        ties(deltas, density=-0.1)
    with pytest.raises(ValueError, match=r"p \(the drop rate\)"):
        ties(deltas, p=1.5)
    with pytest.raises(ValueError, match="consensus"):
        merge_deltas(deltas, "dare-linear", p=0.5, seeds=[1, 2, 3], consensus="sum")
    with pytest.raises(ValueError, match="consensus"):
        ties(deltas, consensus="vote")
    with pytest.raises(ValueError, match="seeds"):
        merge_deltas(deltas, "dare-ties", p=0.5)
    with pytest.raises(ValueError, match="rescale"):
        ties(deltas, rescale="q")
    with pytest.raises(ValueError, match="q applies"):
        dare_linear(deltas, p=0.5, seeds=[1, 2, 3], q=0.5, rescale="l1")
    with pytest.raises(ValueError, match="accumulate"):
        ties(deltas, accumulate="float16")
    with pytest.raises(ValueError, match="weights must be None"):
        merge_deltas(deltas, "sce", W)
    with pytest.raises(TypeError, match="weights"):
        task_arithmetic(deltas, "heavy")
    with pytest.raises(TypeError, match=r"deltas\[1\]"):
        task_arithmetic([deltas[0], deltas[1].to(torch.int32)])
    assert set(MERGE_METHODS) == {"task-arithmetic", "ties", "dare-ties", "dare-linear", "breadcrumbs",
                                  "breadcrumbs-ties", "della", "della-linear", "sce"}


def test_new_methods_leave_inputs_alone():
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = _models()
    copies = [base.clone()] + [f.clone() for f in fts]
    for method in ("breadcrumbs", "breadcrumbs-ties", "della", "della-linear", "sce"):
        merge_tensor(base, fts, method, density=0.5, weights=None)
    assert all(torch.equal(a, b) for a, b in zip(copies, [base, *fts]))
    assert torch.equal(breadcrumbs([f - base for f in fts], density=1.0),
                       task_arithmetic([f - base for f in fts]))


# ---- whole models
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
