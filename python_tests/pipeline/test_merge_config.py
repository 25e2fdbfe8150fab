"""`darex merge --config`: mergekit's YAML schema read by darex_ext.pipeline.merge_config.

Errors name the key path and come before any model is read; parameter resolution equals
mergekit's own resolver; merges equal mergekit's output for the deterministic methods and are
byte-identical for any worker count."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import yaml

from darex_ext.apps import cli
from darex_ext.pipeline import MergeConfig, merge_models
from darex_ext.pipeline.merge import plan_merge
from darex_ext.pipeline.merge_config import METHODS, MergeConfigError, parse_merge_config, read_merge_config
from pipeline_models import dir_bytes, llama_pair, load_all

needs_mergekit = pytest.mark.skipif(importlib.util.find_spec("mergekit") is None, reason="needs mergekit")
NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
         "model.layers.1.input_layernorm.weight", "model.norm.weight", "lm_head.weight"]


def _cfg(method="ties", models=None, **top):
    models = models if models is not None else [{"model": "ft_b", "parameters": {"weight": 1.0, "density": 0.5}},
                                                {"model": "ft_a", "parameters": {"weight": 0.5}}]
    return {"merge_method": method, "base_model": "base", "models": models, **top}


def _error(data, path: str, needle: str = "") -> str:
    with pytest.raises(MergeConfigError) as exc:
        parse_merge_config(data, check_paths=False)
    message = str(exc.value)
    assert message.startswith(f"{path}: "), message
    assert needle in message, message
    return message


# ---- errors, each naming its key path
@pytest.mark.parametrize("data, path, needle", [
    ([1, 2], "<config>", "must be a mapping"),
    (_cfg(merge_metod="ties"), "merge_metod", "unknown key"),
    (_cfg(slices=[]), "slices", "not supported"),
    (_cfg(modules={}), "modules", "not supported"),
    ({"base_model": "b", "models": [{"model": "a"}]}, "merge_method", "missing"),
    (_cfg(method="tie"), "merge_method", "'tie'"),
    (_cfg(method="slerp"), "merge_method", "unsupported"),
    ({"merge_method": "ties", "models": [{"model": "a"}]}, "base_model", "missing"),
    (_cfg(base_model="base+lora"), "base_model", "LoRA"),
    (_cfg(models="ft"), "models", "non-empty list"),
    (_cfg(models=[]), "models", "non-empty list"),
    (_cfg(models=["ft"]), "models[0]", "must be a mapping"),
    (_cfg(models=[{"model": "a", "weight": 1}]), "models[0].weight", "unknown key"),
    (_cfg(models=[{"parameters": {"weight": 1}}]), "models[0].model", "missing"),
    (_cfg(models=[{"model": "a@main", "parameters": {"weight": 1}}]), "models[0].model", "revisions"),
    (_cfg(models=[{"model": {"model": {"path": "a"}, "lora": {"path": "l"}}}]), "models[0].model.lora", "LoRA"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": 1}}, {"model": "a", "parameters": {"weight": 1}}]),
     "models[1].model", "listed twice"),
    (_cfg(models=[{"model": "base", "parameters": {"weight": 1}}]), "models", "besides base_model"),
    (_cfg(models=[{"model": "a", "parameters": {"densty": 0.5}}]), "models[0].parameters.densty",
     "takes no parameter 'densty'"),
    (_cfg(parameters={"lamda": 0.5}), "parameters.lamda", "takes no parameter"),
    (_cfg(parameters={"gamma": 0.1}), "parameters.gamma", "'ties' takes no parameter 'gamma'"),
    (_cfg(method="sce", parameters={"weight": 1.0}), "parameters.weight", "'sce' takes no parameter"),
    (_cfg(method="dare_ties", parameters={"seed": 1}), "parameters.seed", "takes no parameter 'seed'"),
    (_cfg(models=[{"model": "a", "parameters": {"lambda": 0.5}}]), "models[0].parameters.lambda",
     "shared by all models"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": "heavy"}}]), "models[0].parameters.weight",
     "must be a number"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": True}}]), "models[0].parameters.weight", "must be a number"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": float("nan")}}]), "models[0].parameters.weight", "finite"),
    (_cfg(models=[{"model": "a", "parameters": {"density": -0.1}}]), "models[0].parameters.density", ">= 0"),
    (_cfg(parameters={"normalize": "maybe"}), "parameters.normalize", "true or false"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": [0.1, 0.9]}}]), "models[0].parameters.weight[0]",
     "gradients"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": [{"filter": "mlp", "valeu": 1}]}}]),
     "models[0].parameters.weight[0].valeu", "unknown key"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": [{"filter": "mlp"}]}}]),
     "models[0].parameters.weight[0].value", "missing"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": {"filter": 3, "value": 1}}}]),
     "models[0].parameters.weight.filter", "must be a string"),
    (_cfg(models=[{"model": "a", "parameters": {"weight": [{"value": [0.1, 0.2]}]}}]),
     "models[0].parameters.weight[0].value", "gradients"),
    (_cfg(method="breadcrumbs", models=[{"model": "a", "parameters": {"weight": 1, "gamma": 1.5}}]),
     "models[0].parameters.gamma", "[0, 1]"),
    (_cfg(method="della", models=[{"model": "a", "parameters": {"weight": 1, "epsilon": 1.0}}]),
     "models[0].parameters.epsilon", "[0, 1)"),
    (_cfg(method="darex_ties", parameters={"consensus": "avg"}), "parameters.consensus", "['sum', 'count']"),
    (_cfg(method="darex_dare_ties", parameters={"seed": -1}), "parameters.seed", "[0, 2**64)"),
    (_cfg(method="darex_dare_ties", parameters={"seed": [{"filter": "mlp", "value": 1}]}), "parameters.seed",
     "not conditional"),
    (_cfg(dtype="fp16"), "dtype", "'fp16'"),
    (_cfg(out_dtype="int64"), "out_dtype", "'int64'"),
    (_cfg(tokenizer_source="union"), "tokenizer_source", "only 'base'"),
    (_cfg(chat_template="chatml"), "chat_template", "not supported"),
])
def test_errors_name_the_key_path(data, path, needle):
    _error(data, path, needle)


def test_config_errors_come_before_the_models_are_looked_at(tmp_path, capsys):
    # The checkpoints do not exist: the typo is reported, not the missing files.
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump(_cfg(models=[{"model": str(tmp_path / "nowhere"), "parameters": {"wieght": 1}}])))
    with pytest.raises(SystemExit) as exc:
        cli.main(["merge", "--config", str(cfg), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "models[0].parameters.wieght: merge method 'ties' takes no parameter 'wieght'" in err, err
    assert not (tmp_path / "out").exists()
    # With the config right, the missing checkpoint is named by its key path.
    with pytest.raises(MergeConfigError, match=r"^models\[0\]\.model: no such checkpoint"):
        parse_merge_config(_cfg(base_model=str(tmp_path),
                                models=[{"model": str(tmp_path / "nowhere"), "parameters": {"weight": 1}}]))


def test_della_density_epsilon_and_missing_required_fail_at_planning():
    recipe = parse_merge_config(_cfg(method="della", models=[
        {"model": "a", "parameters": {"weight": 1, "density": [{"filter": "mlp", "value": 0.9}, {"value": 0.5}],
                                      "epsilon": 0.2}}]), check_paths=False)
    params = recipe.config.tensor_parameters
    params.check(["model.norm.weight"])  # 0.5 +/- 0.2 is fine
    with pytest.raises(MergeConfigError, match=r"^models\[0\]\.parameters: density 0.9 \+/- epsilon 0.2"):
        params.check(NAMES)
    recipe = parse_merge_config(_cfg(models=[{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}},
                                             {"model": "b", "parameters": {"weight": 1}}]), check_paths=False)
    recipe.config.tensor_parameters.check(["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(MergeConfigError, match=r"^models\[0\]\.parameters\.weight: missing for tensor 'model.embed_tokens"):
        recipe.config.tensor_parameters.check(NAMES)


def test_cli_config_excludes_the_method_options(tmp_path, capsys):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump(_cfg()))
    for extra, needle in ((["--method", "ties"], "--method"), (["-p", "0.5"], "-p"), (["--lambda", "2"], "--lambda"),
                          (["--gamma", "0.1"], "--gamma")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["merge", "--config", str(cfg), "-o", str(tmp_path / "o"), *extra])
        assert exc.value.code == 2
        assert f"drop {needle}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["merge", "--config", str(tmp_path / "missing.yml"), "-o", str(tmp_path / "o")])
    assert exc.value.code == 2 and "No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["merge", "-o", str(tmp_path / "o")])
    assert exc.value.code == 2 and "BASE FT" in capsys.readouterr().err


def test_merge_config_keeps_tensor_parameters_apart():
    recipe = parse_merge_config(_cfg(), check_paths=False)
    with pytest.raises(ValueError, match="tensor_parameters replaces"):
        MergeConfig(method="ties", p=0.5, tensor_parameters=recipe.config.tensor_parameters)
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        MergeConfig(dtype="fp16")


# ---- resolution: mergekit's own resolver is the oracle
def _mergekit_values(data: dict, tensor: str) -> dict:
    """mergekit's resolution (mergekit.parameter_resolver) of `data` for `tensor`, keyed as
    TensorParameters.values: shared values, and per-model lists in the order listed."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge_methods import registry
    from mergekit.parameter_resolver import resolve_parameters

    import darex_ext.integrations.mergekit  # noqa: F401  (registers the darex_* methods)

    config = MergeConfiguration.model_validate(data)
    spec = registry.get(data["merge_method"]).spec
    own = {m.model: m.parameters for m in config.models}

    def sources(model):
        if model is not None:
            yield own.get(model)
        yield config.parameters

    models = [m.model for m in config.models if m.model != config.base_model]
    shared, per_input = resolve_parameters(spec, tensor_name=tensor, inputs={m: tensor for m in models},
                                           sources=sources, base_model=config.base_model)
    out = dict(shared)
    for p in spec.input_parameters:
        out[p.name] = [per_input[m][p.name] for m in models]
    return out


