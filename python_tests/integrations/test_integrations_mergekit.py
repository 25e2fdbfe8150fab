"""mergekit's methods with darex: the darex_* methods against mergekit's own (exact for the
deterministic ones in every dtype, in law for the random ones, gradients), mergekit's methods on
the installed sparsify, and whole merges run by mergekit itself."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("mergekit")
import mergekit.sparsify as mks  # noqa: E402
from mergekit.merge_methods import get  # noqa: E402
from mergekit.merge_methods.generalized_task_arithmetic import (ConsensusMethod,  # noqa: E402
                                                                GeneralizedTaskArithmeticMerge, get_mask)

import darex_ext.integrations.mergekit as dm  # noqa: E402
from conftest import randn  # noqa: E402
from darex_ext.algorithms.merge import merge_seed, merge_tensor  # noqa: E402
from merge_samples import group, tie_free_models  # noqa: E402
from pipeline_models import llama_pair, load_all  # noqa: E402

NAME = "model.layers.0.mlp.up_proj.weight"
LOW = [torch.float32, torch.bfloat16, torch.float16]
W = [1.0, 0.5, -0.3]


def _both(mk: str, grp, params: dict):
    (theirs,) = get(mk)([grp], parameters=params)
    (ours,) = get("darex_" + mk)([grp], parameters=params)
    return ours, theirs


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("shape", [(1,), (7, 13)])
@pytest.mark.parametrize("density", [0.3, 0.37, 1.0])  # frac(d * 91) below / above 0.5
@pytest.mark.parametrize("extra", [{}, {"rescale": True}, {"normalize": False, "lambda": 0.7},
                                   {"int8_mask": True}], ids=["default", "rescale", "lambda", "int8"])
@pytest.mark.parametrize("mk", ["task_arithmetic", "ties"])
def test_darex_methods_equal_mergekit_bit_for_bit(mk, extra, density, shape, dtype):
    base, fts = tie_free_models(shape, 3, dtype, seed=1)
    params = {"weight": W, **extra}
    if mk != "task_arithmetic":
        params["density"] = [density, density, 0.5]
    ours, theirs = _both(mk, group(base, fts), params)
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", [(), (0,), (2, 0)], ids=str)
@pytest.mark.parametrize("mk", ["task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_scalar_and_empty_tensors(shape, mk):
    base = randn(*shape)
    fts = [base + randn(*shape) for _ in range(3)]
    params = {"weight": W} if mk == "task_arithmetic" else {"weight": W, "density": 0.5}
    ours, theirs = _both(mk, group(base, fts), params)
    assert ours.shape == theirs.shape == base.shape
    if not mk.startswith("dare"):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_darex_ties_count_consensus_equals_mergekits_count(dtype):
    base, fts = tie_free_models((91,), 4, dtype, seed=2)
    counted = GeneralizedTaskArithmeticMerge(consensus_method=ConsensusMethod.count,
                                             sparsification_method=mks.SparsificationMethod.magnitude,
                                             default_normalize=True, default_rescale=False, method_name="ties_count",
                                             method_pretty_name=None, method_reference_url=None)
    params = {"weight": [1.0, 0.4, 0.8, 0.3], "density": 0.37}
    (theirs,) = counted([group(base, fts)], parameters=params)
    (ours,) = get("darex_ties")([group(base, fts)], parameters={**params, "consensus": "count"})
    assert torch.equal(ours, theirs)
    (summed,) = get("darex_ties")([group(base, fts)], parameters=params)
    assert not torch.equal(ours, summed)  # the two elections differ on this data


@pytest.mark.parametrize("mk", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_darex_breadcrumbs_equal_mergekit(mk, dtype):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = tie_free_models((7, 13), 3, dtype, seed=3)
    for params in ({"weight": W, "density": 0.37, "gamma": 0.05},
                   {"weight": W, "density": [0.3, 0.5, 0.9], "gamma": [0.0, 0.02, 0.1], "rescale": True}):
        ours, theirs = _both(mk, group(base, fts), params)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("select_topk", [1.0, 0.37])
def test_darex_sce_equals_mergekit(dtype, select_topk):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = tie_free_models((7, 13), 3, dtype, seed=4)
    for int8 in (False, True):
        ours, theirs = _both("sce", group(base, fts), {"select_topk": select_topk, "int8_mask": int8})
        assert torch.equal(ours, theirs)


def test_darex_methods_take_mergekits_parameters_and_reject_typos():
    ours = {m.spec.name: {p.name for p in m.spec.parameters} for m in (get(n) for n in dm.METHOD_NAMES)}
    for name, params in ours.items():
        stock = {p.name for p in get(name[len("darex_"):]).spec.parameters}
        assert stock <= params, name  # every mergekit parameter, plus darex's extras
    base, fts = tie_free_models((4, 5), 2, torch.float32)
    with pytest.raises(TypeError, match="densty"):
        get("darex_ties")([group(base, fts)], parameters={"weight": 1.0, "densty": 0.5})


def test_accumulate_float32_rounds_once():
    base, fts = tie_free_models((7, 13), 3, torch.bfloat16, seed=5)
    params = {"weight": W, "density": 0.37}
    (ours,) = get("darex_ties")([group(base, fts)], parameters={**params, "accumulate": "float32"})
    (wide,) = get("ties")([group(base.float(), [f.float() for f in fts])], parameters=params)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, wide.to(torch.bfloat16))


# ---- gradients
def _grad_inputs(n=4, shape=(4, 8)):
    gen = torch.Generator().manual_seed(42)
    return [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(n)]


@pytest.mark.parametrize("mk", ["task_arithmetic", "ties"])
@pytest.mark.parametrize("rescale", [False, True])
def test_darex_method_gradients_equal_mergekits(mk, rescale):
    inputs = _grad_inputs()
    params = {"weight": [0.7, -0.2, 0.5], "density": 0.6, "normalize": True, "rescale": rescale, "lambda": 0.8}
    if mk == "task_arithmetic":
        params.pop("density")
    grp = group(inputs[0], inputs[1:])
    ours, theirs = _both(mk, grp, params)
    g_ours = torch.autograd.grad(ours.square().sum(), inputs)
    g_theirs = torch.autograd.grad(theirs.square().sum(), inputs)
    assert torch.equal(ours, theirs)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mk", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("rescale", [False, True])
def test_darex_dare_methods_pass_gradcheck(mk, rescale):
    inputs = _grad_inputs(n=3, shape=(3, 5))

    def merged(*ts):
        (out,) = get("darex_" + mk)([group(ts[0], list(ts[1:]), name=NAME)],
                                    parameters={"weight": [0.7, -0.2], "density": 0.6, "rescale": rescale, "seed": 2})
        return out

    assert torch.autograd.gradcheck(merged, tuple(inputs))


@pytest.mark.parametrize("mk", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("rescale", [False, True])
def test_installed_sparsify_keeps_mergekits_dare_differentiable(mk, rescale):
    # mergekit's own dare methods on darex's sparsify: values and gradients equal a twin of
    # mergekit's arithmetic written out here, drawing the same seeds from torch's generator.
    inputs = _grad_inputs()
    weights = torch.tensor([0.7, -0.2, 0.5], dtype=torch.float64)[:, None, None]
    method = get(mk)

    def twin():
        deltas = [dm.sparsify(t - inputs[0], 0.6, mks.SparsificationMethod.random,
                              rescale_norm=mks.RescaleNorm.l1 if rescale else None) for t in inputs[1:]]
        weighted = torch.stack(deltas) * weights
        mask = get_mask(weighted, method="sum") if method.consensus_method else torch.ones_like(weighted)
        divisor = (weights * mask).sum(0)
        divisor = torch.where(divisor.abs() < 1e-8, 1, divisor)
        return inputs[0] + 0.8 * (weighted * mask).sum(0) / divisor

    params = {"weight": [0.7, -0.2, 0.5], "density": 0.6, "normalize": True, "rescale": rescale, "lambda": 0.8}
    dm.install()
    try:
        torch.manual_seed(123)
        want = twin()
        g_want = torch.autograd.grad(want.square().sum(), inputs)
        torch.manual_seed(123)
        (got,) = method([group(inputs[0], inputs[1:], name="w")], parameters=params)
        g_got = torch.autograd.grad(got.square().sum(), inputs)
    finally:
        dm.uninstall()
    torch.testing.assert_close(got, want)
    assert all(g.abs().sum() > 0 for g in g_got)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


# ---- the random methods: seeded per tensor, mergekit's law
def _group(n=3, shape=(24, 17)):
    base = randn(*shape)
    fts = [base + 0.1 * randn(*shape) for _ in range(n)]
    return base, fts, group(base, fts, name=NAME)


def test_darex_dare_methods_are_seeded_per_tensor():
    base, fts, grp = _group()
    params = {"weight": [1.0, 0.5, 0.25], "density": 0.3, "seed": 5, "dare_rescale": "q"}
    for mk_name, ours in (("darex_dare_ties", "dare-ties"), ("darex_dare_linear", "dare-linear")):
        (out,) = get(mk_name)([grp], parameters=params)
        want = merge_tensor(base, fts, ours, weights=[1.0, 0.5, 0.25], p=0.7, q=0.3, seed=5, name=NAME)
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)
        seeds = [merge_seed(5, i, NAME) for i in range(3)]
        assert torch.equal(out, merge_tensor(base, fts, ours, weights=[1.0, 0.5, 0.25], density=0.3, seeds=seeds))
    # mergekit's default for DARE: rescale=True means the L1 norm of each delta is kept
    (l1,) = get("darex_dare_linear")([grp], parameters={"weight": 1.0, "density": 0.3, "seed": 5})
    want = merge_tensor(base, fts, "dare-linear", p=0.7, seed=5, rescale="l1", name=NAME)
    torch.testing.assert_close(l1, want, rtol=1e-6, atol=1e-7)


def _two_sample_ok(a: torch.Tensor, b: torch.Tensor, sigmas: float = 6.0) -> bool:
    # |mean_a - mean_b| within `sigmas` standard errors of the difference, per entry
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return bool(((a.mean(0) - b.mean(0)).abs() <= sigmas * se + 1e-6).all())


@pytest.mark.parametrize("mk", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("rescale", [False, True])
def test_darex_dare_methods_match_mergekit_in_law(mk, rescale):
    base, fts, grp = _group(shape=(6, 7))
    params = {"weight": [1.0, 0.6, -0.4], "density": 0.4, "rescale": rescale}
    runs = 300
    ours = torch.stack([get("darex_" + mk)([grp], parameters={**params, "seed": s})[0] for s in range(runs)])
    theirs = torch.stack([get(mk)([grp], parameters=params)[0] for _ in range(runs)])
    assert _two_sample_ok(ours.double(), theirs.double())
    # and the test has power: the other rescale (mean x density instead of ~x) is told apart
    other = torch.stack([get(mk)([grp], parameters={**params, "rescale": not rescale})[0] for _ in range(runs)])
    assert not _two_sample_ok(ours.double(), other.double())


@pytest.mark.parametrize("mk", ["della", "della_linear"])
def test_darex_della_methods_match_mergekit_in_law(mk):
    pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts, grp = _group(shape=(6, 7))
    params = {"weight": [1.0, 0.6, -0.4], "density": 0.5, "epsilon": 0.2}
    runs = 300
    ours = torch.stack([get("darex_" + mk)([grp], parameters={**params, "seed": s})[0] for s in range(runs)])
    theirs = torch.stack([get(mk)([grp], parameters=params)[0] for _ in range(runs)])
    assert _two_sample_ok(ours.double(), theirs.double())
    (again,) = get("darex_" + mk)([grp], parameters={**params, "seed": 0})
    assert torch.equal(again, ours[0])


# ---- mergekit's own methods on the installed sparsify
@pytest.mark.parametrize("mk,params", [("ties", {"density": 0.37}), ("ties", {"density": 0.37, "rescale": True}),
                                       ("breadcrumbs", {"density": 0.37, "gamma": 0.05}),
                                       ("breadcrumbs_ties", {"density": 0.37, "gamma": 0.05})])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_installed_sparsify_gives_mergekits_deterministic_methods_unchanged(mk, params, dtype):
    if mk.startswith("breadcrumbs"):
        pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = tie_free_models((7, 13), 3, dtype, seed=6)
    params = {"weight": [1.0, 0.7, 0.4], **params}
    (before,) = get(mk)([group(base, fts)], parameters=params)
    dm.install()
    try:
        (after,) = get(mk)([group(base, fts)], parameters=params)
    finally:
        dm.uninstall()
    assert torch.equal(after, before)


# ---- whole merges run by mergekit
@pytest.fixture(scope="module")
def three_llamas(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mk"))
    return llama_pair(root, n_finetuned=2)


def _run_mergekit(config: dict, out: str) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), out, MergeOptions(copy_tokenizer=False, quiet=True))
    return load_all(out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mergekit_runs_darex_ties_like_its_own_ties(three_llamas, tmp_path, dtype):
    base, fts = three_llamas
    models = [{"model": fts[0], "parameters": {"weight": 1.0, "density": 0.5}},
              {"model": fts[1], "parameters": {"weight": 0.6, "density": 0.37}}]
    cfg = {"base_model": base, "dtype": dtype, "models": models}
    theirs = _run_mergekit(dict(cfg, merge_method="ties"), str(tmp_path / "ties"))
    ours = _run_mergekit(dict(cfg, merge_method="darex_ties"), str(tmp_path / "darex_ties"))
    assert theirs.keys() == ours.keys() and len(ours) == 21
    mismatched = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    if dtype == "float32":
        assert not mismatched
    else:  # bf16 weights tie in |x|: only tensors with a tie at the cut may differ, and only there
        for k in mismatched:
            torch.testing.assert_close(ours[k].float(), theirs[k].float(), rtol=0.05, atol=0.05)


def test_mergekit_darex_dare_ties_equals_darex_merge_cli(three_llamas, tmp_path):
    from darex_ext.apps import cli

    base, fts = three_llamas
    cfg = {"merge_method": "darex_dare_ties", "base_model": base, "dtype": "float32",
           "parameters": {"seed": 3, "dare_rescale": "q"},
           "models": [{"model": fts[0], "parameters": {"weight": 1.0, "density": 0.5}},
                      {"model": fts[1], "parameters": {"weight": 0.5, "density": 0.5}}]}
    got = _run_mergekit(cfg, str(tmp_path / "mk"))
    assert cli.main(["merge", base, *fts, "-o", str(tmp_path / "dx"), "--method", "dare-ties", "-p", "0.5",
                     "--weights", "1", "0.5", "--seed", "3", "--quiet"]) == 0
    want = load_all(str(tmp_path / "dx"))
    assert got.keys() == want.keys()
    base_t = load_all(base)
    for k in want:
        assert torch.equal(got[k], want[k]), k
        assert not torch.equal(want[k], base_t[k])
    assert os.path.exists(tmp_path / "dx" / "config.json")
