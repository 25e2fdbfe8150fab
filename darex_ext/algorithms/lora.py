"""DARE / DAREx-q on the update of a PEFT LoRA model.

Two modes:

- ``mode="product"`` (exact): the update of each LoRA layer, delta = B @ A * scaling (peft's own
  ``get_delta_weight``, so ``fan_in_fan_out`` layers such as GPT-2's Conv1D are transposed as
  peft merges them), is pruned like any dense delta with :func:`darex_ext.prune_`: every entry
  of delta is dropped with probability p and the kept ones are scaled by 1/q. It is exactly
  DARE / DAREx-q on the weight update the adapter applies; the result is merged into the base
  weights (``merge=True``) or returned as dense pruned deltas.
- ``mode="factors"`` (approximate): the factors lora_A (r x in) and/or lora_B (out x r) are
  pruned in place with :func:`darex_ext.prune_`, each with its own seed, each kept entry scaled
  by 1/q (q = 1 - p by default). Because the masks are independent and each pruned factor is
  unbiased, E[B' A'] = B A, so the update is right on average; but it is not DARE of the
  update: one dropped A_kj removes rank component k from the whole column j of delta, so the
  errors of delta's entries are correlated (structured noise over only r * (in + out) draws
  instead of in * out independent ones); delta' = B' A' stays dense (the savings are in the
  factors); pruning both factors scales a surviving product term by 1/q^2; and DAREx's choice
  of q, derived for independent per-entry drops of delta, does not carry over. It is what
  pruning an adapter checkpoint in place gives (peft's own DARE combination prunes factors
  too); use "product" when the update itself must follow the DARE mask spec.

Seeds: the layer at module name ``name`` (its name in the base model, e.g. ``"fc1"`` or
``"model.layers.0.self_attn.q_proj"``, not the peft wrapper's ``base_model.model.`` prefix) uses
``tensor_seed(seed, name)`` in product mode, and ``tensor_seed(seed, name + ".lora_A")`` /
``tensor_seed(seed, name + ".lora_B")`` in factors mode, so masks do not depend on the order or
subset of layers processed.

Only plain LoRA layers are supported: DoRA and other variants (their merge is not base + delta)
and ``lora_bias=True`` raise ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..ops import _checks, prune_
from ..seeds import tensor_seed

__all__ = ["lora_layers", "prune_lora"]

_PEFT_PREFIX = "base_model.model."


def _lora_layer_type():
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as e:  # pragma: no cover - peft is a dependency of this module only
        raise ImportError("darex_ext.algorithms.lora needs the 'peft' package") from e
    return LoraLayer


def _base_name(name: str) -> str:
    # The name the layer has once peft unloads the model: drop the PeftModel wrapper prefix.
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def _adapter_of(layer, adapter: str | None) -> str:
    if adapter is not None:
        return adapter
    active = layer.active_adapters
    if len(active) != 1:
        raise ValueError(f"adapter: the model has {len(active)} active adapters {active}; name one")
    return active[0]


def lora_layers(model: nn.Module, adapter: str | None = None) -> dict[str, tuple[nn.Module, str]]:
    """{base-model module name: (LoRA layer, adapter name)} for every layer that holds `adapter`
    (None: the single active adapter)."""
    lora_layer = _lora_layer_type()
    found: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, lora_layer):
            continue
        a = _adapter_of(module, adapter)
        if a not in module.lora_A and a not in getattr(module, "lora_embedding_A", {}):
            continue
        if a in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(a, False):
            raise ValueError(f"adapter {a!r} of {name!r} is a LoRA variant (e.g. DoRA); "
                             "only plain LoRA is supported")
        if getattr(module, "lora_bias", {}).get(a, False):
            raise ValueError(f"adapter {a!r} of {name!r} has lora_bias=True, which is not supported")
        if getattr(module, "merged", False):
            raise ValueError(f"{name!r} already has merged adapters; unmerge them first")
        found[_base_name(name)] = (module, a)
    return found


def _q_for(q, name: str):
    if isinstance(q, Mapping):
        if name not in q:
            raise ValueError(f"q is a mapping but has no entry for layer {name!r}")
        return q[name]
    return q


def _factor_weights(layer, adapter: str, which: str) -> list[tuple[str, torch.Tensor]]:
    if adapter in layer.lora_A:
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    else:  # Embedding keeps its factors as bare parameters
        a, b = layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    picked = {"both": [("lora_A", a), ("lora_B", b)], "A": [("lora_A", a)], "B": [("lora_B", b)]}
    return picked[which]


def _unload(model: nn.Module, layers: Mapping[str, tuple[nn.Module, str]]) -> nn.Module:
    if hasattr(model, "unload"):  # PeftModel / LoraModel: peft removes every tuner layer itself
        return model.unload()
    # A plain module with injected LoRA layers: put each base layer back in its parent.
    for name in sorted(layers, key=lambda n: n.count("."), reverse=True):
        module, _ = layers[name]
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def prune_lora(model: nn.Module, p: float, q=None, *, mode: str = "product", seed=0,
               adapter: str | None = None, merge: bool = True, factors: str = "both"):
    """Apply DARE (q=None) or DAREx-q to the LoRA update of a peft model.

    Args:
        model: a ``peft.PeftModel`` (or a module with LoRA layers injected by peft).
        p: drop rate in [0, 1).
        q: None (1 - p), a number, or a mapping {layer name: number or per-row q tensor} (names
            as returned by :func:`lora_layers`; per-row tensors in product mode only, rows of
            the weight-shaped delta).
        mode: "product" (exact DARE of B @ A * scaling) or "factors" (prune lora_A / lora_B;
            approximate, see the module docstring).
        seed: int or torch.Generator; per layer seeds are derived with ``tensor_seed``.
        adapter: adapter name; None uses the single active adapter.
        merge: product mode: True adds the pruned deltas to the base weights and returns the
            unloaded base model (as ``merge_and_unload``; the peft model is consumed); False
            returns {``<layer name>.weight``: pruned delta} and leaves the model untouched.
            Factors mode: True merges the pruned factors and returns the unloaded base model;
            False returns the peft model with its factors pruned in place.
        factors: factors mode only: "both", "A" or "B".
    """
    p = _checks.drop_rate(p)
    if mode not in ("product", "factors"):
        raise ValueError(f"mode must be 'product' or 'factors', got {mode!r}")
    if factors not in ("both", "A", "B"):
        raise ValueError(f"factors must be 'both', 'A' or 'B', got {factors!r}")
    if not isinstance(merge, bool):
        raise TypeError(f"merge must be a bool, got {type(merge).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if adapter is not None and not isinstance(adapter, str):
        raise TypeError(f"adapter must be a str or None, got {type(adapter).__name__}")
    if isinstance(seed, torch.Generator):
        from ..seeds import resolve_seed
        seed = resolve_seed(seed)  # one draw for the whole model, then per-layer seeds
    layers = lora_layers(model, adapter)
    if not layers:
        raise ValueError(f"model has no LoRA layer with adapter {adapter!r}")
    if isinstance(q, Mapping):
        unknown = sorted(set(q) - set(layers))
        if unknown:
            raise ValueError(f"q names layers that are not LoRA layers: {unknown}")

    q_of = {name: _q_for(q, name) for name in layers}
    with torch.no_grad():
        if mode == "factors":
            # Every q is checked before the first factor is touched: no half-pruned model.
            for name, (layer, a) in layers.items():
                if isinstance(q_of[name], torch.Tensor) and q_of[name].dim() >= 1:
                    raise TypeError(f"q[{name!r}]: per-row q is only supported in product mode")
                for _, w in _factor_weights(layer, a, factors):
                    _checks.rescale_q(q_of[name], p, w)
            for name, (layer, a) in layers.items():
                for suffix, w in _factor_weights(layer, a, factors):
                    prune_(w.data, p, q_of[name], seed=tensor_seed(seed, f"{name}.{suffix}"))
            if not merge:
                return model
            deltas = {name: layer.get_delta_weight(a) for name, (layer, a) in layers.items()}
        else:
            deltas = {}
            for name, (layer, a) in layers.items():
                delta = layer.get_delta_weight(a).detach().clone()
                deltas[name] = prune_(delta, p, q_of[name], seed=tensor_seed(seed, name))
            if not merge:
                return {f"{name}.weight": d for name, d in deltas.items()}
        for name, (layer, _) in layers.items():
            # As peft merges: the sum in the wider of the two dtypes, one rounding to the weight's
            # (peft keeps fp16/bf16 models' adapters in float32 by default).
            layer.get_base_layer().weight.data += deltas[name]
    return _unload(model, layers)