RESOLUTION_CASES = [
    _cfg("ties", parameters={"density": 0.3, "normalize": "no", "lambda": "1e-1"}, models=[
        {"model": "c", "parameters": {"weight": [{"filter": "mlp", "value": 0.25}, {"filter": "*", "value": 2}]}},
        {"model": "a", "parameters": {"weight": 1, "density": [{"filter": "self_attn", "value": 0.9}]}},
        {"model": "base", "parameters": {"weight": 7}},
        {"model": "b", "parameters": {"weight": {"filter": "", "value": 3}}}]),
    _cfg("breadcrumbs_ties", parameters={"gamma": [{"filter": "norm", "value": 0.05}], "weight": 0.5}, models=[
        {"model": "a", "parameters": {"gamma": 0.02, "density": [{"filter": "layers.1", "value": 0.4}]}},
        {"model": "b"}]),
    _cfg("della_linear", parameters={"epsilon": 0.05, "rescale": False}, models=[
        {"model": "a", "parameters": {"weight": 1, "density": 0.4}}, {"model": "b", "parameters": {"weight": 1}}]),
    _cfg("sce", parameters={"select_topk": [{"filter": "mlp", "value": 0.3}], "int8_mask": True},
         models=[{"model": "a"}, {"model": "b"}]),
    _cfg("darex_dare_ties", parameters={"seed": 9, "dare_rescale": "q", "consensus": "count",
                                        "accumulate": [{"filter": "norm", "value": "float64"}]},
         models=[{"model": "a", "parameters": {"weight": 1, "density": 0.7}}, {"model": "b", "parameters": {"weight": 2}}]),
    _cfg("darex_task_arithmetic", parameters={"normalize": True},
         models=[{"model": "a", "parameters": {"weight": 1}}, {"model": "b", "parameters": {"weight": -0.5}}]),
]


