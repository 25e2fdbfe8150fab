"""mergekit drop-ins: sparsify against mergekit's own, darex_* methods run by mergekit itself."""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("mergekit")
import mergekit.sparsify as mks  # noqa: E402
from mergekit.merge_methods import TensorGroup, get  # noqa: E402

import darex_ext.integrations.mergekit as dm  # noqa: E402
from conftest import randn  # noqa: E402
from pipeline_models import llama_pair, load_all  # noqa: E402

NORMS = [None, mks.RescaleNorm.l1, mks.RescaleNorm.l2, mks.RescaleNorm.linf]


@pytest.mark.parametrize("density", [0.0, 0.001, 0.25, 0.5, 0.9, 1.0, 1.5])
@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("shape", [(1,), (33,), (40, 25)])
def test_magnitude_sparsify_is_exactly_mergekit(density, norm, shape):
    t = randn(*shape)
    ours = dm.sparsify(t, density, mks.SparsificationMethod.magnitude, rescale_norm=norm)
    theirs = mks.sparsify(t, density, mks.SparsificationMethod.magnitude, rescale_norm=norm)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert torch.equal(ours != 0, theirs != 0)
    if density >= 1:
        assert ours is t  # pass-through, as mergekit


@pytest.mark.parametrize("density", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_random_sparsify_matches_mergekit_in_law(density, norm):
    x = randn(300, 400)
    n = x.numel()
    for fn in (dm.sparsify, mks.sparsify):
        out = fn(x, density, mks.SparsificationMethod.random, rescale_norm=norm)
        kept = out != 0
        assert abs(int(kept.sum()) - n * density) <= 6 * math.sqrt(n * density * (1 - density))
        ratio = out[kept] / x[kept]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # one scale for the tensor
        if norm == mks.RescaleNorm.l1:
            torch.testing.assert_close(out.abs().sum(), x.abs().sum(), rtol=1e-4, atol=0)
        elif norm == mks.RescaleNorm.l2:
            torch.testing.assert_close(out.norm(), x.norm(), rtol=1e-4, atol=0)
        elif norm is None:
            assert torch.equal(out[kept], x[kept])


def test_random_sparsify_follows_torch_seed_and_explicit_seed():
    x = randn(50, 50)
    torch.manual_seed(3)
    a = dm.sparsify(x, 0.3, "random")
    torch.manual_seed(3)
    b = dm.sparsify(x, 0.3, "random")
    assert torch.equal(a, b)
    assert torch.equal(dm.sparsify(x, 0.3, "random", seed=9), dm.sparsify(x, 0.3, "random", seed=9))
    assert not torch.equal(dm.sparsify(x, 0.3, "random", seed=9), dm.sparsify(x, 0.3, "random", seed=10))


def test_other_methods_fall_back_to_mergekit():
    x = randn(20, 30)
    torch.testing.assert_close(dm.sparsify(x, 0.5, "magnitude_outliers", gamma=0.05),
                               mks.sparsify(x, 0.5, mks.SparsificationMethod.magnitude_outliers, gamma=0.05))


def _group(n=3, shape=(24, 17)):
    base = randn(*shape)
    fts = [base + 0.1 * randn(*shape) for _ in range(n)]
    return base, fts, TensorGroup.from_tensors([base, *fts], base_index=0, name="model.layers.0.mlp.up_proj.weight")


@pytest.mark.parametrize("pair", [("task_arithmetic", "darex_task_arithmetic"), ("ties", "darex_ties")])
def test_darex_methods_equal_mergekit_methods(pair):
    base, fts, group = _group()
    params = {"weight": [1.0, 0.5, -0.3], "density": [0.5, 0.5, 0.5]}
    if pair[0] == "task_arithmetic":
        params.pop("density")
    (theirs,) = get(pair[0])([group], parameters=params)
    (ours,) = get(pair[1])([group], parameters=params)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_installed_sparsify_drives_mergekits_ties():
    base, fts, group = _group()
    params = {"weight": [1.0, 0.7, 0.4], "density": 0.5}
    (before,) = get("ties")([group], parameters=params)
    dm.install()
    try:
        import mergekit.merge_methods.generalized_task_arithmetic as gta

        assert gta.sparsify is dm.sparsify
        (after,) = get("ties")([group], parameters=params)
    finally:
        dm.uninstall()
    assert mks.sparsify is not dm.sparsify
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-7)


def test_darex_dare_methods_are_seeded_per_tensor():
    from darex_ext.algorithms.merge import merge_tensor

    base, fts, group = _group()
    params = {"weight": [1.0, 0.5, 0.25], "density": 0.3, "seed": 5, "dare_rescale": "q"}
    for mk_name, ours in (("darex_dare_ties", "dare-ties"), ("darex_dare_linear", "dare-linear")):
        (out,) = get(mk_name)([group], parameters=params)
        want = merge_tensor(base, fts, ours, weights=[1.0, 0.5, 0.25], p=0.7, q=0.3, seed=5,
                            name="model.layers.0.mlp.up_proj.weight")
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)
    # mergekit's default for DARE: rescale=True means the L1 norm of each delta is kept
    (l1,) = get("darex_dare_linear")([group], parameters={"weight": 1.0, "density": 0.3, "seed": 5})
    want = merge_tensor(base, fts, "dare-linear", p=0.7, seed=5, rescale="l1", name="model.layers.0.mlp.up_proj.weight")
    torch.testing.assert_close(l1, want, rtol=1e-6, atol=1e-7)


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


def test_mergekit_runs_darex_ties_like_its_own_ties(three_llamas, tmp_path):
    base, fts = three_llamas
    models = [{"model": fts[0], "parameters": {"weight": 1.0, "density": 0.5}},
              {"model": fts[1], "parameters": {"weight": 0.6, "density": 0.5}}]
    cfg = {"base_model": base, "dtype": "float32", "models": models}
    theirs = _run_mergekit(dict(cfg, merge_method="ties"), str(tmp_path / "ties"))
    ours = _run_mergekit(dict(cfg, merge_method="darex_ties"), str(tmp_path / "darex_ties"))
    assert theirs.keys() == ours.keys() and len(ours) == 21
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-6, atol=1e-7)


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
