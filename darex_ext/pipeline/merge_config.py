"""`darex merge --config cfg.yml`: mergekit's YAML merge schema run on darex's streaming merge.

The subset of mergekit's configuration (mergekit/config.py and mergekit/parameter_resolver.py in
arcee-ai/mergekit, 0.1.5) that describes one base and N fine-tunes merged tensor by tensor:

    merge_method: ties                 # a mergekit method or its darex_* twin (METHODS)
    base_model: path/to/base
    models:
      - model: path/to/ft_a
        parameters: {weight: 1.0, density: 0.5}
      - model: path/to/ft_b
        parameters:
          weight: [{filter: mlp, value: 0.3}, {value: 0.7}]   # first matching filter wins
    parameters: {normalize: true, lambda: 1.0, density: 0.6}  # shared, and per-model defaults
    dtype: bfloat16                    # the arithmetic's dtype (inputs cast), and the output's
    out_dtype: float16                 # optional: the output's dtype instead

Resolution follows mergekit: a per-model parameter comes from the model's own `parameters`, then
the top-level `parameters`, then the method's default; a conditional list yields the value of its
first entry whose `filter` is absent, "*" or a substring of the tensor name, and falls through to
the next scope when none matches. Gradients (lists of numbers interpolated over layers) and the
`slices:` / `modules:` forms are refused, as are LoRA (`model+lora`) and revision (`@rev`)
references: darex reads local checkpoints.

Everything is checked before any model is read; an unknown key, method or parameter, a parameter
in the wrong scope or of the wrong type raises MergeConfigError (a ValueError) naming its key path,
e.g. `models[1].parameters.density[0].value`. Unlike mergekit, which ignores parameters its method
does not declare, a misspelt or inapplicable parameter is an error.

The fine-tunes are summed in the order listed, as mergekit does; the random masks (DARE, DELLA)
of fine-tune i are seeded by its place among the sorted model strings, as darex's mergekit
methods seed them (darex_ext.integrations.mergekit), so `darex merge --config` and
`darex-mergekit` write the same model from the same YAML, and the masks do not depend on the
order of `models:`. The seed is the darex_* methods' `seed` parameter, else `darex merge --seed`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..algorithms.merge import RANDOM_MERGE_METHODS as _RANDOM
from .merge import MERGE_DTYPES, MergeConfig

__all__ = ["MergeConfigError", "MergeRecipe", "TensorParameters", "METHODS", "parse_merge_config",
           "read_merge_config", "load_yaml"]


class MergeConfigError(ValueError):
    """A mergekit YAML darex cannot run; the message starts with the offending key path."""


_REQUIRED = "<required>"  # a str, so specs stay picklable and printable


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str            # "float" | "bool" | "int" | "str"
    per_model: bool      # mergekit's NON_BASE scope: one value per fine-tune
    default: Any = _REQUIRED
    choices: tuple[str, ...] = ()   # kind "str": the accepted values


@dataclass(frozen=True)
class MethodSpec:
    darex: str                     # darex's method (darex_ext.algorithms.merge.MERGE_METHODS)
    params: tuple[ParamSpec, ...]

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)


def _gta(darex: str, normalize: bool, rescale: bool, *extra: ParamSpec) -> MethodSpec:
    # mergekit/merge_methods/generalized_task_arithmetic.py: GeneralizedTaskArithmeticMerge.spec
    return MethodSpec(darex, (ParamSpec("int8_mask", "bool", False, False),
                              ParamSpec("normalize", "bool", False, normalize),
                              ParamSpec("rescale", "bool", False, rescale),
                              ParamSpec("lambda", "float", False, 1.0),
                              ParamSpec("weight", "float", True),
                              ParamSpec("density", "float", True, 1.0), *extra))


_GAMMA = ParamSpec("gamma", "float", True, 0.01)
_EPSILON = ParamSpec("epsilon", "float", True, 0.15)

# mergekit's registry (mergekit/merge_methods/registry.py, sce.py): name -> darex method and the
# parameters mergekit declares for it, with its defaults.
_STOCK = {
    "task_arithmetic": _gta("task-arithmetic", False, False),
    "ties": _gta("ties", True, False),
    "dare_ties": _gta("dare-ties", False, True),
    "dare_linear": _gta("dare-linear", False, True),
    "breadcrumbs": _gta("breadcrumbs", False, False, _GAMMA),
    "breadcrumbs_ties": _gta("breadcrumbs-ties", False, False, _GAMMA),
    "della": _gta("della", True, True, _EPSILON),
    "della_linear": _gta("della-linear", False, True, _EPSILON),
    "sce": MethodSpec("sce", (ParamSpec("int8_mask", "bool", False, False),
                              ParamSpec("select_topk", "float", False, 1.0))),
}
_SIGN_ELECTING = ("ties", "dare-ties", "breadcrumbs-ties", "della")


def _darex_twin(spec: MethodSpec) -> MethodSpec:
    """darex_<name> (darex_ext.integrations.mergekit): mergekit's parameters plus darex's own."""
    extra = [ParamSpec("accumulate", "str", False, "", ("", "float32", "float64"))]
    if spec.darex in _SIGN_ELECTING:
        extra.append(ParamSpec("consensus", "str", False, "sum", ("sum", "count")))
    if spec.darex in _RANDOM:
        extra.append(ParamSpec("seed", "int", False, 0))
    if spec.darex.startswith("dare"):
        extra.append(ParamSpec("dare_rescale", "str", False, "", ("", "q", "l1", "l2", "linf", "none")))
    return MethodSpec(spec.darex, spec.params + tuple(extra))


METHODS: dict[str, MethodSpec] = {**_STOCK, **{f"darex_{k}": _darex_twin(v) for k, v in _STOCK.items()}}

_TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
             "tokenizer", "chat_template")
_UNSUPPORTED_TOP = {"slices": "slices (layer ranges) are not supported: list whole models under models:",
                    "modules": "modules are not supported: list whole models under models:"}
_BOOL_TEXT = {"true": True, "yes": True, "on": True, "y": True, "t": True, "1": True,
              "false": False, "no": False, "off": False, "n": False, "f": False, "0": False}


def _fail(path: str, message: str) -> MergeConfigError:
    return MergeConfigError(f"{path}: {message}")


# A setting, resolved: ((filter, value), ...) tried in order; a plain value is ((None, value),).
Setting = tuple[tuple[Any, Any], ...]
Scope = tuple[tuple[str, Setting], ...]


def _scalar(value: Any, spec: ParamSpec, path: str) -> Any:
    """One value checked as mergekit's pydantic validation would accept it (numbers given as
    strings too, e.g. YAML's unquoted 1e-3), then darex's range checks."""
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        raise _fail(path, f"must be true or false, got {value!r}")
    if spec.kind == "str":
        if value not in spec.choices:
            raise _fail(path, f"must be one of {list(spec.choices)}, got {value!r}")
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"must be an integer, got {value!r}")
        if not 0 <= value < (1 << 64):
            raise _fail(path, f"must be in [0, 2**64), got {value}")
        return value
    if isinstance(value, bool):
        raise _fail(path, f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _fail(path, f"must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise _fail(path, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(path, f"must be a finite number, got {value}")
    if spec.name in ("density", "select_topk") and value < 0:
        raise _fail(path, f"must be >= 0 (1 or more keeps everything), got {value}")
    if spec.name == "gamma" and not 0 <= value <= 1:
        raise _fail(path, f"must be in [0, 1], got {value}")
    if spec.name == "epsilon" and not 0 <= value < 1:
        raise _fail(path, f"must be in [0, 1), got {value}")
    return value


def _setting(raw: Any, spec: ParamSpec, path: str) -> Setting:
    single = isinstance(raw, Mapping)  # one conditional, not in a list: its path has no index
    if single:
        raw = [raw]
    if not isinstance(raw, list):
        return ((None, _scalar(raw, spec, path)),)
    out = []
    for i, cond in enumerate(raw):
        where = path if single else f"{path}[{i}]"
        if not isinstance(cond, Mapping):
            raise _fail(where, "lists of values (gradients interpolated over layers) are not supported by "
                               "darex merge; use conditional entries {filter: ..., value: ...}")
        extra = sorted(set(cond) - {"filter", "value"})
        if extra:
            raise _fail(f"{where}.{extra[0]}", "unknown key (a conditional takes filter and value)")
        if "value" not in cond:
            raise _fail(f"{where}.value", "missing (a conditional needs a value)")
        flt = cond.get("filter")
        if flt is not None and not isinstance(flt, str):
            raise _fail(f"{where}.filter", f"must be a string, got {flt!r}")
        if isinstance(cond["value"], (list, Mapping)):
            raise _fail(f"{where}.value", "gradients (lists of values) are not supported by darex merge")
        out.append((flt, _scalar(cond["value"], spec, f"{where}.value")))
    return tuple(out)


def _evaluate(setting: Setting, tensor: str) -> Any:
    """mergekit.config.evaluate_setting for filters: None when no entry applies."""
    for flt, value in setting:
        if flt is None or flt == "*" or (tensor and flt in tensor):
            return value
    return None


def _lookup(scopes: Sequence[Scope], name: str, tensor: str) -> Any:
    for scope in scopes:
        for key, setting in scope:
            if key == name:
                value = _evaluate(setting, tensor)
                if value is not None:
                    return value
    return None


def _scope(raw: Any, method: str, spec: MethodSpec, path: str, *, per_model_only: bool) -> Scope:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise _fail(path, f"must be a mapping of parameter names to values, got {raw!r}")
    out = []
    for key, value in raw.items():
        p = spec.param(key) if isinstance(key, str) else None
        if p is None:
            known = ", ".join(q.name for q in spec.params)
            raise _fail(f"{path}.{key}", f"merge method {method!r} takes no parameter {key!r} (it takes: {known})")
        if per_model_only and not p.per_model:
            raise _fail(f"{path}.{key}", f"{key!r} is shared by all models; set it under the top-level parameters")
        if p.name == "seed" and isinstance(value, (list, Mapping)):
            raise _fail(f"{path}.{key}", "must be one integer (the seed of the whole merge), not conditional")
        out.append((key, _setting(value, p, f"{path}.{key}")))
    return tuple(out)


@dataclass(frozen=True)
class TensorParameters:
    """The resolved parameters of a mergekit YAML, evaluated per tensor name."""

    method: str                    # mergekit's name (METHODS)
    shared: Scope                  # the top-level parameters
    models: tuple[Scope, ...]      # each fine-tune's own parameters, in merge order
    labels: tuple[str, ...]        # each fine-tune's key path, for errors
    ranks: tuple[int, ...]         # each fine-tune's place among the models' strings (mask seeds)

    def values(self, tensor: str) -> dict[str, Any]:
        """mergekit-named values for `tensor`: shared ones as scalars, per-model ones as lists."""
        spec = METHODS[self.method]
        out: dict[str, Any] = {}
        for p in spec.params:
            if p.per_model:
                vals = []
                for scope, label in zip(self.models, self.labels):
                    v = _lookup((scope, self.shared), p.name, tensor)
                    if v is None:
                        if p.default == _REQUIRED:
                            raise _fail(f"{label}.parameters.{p.name}",
                                        f"missing for tensor {tensor!r} (no entry applies and it has no default)")
                        v = p.default
                    vals.append(v)
                out[p.name] = vals
            else:
                v = _lookup((self.shared,), p.name, tensor)
                out[p.name] = p.default if v is None else v
        if "epsilon" in out:  # mergekit's della_magprune raises this only when it reaches the tensor
            for label, d, e in zip(self.labels, out["density"], out["epsilon"]):
                if 0 < d < 1 and not (d + e < 1 and d - e > 0):
                    raise _fail(f"{label}.parameters", f"density {d} +/- epsilon {e} must lie in (0, 1) "
                                                       f"(tensor {tensor!r})")
        return out

    def merge_kwargs(self, tensor: str, seed: int = 0) -> dict[str, Any]:
        """darex_ext.algorithms.merge.merge_tensor's keyword arguments for `tensor`; the random
        masks' seeds are merge_seed(seed, rank, tensor), rank = the model's place in the sorted
        model strings, as darex's mergekit methods seed them."""
        from ..algorithms.merge import merge_seed

        method, v = METHODS[self.method].darex, self.values(tensor)
        out: dict[str, Any] = {"int8_mask": v["int8_mask"], "accumulate": v.get("accumulate") or None}
        if method == "sce":
            out["density"] = v["select_topk"]
            return out
        out.update(weights=v["weight"], lam=v["lambda"], normalize=v["normalize"])
        if method == "task-arithmetic":
            return out  # mergekit's task_arithmetic declares density and rescale but ignores them
        out.update(density=v["density"], rescale=v.get("dare_rescale") or v["rescale"])
        for key in ("gamma", "epsilon", "consensus"):
            if key in v:
                out[key] = v[key]
        if method in _RANDOM:
            out["seeds"] = [merge_seed(seed, r, tensor) for r in self.ranks]
        return out

    def check(self, names: Sequence[str]) -> None:
        """Resolve every tensor's parameters once, so a missing one fails before any is merged."""
        for name in names:
            self.values(name)