@needs_mergekit
@pytest.mark.parametrize("data", RESOLUTION_CASES, ids=lambda d: d["merge_method"])
def test_resolution_equals_mergekits(data):
    params = parse_merge_config(data, check_paths=False).config.tensor_parameters
    for tensor in NAMES:
        assert params.values(tensor) == _mergekit_values(data, tensor), tensor


@needs_mergekit
def test_method_table_equals_mergekits_registry():
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import ParameterScope

    import darex_ext.integrations.mergekit  # noqa: F401

    for name, spec in METHODS.items():
        theirs = registry.get(name).spec
        want = {p.name: (p.scope != ParameterScope.SHARED, None if p.required else p.default)
                for p in theirs.parameters}
        ours = {p.name: (p.per_model, None if p.default == "<required>" else p.default) for p in spec.params}
        assert ours == want, name


# ---- merges on tiny checkpoints
@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("yaml"))
    return llama_pair(root, n_finetuned=3)


def _models(fts, params):
    # Listed out of their sorted order: mergekit sums in the order listed, and so must darex.
    return [{"model": f, "parameters": p} for f, p in zip([fts[2], fts[0], fts[1]], params)]


def _run_both(data: dict, tmp_path, name: str) -> tuple[dict, dict]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    import darex_ext.integrations.mergekit  # noqa: F401  (registers the darex_* methods)

    theirs = str(tmp_path / f"{name}-mergekit")
    run_merge(MergeConfiguration.model_validate(data), theirs, MergeOptions(copy_tokenizer=False, quiet=True))
    recipe = parse_merge_config(data)
    ours = str(tmp_path / f"{name}-darex")
    merge_models(recipe.base, list(recipe.finetuned), ours, recipe.config)
    return load_all(theirs), load_all(ours)


