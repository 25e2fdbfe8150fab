"""darex_ext inside mergekit (arcee-ai/mergekit 0.1.5): a drop-in `sparsify` and merge methods
registered as `darex_*`.

    import darex_ext.integrations.mergekit as dm
    dm.install()          # mergekit's own ties/dare_ties/breadcrumbs/della/... sparsify with darex
    # merge_method: darex_ties | darex_task_arithmetic | darex_dare_ties | darex_dare_linear |
    #   darex_breadcrumbs | darex_breadcrumbs_ties | darex_della | darex_della_linear | darex_sce
    # in a mergekit YAML works once this module is imported (it registers them)

`sparsify` has `mergekit.sparsify.sparsify`'s signature and semantics for all four methods
(`algorithms.merge_sparsify`): magnitude keeps exactly max(1, int(density * n)) entries, density
>= 1 returns the tensor itself, `rescale_norm` l1/l2/linf rescales to the original norm unless a
norm is below 1e-7, and gradients flow as through mergekit's code. The random masks (random,
della_magprune) are darex's seeded ones, equal to mergekit's in law; the seed is drawn from
torch's default generator (so mergekit's `--random-seed` makes runs reproducible) unless `seed=`
is given.

The `darex_*` methods are mergekit's methods of the same name computed by `algorithms.merge`:
the same parameters and defaults (weight, density, gamma, epsilon, normalize, rescale, lambda,
int8_mask; select_topk for sce), the same arithmetic in the same dtype, so the deterministic ones
give mergekit's bits. Extra parameters: `seed` (the random methods' masks are
tensor_seed(seed + i, tensor name) for the i-th model in order of str(model id), reproducible
across runs and worker counts), `consensus` ("sum" or "count"), `accumulate` ("" = the merge
dtype, as mergekit; "float32" or "float64"), and for DARE `dare_rescale` ("q": 1/density as in
the DARE paper, "l1", "none"; "" follows `rescale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..algorithms import merge_sparsify
from ..algorithms.merge import RANDOM_MERGE_METHODS, merge_seed, merge_tensor

__all__ = ["sparsify", "install", "uninstall", "register_methods", "METHOD_NAMES"]

# darex method name -> (algorithms.merge method, mergekit's default normalize, default rescale)
_KINDS = {
    "darex_task_arithmetic": ("task-arithmetic", False, False),
    "darex_ties": ("ties", True, False),
    "darex_dare_ties": ("dare-ties", False, True),
    "darex_dare_linear": ("dare-linear", False, True),
    "darex_breadcrumbs": ("breadcrumbs", False, False),
    "darex_breadcrumbs_ties": ("breadcrumbs-ties", False, False),
    "darex_della": ("della", True, True),
    "darex_della_linear": ("della-linear", False, True),
    "darex_sce": ("sce", False, False),
}
METHOD_NAMES = tuple(_KINDS)
_PRETTY = {"task-arithmetic": "Task Arithmetic", "ties": "TIES", "dare-ties": "DARE TIES",
           "dare-linear": "Linear DARE", "breadcrumbs": "Model Breadcrumbs",
           "breadcrumbs-ties": "Model Breadcrumbs with TIES", "della": "DELLA", "della-linear": "Linear DELLA",
           "sce": "SCE"}
_SIGN_ELECTING = ("ties", "dare-ties", "breadcrumbs-ties", "della")
_ORIGINAL: dict[str, Any] = {}


def sparsify(tensor: torch.Tensor, density: float, method, gamma: float = 0, epsilon: float = 0,
             rescale_norm=None, *, seed: int | None = None) -> torch.Tensor:
    """mergekit.sparsify.sparsify with darex kernels (magnitude, random, magnitude_outliers,
    della_magprune); `seed` fixes the random masks."""
    return merge_sparsify.sparsify(tensor, density, method, gamma=gamma, epsilon=epsilon, rescale=rescale_norm,
                                   seed=seed)


def install() -> None:
    """Route mergekit's sparsification (and so its ties/dare/breadcrumbs/della methods) through
    darex, and register the darex_* methods."""
    import mergekit.merge_methods.generalized_task_arithmetic as gta
    import mergekit.sparsify as mk

    if "sparsify" not in _ORIGINAL:
        _ORIGINAL["sparsify"] = mk.sparsify
        _ORIGINAL["gta.sparsify"] = gta.sparsify
    mk.sparsify = sparsify
    gta.sparsify = sparsify
    register_methods()


def uninstall() -> None:
    """Give mergekit its own sparsify back (the darex_* methods stay registered)."""
    import mergekit.merge_methods.generalized_task_arithmetic as gta
    import mergekit.sparsify as mk

    if "sparsify" in _ORIGINAL:
        mk.sparsify = _ORIGINAL.pop("sparsify")
        gta.sparsify = _ORIGINAL.pop("gta.sparsify")


def _parameter_specs(kind: str, normalize: bool, rescale: bool) -> list:
    from mergekit.merge_methods.base import ParameterScope, ParameterSpec

    shared, non_base = ParameterScope.SHARED, ParameterScope.NON_BASE
    params = [ParameterSpec("int8_mask", bool, shared, default=False),
              ParameterSpec("accumulate", str, shared, default="")]
    if kind == "sce":
        return params + [ParameterSpec("select_topk", float, shared, default=1.0)]
    params += [ParameterSpec("normalize", bool, shared, default=normalize),
               ParameterSpec("rescale", bool, shared, default=rescale),
               ParameterSpec("lambda", float, shared, default=1.0),
               ParameterSpec("weight", float, non_base),
               ParameterSpec("density", float, non_base, default=1.0)]
    if kind.startswith("breadcrumbs"):
        params.append(ParameterSpec("gamma", float, non_base, default=0.01))
    if kind.startswith("della"):
        params.append(ParameterSpec("epsilon", float, non_base, default=0.15))
    if kind in _SIGN_ELECTING:
        params.append(ParameterSpec("consensus", str, shared, default="sum"))
    if kind in RANDOM_MERGE_METHODS:
        params.append(ParameterSpec("seed", int, shared, default=0))
    if kind.startswith("dare"):
        params.append(ParameterSpec("dare_rescale", str, shared, default=""))
    return params


def _make_method_class():
    from mergekit.merge_methods.base import BasePolicy, GroupMergeMethod, InputContract, MergeMethodSpec, TensorGroup

    @dataclass(frozen=True)
    class DarexMerge(GroupMergeMethod):
        """One of mergekit's generalized task arithmetic methods or SCE, computed by
        darex_ext.algorithms.merge (see darex_ext.integrations.mergekit)."""

        method_name: str
        kind: str
        default_normalize: bool
        default_rescale: bool

        @cached_property
        def spec(self) -> MergeMethodSpec:
            return MergeMethodSpec(name=self.method_name, pretty_name=f"{_PRETTY[self.kind]} (darex)",
                                   reference_url="https://github.com/arcee-ai/mergekit",
                                   parameters=tuple(_parameter_specs(self.kind, self.default_normalize,
                                                                     self.default_rescale)),
                                   contract=InputContract(base=BasePolicy.REQUIRED))

        def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
            base = group.base.tensor
            entries = group.non_base
            if not entries:
                return base
            common = {"int8_mask": parameters["int8_mask"], "accumulate": parameters["accumulate"] or None}
            tensors = [e.tensor for e in entries]
            if self.kind == "sce":
                return merge_tensor(base, tensors, "sce", density=parameters["select_topk"], **common)
            per_model = {key: [parameters[key][e.id] for e in entries]
                         for key in ("weight", "density", "gamma", "epsilon") if key in parameters}
            rescale = parameters["rescale"]
            if parameters.get("dare_rescale"):
                rescale = parameters["dare_rescale"]
            seeds = None
            if self.kind in RANDOM_MERGE_METHODS:
                # Seeds follow the models' reference strings (their paths), not the config order.
                rank = {i: r for r, i in enumerate(sorted(range(len(entries)), key=lambda i: str(entries[i].id)))}
                name = group.metadata.name or ""
                seeds = [merge_seed(parameters["seed"], rank[i], name) for i in range(len(entries))]
            return merge_tensor(base, tensors, self.kind, weights=per_model["weight"], density=per_model["density"],
                                gamma=per_model.get("gamma", 0.01), epsilon=per_model.get("epsilon", 0.15),
                                seeds=seeds, lam=parameters["lambda"], normalize=parameters["normalize"],
                                rescale=rescale, consensus=parameters.get("consensus"), **common)

    return DarexMerge


def register_methods() -> None:
    """Register the darex_* methods with mergekit (idempotent)."""
    from mergekit.merge_methods import registry

    have = {m.spec.name for m in registry.registered_methods()}
    cls = _make_method_class()
    for name, (kind, normalize, rescale) in _KINDS.items():
        if name not in have:
            registry.register(cls(name, kind, normalize, rescale))


def _register_if_available() -> None:
    try:
        register_methods()
    except ImportError:  # mergekit not installed: sparsify still works on its own
        pass


_register_if_available()