@dataclass(frozen=True)
class MergeRecipe:
    """What `darex merge --config` runs: merge_models(base, finetuned, out, config)."""

    base: str
    finetuned: tuple[str, ...]
    config: MergeConfig
    method: str                    # the YAML's merge_method


def _model_ref(raw: Any, path: str) -> str:
    if isinstance(raw, Mapping):  # mergekit's dict form {model: {path: ...}}
        extra = sorted(k for k, v in raw.items() if k != "model" and v is not None)
        if extra:
            raise _fail(f"{path}.{extra[0]}", "LoRA and architecture overrides are not supported by darex merge")
        inner = raw.get("model")
        if isinstance(inner, Mapping):
            if inner.get("revision") is not None:
                raise _fail(f"{path}.model.revision", "revisions are not supported: darex merge reads local checkpoints")
            inner = inner.get("path")
        raw = inner
    if not isinstance(raw, str) or not raw:
        raise _fail(path, f"must be a model path, got {raw!r}")
    if "+" in raw:
        raise _fail(path, f"{raw!r}: LoRA references (model+lora) are not supported by darex merge")
    if "@" in raw:
        raise _fail(path, f"{raw!r}: revisions (@rev) are not supported: darex merge reads local checkpoints")
    return raw


def _dtype(raw: Any, path: str) -> str | None:
    if raw is None:
        return None
    name = raw[len("torch."):] if isinstance(raw, str) and raw.startswith("torch.") else raw
    if name not in MERGE_DTYPES:
        raise _fail(path, f"must be one of {sorted(MERGE_DTYPES)}, got {raw!r}")
    return name