# density * n straddles .5 in its fraction for the 32x32 and 64x32 weights (0.37 * 1024 = 378.88,
# 0.71 * 2048 = 1454.08) so a rounding of the keep count would show.
TIES_MODELS = [{"weight": 1.0, "density": 0.37},
               {"weight": 0.6, "density": [{"filter": "mlp", "value": 0.71}, {"value": 0.5}]},
               {"weight": 0.3, "density": 0.9}]


@needs_mergekit
@pytest.mark.parametrize("method, top, models", [
    ("ties", {"parameters": {"lambda": 0.9}}, TIES_MODELS),
    ("task_arithmetic", {"parameters": {"lambda": 0.8, "normalize": True}},
     [{"weight": [{"filter": "self_attn", "value": 0.2}, {"value": 1.0}]}, {"weight": 0.5}, {"weight": -0.25}]),
    ("darex_ties", {"parameters": {"consensus": "count"}}, TIES_MODELS),
    ("breadcrumbs", {"parameters": {"gamma": 0.02}}, [dict(m, weight=1.0) for m in TIES_MODELS]),
    ("sce", {"parameters": {"select_topk": 0.4}}, [{}, {}, {}]),
])
def test_deterministic_methods_equal_mergekit_fp32(llamas, tmp_path, method, top, models):
    if method in ("breadcrumbs", "sce"):
        pytest.importorskip("darex_ext.algorithms.sparsify")
    base, fts = llamas
    data = {"merge_method": method, "base_model": base, "dtype": "float32", "models": _models(fts, models), **top}
    theirs, ours = _run_both(data, tmp_path, method)
    assert theirs.keys() == ours.keys() and len(ours) == 21
    base_t = load_all(base)
    for k in theirs:
        assert ours[k].dtype == torch.float32
        assert torch.equal(ours[k], theirs[k]), k
        assert not torch.equal(ours[k], base_t[k]), k


@needs_mergekit
@pytest.mark.parametrize("dtype, out_dtype", [("bfloat16", None), ("float16", None), ("bfloat16", "float32")])
def test_dtype_and_out_dtype_as_mergekit(llamas, tmp_path, dtype, out_dtype):
    # Task arithmetic: no top-k, so no tie among equal low-precision magnitudes can pick differently.
    base, fts = llamas
    data = {"merge_method": "task_arithmetic", "base_model": base, "dtype": dtype,
            "models": _models(fts, [{"weight": 1.0}, {"weight": 0.5}, {"weight": [{"filter": "norm", "value": 2},
                                                                                 {"value": 0.3}]}])}
    if out_dtype:
        data["out_dtype"] = out_dtype
    theirs, ours = _run_both(data, tmp_path, "ta")
    want = getattr(torch, out_dtype or dtype)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype == want, k
        assert torch.equal(ours[k], theirs[k]), k


