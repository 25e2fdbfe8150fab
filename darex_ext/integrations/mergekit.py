"""darex_ext inside mergekit: a drop-in `sparsify` and merge methods registered as `darex_*`.

    import darex_ext.integrations.mergekit as dm
    dm.install()          # mergekit's own ties/dare_ties/... now sparsify with darex kernels
    # merge_method: darex_dare_ties | darex_dare_linear | darex_ties | darex_task_arithmetic
    # in a mergekit YAML works once this module is imported (it registers them)

`sparsify` has mergekit's signature and semantics: `density` is the kept fraction, magnitude keeps
exactly max(1, int(density * n)) entries (ties toward the lower index, no sort), density >= 1
returns the tensor itself, `rescale_norm` l1/l2/linf rescales the kept entries to the original
norm. The random mask is darex's seeded one; its seed is drawn from torch's default generator
(so mergekit's `--random-seed` makes runs reproducible) unless `seed=` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..algorithms.merge import _disjoint, _linear, merge_seed
from ..algorithms.prune_tensor import prune_tensor
from ..ops import topk_mask
from ..seeds import resolve_seed

__all__ = ["sparsify", "install", "uninstall", "register_methods", "METHOD_NAMES"]

METHOD_NAMES = ("darex_task_arithmetic", "darex_ties", "darex_dare_ties", "darex_dare_linear")
_ORIGINAL: dict[str, Any] = {}


def _method_name(method) -> str:
    return getattr(method, "value", method)


def _norm_name(norm) -> str | None:
    return None if norm is None else getattr(norm, "value", norm)


def _rescaled(tensor: torch.Tensor, masked: torch.Tensor, norm: str | None, eps: float = 1e-7) -> torch.Tensor:
    if norm is None:
        return masked
    if norm == "l1":
        before, after = tensor.abs().sum(), masked.abs().sum()
    elif norm == "l2":
        before, after = tensor.norm(), masked.norm()
    elif norm == "linf":
        before, after = tensor.abs().max(), masked.abs().max()
    else:
        raise NotImplementedError(norm)
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _magnitude(tensor: torch.Tensor, density: float, norm: str | None) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    mask = topk_mask(tensor.abs(), k)
    return _rescaled(tensor, tensor * mask, norm)


def _random(tensor: torch.Tensor, density: float, norm: str | None, seed) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    seed = resolve_seed(torch.default_generator if seed is None else seed)
    out = tensor.detach().clone()
    if norm == "l1":
        return prune_tensor(out, "dare", 1.0 - density, seed=seed, rescale="l1")
    prune_tensor(out, "dare", 1.0 - density, seed=seed, rescale="none")
    return _rescaled(tensor, out, norm)


def sparsify(tensor: torch.Tensor, density: float, method, gamma: float = 0, epsilon: float = 0,
             rescale_norm=None, *, seed: int | None = None) -> torch.Tensor:
    """mergekit.sparsify.sparsify with darex kernels for "magnitude" and "random"."""
    name, norm = _method_name(method), _norm_name(rescale_norm)
    if name == "magnitude":
        return _magnitude(tensor, float(density), norm)
    if name == "random":
        return _random(tensor, float(density), norm, seed)
    original = _ORIGINAL.get("sparsify")
    if original is None:
        from mergekit import sparsify as mk

        original = mk.sparsify
    return original(tensor, density=density, method=method, gamma=gamma, epsilon=epsilon, rescale_norm=rescale_norm)


def install() -> None:
    """Route mergekit's sparsification (and so its ties/dare/breadcrumbs methods) through darex."""
    import mergekit.merge_methods.generalized_task_arithmetic as gta
    import mergekit.sparsify as mk

    if "sparsify" not in _ORIGINAL:
        _ORIGINAL["sparsify"] = mk.sparsify
        _ORIGINAL["gta.sparsify"] = gta.sparsify
    mk.sparsify = sparsify
    gta.sparsify = sparsify
    register_methods()


def uninstall() -> None:
    import mergekit.merge_methods.generalized_task_arithmetic as gta
    import mergekit.sparsify as mk

    if "sparsify" in _ORIGINAL:
        mk.sparsify = _ORIGINAL.pop("sparsify")
        gta.sparsify = _ORIGINAL.pop("gta.sparsify")