def _check_exists(ref: str, path: str, base_dir: str | None) -> str:
    full = ref if base_dir is None or os.path.isabs(ref) else os.path.join(base_dir, ref)
    if not os.path.exists(full):
        raise _fail(path, f"no such checkpoint {ref!r} (darex merge reads local checkpoints: download hub "
                          "models first)")
    return full


def parse_merge_config(data: Any, *, seed: int = 0, preset: str = "all", include: Sequence[str] = (),
                       exclude: Sequence[str] = (), device: str = "cpu", check_paths: bool = True,
                       base_dir: str | None = None) -> MergeRecipe:
    """A mergekit configuration (the parsed YAML) as a darex merge; MergeConfigError naming the key
    path on anything darex would not run exactly as described. Reads no model. Relative model
    paths are taken from the working directory, as mergekit does, unless `base_dir` is given.
    `seed` seeds the random masks unless a darex_* method's `seed` parameter is given."""
    if not isinstance(data, Mapping):
        raise _fail("<config>", f"must be a mapping (a YAML document with merge_method, base_model, models), "
                                f"got {type(data).__name__}")
    for key in data:
        if key in _UNSUPPORTED_TOP:
            raise _fail(str(key), _UNSUPPORTED_TOP[key])
        if key not in _TOP_KEYS:
            raise _fail(str(key), f"unknown key (darex merge reads: {', '.join(_TOP_KEYS)})")
    method = data.get("merge_method")
    if method is None:
        raise _fail("merge_method", "missing")
    if method not in METHODS:
        raise _fail("merge_method", f"unknown or unsupported method {method!r} (darex runs: {', '.join(METHODS)})")
    spec = METHODS[method]
    if data.get("tokenizer_source") not in (None, "base"):
        raise _fail("tokenizer_source", "only 'base' is supported (darex copies the base's tokenizer files)")
    for key in ("tokenizer", "chat_template"):
        if data.get(key) is not None:
            raise _fail(key, "not supported (darex copies the base's tokenizer files unchanged)")
    dtype = _dtype(data.get("dtype"), "dtype")
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype")
    if data.get("base_model") is None:
        raise _fail("base_model", f"missing (merge method {method!r} needs a base model)")
    base = _model_ref(data["base_model"], "base_model")
    shared = _scope(data.get("parameters"), method, spec, "parameters", per_model_only=False)

    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "must be a non-empty list of {model: ..., parameters: ...}")
    entries: dict[str, tuple[Scope, str]] = {}
    for i, entry in enumerate(models):
        path = f"models[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(path, f"must be a mapping with model (and parameters), got {entry!r}")
        for key in entry:
            if key not in ("model", "parameters"):
                raise _fail(f"{path}.{key}", "unknown key (a model entry takes model and parameters)")
        if "model" not in entry:
            raise _fail(f"{path}.model", "missing")
        ref = _model_ref(entry["model"], f"{path}.model")
        scope = _scope(entry.get("parameters"), method, spec, f"{path}.parameters", per_model_only=True)
        if ref == base:
            continue  # mergekit merges the base as the base, whatever parameters it is given
        if ref in entries:
            raise _fail(f"{path}.model", f"{ref!r} is listed twice (also {entries[ref][1]})")
        entries[ref] = (scope, path)
    if not entries:
        raise _fail("models", "needs at least one model besides base_model")
    order = list(entries)  # mergekit's: the models in the order listed
    rank = {ref: i for i, ref in enumerate(sorted(order))}
    params = TensorParameters(method, shared, tuple(entries[r][0] for r in order),
                              tuple(entries[r][1] for r in order), tuple(rank[r] for r in order))
    if check_paths:
        base = _check_exists(base, "base_model", base_dir)
        finetuned = tuple(_check_exists(r, f"{entries[r][1]}.model", base_dir) for r in order)
    else:
        finetuned = tuple(order)
    yaml_seed = _lookup((shared,), "seed", "")
    config = MergeConfig(method=spec.darex, seed=seed if yaml_seed is None else yaml_seed, preset=preset,
                         include=tuple(include), exclude=tuple(exclude), device=device, dtype=dtype,
                         out_dtype=out_dtype, tensor_parameters=params)
    return MergeRecipe(base, finetuned, config, method)


def load_yaml(path: str | os.PathLike) -> Any:
    """The parsed document at `path` (YAML; JSON without PyYAML installed)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ImportError("reading a YAML merge config needs PyYAML (pip install pyyaml)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MergeConfigError(f"{os.fspath(path)}: not valid YAML: {exc}") from None


def read_merge_config(path: str | os.PathLike, **kwargs: Any) -> MergeRecipe:
    """parse_merge_config of the YAML file at `path`."""
    return parse_merge_config(load_yaml(path), **kwargs)