def test_byte_identical_for_any_worker_count(llamas, tmp_path):
    base, fts = llamas
    data = {"merge_method": "darex_dare_ties", "base_model": base, "dtype": "bfloat16",
            "parameters": {"seed": 11, "dare_rescale": "l1"},
            "models": _models(fts, [{"weight": 1.0, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]},
                                    {"weight": 0.5, "density": 0.5}, {"weight": 0.5, "density": 0.8}])}
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump(data))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert cli.main(["merge", "--config", str(cfg), "-o", str(out), "--workers", str(workers), "--quiet"]) == 0
        outs.append(dir_bytes(str(out)))
    assert outs[0] == outs[1]
    merged = load_all(str(tmp_path / "w1"))
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    # The listed order does not move the masks: the same models listed sorted give the same bytes.
    data["models"] = sorted(data["models"], key=lambda m: m["model"])
    cfg.write_text(yaml.safe_dump(data))
    recipe = read_merge_config(cfg)
    merge_models(recipe.base, list(recipe.finetuned), tmp_path / "sorted", recipe.config)
    got = load_all(str(tmp_path / "sorted"))
    for k in merged:  # summation order differs, so equal up to rounding, and the same entries kept
        torch.testing.assert_close(got[k], merged[k], rtol=0.02, atol=1e-3)


def test_planning_resolves_every_tensor_before_reading(llamas, tmp_path):
    base, fts = llamas
    data = {"merge_method": "ties", "base_model": base,
            "models": [{"model": fts[0], "parameters": {"weight": [{"filter": "mlp", "value": 1}]}},
                       {"model": fts[1], "parameters": {"weight": 1}}]}
    recipe = parse_merge_config(data)
    with pytest.raises(MergeConfigError, match=r"models\[0\]\.parameters\.weight: missing for tensor"):
        plan_merge(recipe.base, list(recipe.finetuned), recipe.config)
    with pytest.raises(MergeConfigError):
        merge_models(recipe.base, list(recipe.finetuned), tmp_path / "out", recipe.config)
    assert not os.path.exists(tmp_path / "out")


# ---- the method options of `darex merge` without a config
@pytest.mark.parametrize("kwargs, needle", [
    (dict(method="ties", gamma=0.1), "gamma (--gamma) applies to the breadcrumbs methods"),
    (dict(method="breadcrumbs", p=0.5, gamma=1.5), "gamma (--gamma) must be in [0, 1]"),
    (dict(method="dare-ties", p=0.5, epsilon=0.1), "epsilon (--epsilon) applies to the DELLA methods"),
    (dict(method="della", p=0.5, epsilon=1.0), "epsilon (--epsilon) must be in [0, 1)"),
    (dict(method="task-arithmetic", consensus="sum"), "applies to the sign-electing methods"),
    (dict(method="ties", consensus="mean"), "must be 'sum' or 'count'"),
    (dict(method="ties", rescale="q"), "must be one of ('none', 'l1', 'l2', 'linf')"),
    (dict(method="sce", rescale="l1"), "does not apply to 'sce'"),
    (dict(method="sce", weights=(1.0, 2.0)), "--weights does not apply"),
    (dict(method="della"), "needs -p"),
    (dict(method="breadcrumbs-ties"), "needs -p"),
])
def test_method_option_errors(kwargs, needle):
    with pytest.raises(ValueError) as exc:
        MergeConfig(**kwargs)
    assert needle in str(exc.value)


def test_cli_method_options_reach_merge_tensor(llamas, tmp_path):
    from darex_ext.algorithms.merge import merge_tensor

    base, fts = llamas
    out = tmp_path / "out"
    assert cli.main(["merge", base, *fts, "-o", str(out), "--method", "ties", "-p", "0.63", "--consensus", "count",
                     "--rescale", "l2", "--weights", "1", "0.5", "0.25", "--quiet"]) == 0
    merged, b = load_all(str(out)), load_all(base)
    f = [load_all(p) for p in fts]
    for name in ("model.layers.0.mlp.up_proj.weight", "lm_head.weight"):
        want = merge_tensor(b[name], [x[name] for x in f], "ties", p=0.63, consensus="count", rescale="l2",
                            weights=[1, 0.5, 0.25])
        assert torch.equal(merged[name], want), name
        default = merge_tensor(b[name], [x[name] for x in f], "ties", p=0.63, weights=[1, 0.5, 0.25])
        assert not torch.equal(merged[name], default), name  # the options changed something