def _make_method_class():
    from mergekit.merge_methods.base import (BasePolicy, GroupMergeMethod, InputContract, MergeMethodSpec,
                                             ParameterScope, ParameterSpec, TensorGroup)

    @dataclass(frozen=True)
    class DarexMerge(GroupMergeMethod):
        """Task arithmetic / TIES / DARE-TIES / DARE-linear with darex kernels and per-tensor
        seeds tensor_seed(seed + i, tensor name) for the i-th model in order of str(model id)."""

        kind: str            # "task-arithmetic" | "ties" | "dare-ties" | "dare-linear"
        method_name: str
        pretty_name: str
        default_normalize: bool

        @cached_property
        def spec(self) -> MergeMethodSpec:
            params = [
                ParameterSpec("normalize", bool, ParameterScope.SHARED, default=self.default_normalize),
                ParameterSpec("rescale", bool, ParameterScope.SHARED, default=self.kind.startswith("dare")),
                # DARE rescale: "l1" (mergekit's rescale), "q" (1/(1-density), the DARE paper), "none"
                ParameterSpec("dare_rescale", str, ParameterScope.SHARED, default=""),
                ParameterSpec("lambda", float, ParameterScope.SHARED, default=1.0),
                ParameterSpec("seed", int, ParameterScope.SHARED, default=0),
                ParameterSpec("weight", float, ParameterScope.NON_BASE),
                ParameterSpec("density", float, ParameterScope.NON_BASE, default=1.0),
            ]
            return MergeMethodSpec(name=self.method_name, pretty_name=self.pretty_name,
                                   reference_url="https://github.com/darex-ext", parameters=tuple(params),
                                   contract=InputContract(base=BasePolicy.REQUIRED))

        def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
            base = group.base.tensor
            # mergekit's input order is not stable from run to run; the DARE seeds follow the
            # models' reference strings (their paths) so a merge is reproducible.
            entries = sorted(group.non_base, key=lambda e: str(e.id))
            if not entries:
                return base
            acc = torch.float64 if base.dtype == torch.float64 else torch.float32
            base_acc = base.to(acc)
            ds = [e.tensor.to(acc) - base_acc for e in entries]
            weights = [parameters["weight"][e.id] for e in entries]
            density = [parameters["density"][e.id] for e in entries]
            name = group.metadata.name or ""
            if self.kind == "ties":
                for d, keep in zip(ds, density):
                    if keep < 1:
                        prune_tensor(d, "magnitude", 1.0 - max(0.0, keep))
            elif self.kind.startswith("dare"):
                mode = parameters["dare_rescale"] or ("l1" if parameters["rescale"] else "none")
                if mode not in ("l1", "q", "none"):
                    raise ValueError(f"dare_rescale must be 'l1', 'q' or 'none', got {mode!r}")
                for i, (d, keep) in enumerate(zip(ds, density)):
                    if keep >= 1:
                        continue
                    if keep <= 0:
                        d.zero_()
                        continue
                    seed = merge_seed(parameters["seed"], i, name)
                    if mode == "q":
                        prune_tensor(d, "darex-q", 1.0 - keep, q=keep, seed=seed)
                    else:
                        prune_tensor(d, "dare", 1.0 - keep, seed=seed, rescale=mode)
            for d, w in zip(ds, weights):
                if w != 1.0:
                    d.mul_(w)
            if self.kind in ("ties", "dare-ties"):
                mixed = _disjoint(ds, weights, normalize=parameters["normalize"], consensus="sum")
            else:
                mixed = _linear(ds, weights, normalize=parameters["normalize"])
            if parameters["lambda"] != 1:
                mixed.mul_(parameters["lambda"])
            return (base_acc + mixed).to(base.dtype)  # never in place: base is the caller's

    return DarexMerge


def register_methods() -> None:
    """Register darex_task_arithmetic, darex_ties, darex_dare_ties, darex_dare_linear (idempotent)."""
    from mergekit.merge_methods import registry

    have = {m.spec.name for m in registry.registered_methods()}
    cls = _make_method_class()
    for kind, name, pretty, normalize in (("task-arithmetic", "darex_task_arithmetic", "Task Arithmetic (darex)", False),
                                          ("ties", "darex_ties", "TIES (darex)", True),
                                          ("dare-ties", "darex_dare_ties", "DARE TIES (darex)", False),
                                          ("dare-linear", "darex_dare_linear", "Linear DARE (darex)", False)):
        if name not in have:
            registry.register(cls(kind, name, pretty, normalize))


def _register_if_available() -> None:
    try:
        register_methods()
    except ImportError:  # mergekit not installed: sparsify still works on its own
        pass


_register_if_available()
