"""darex_ext inside PEFT: drop-ins for `peft.utils.merge_utils` (`prune`, `magnitude_prune`,
`dare_linear`, `dare_ties`, `ties`), the functions `add_weighted_adapter` merges LoRA adapters with.

Same signatures and semantics (`density` = kept fraction): magnitude keeps exactly
int(density * n) entries by |x| (radix select instead of torch.topk; among equal |x| the lower
index is kept); random drops with darex's seeded mask and rescales by 1/density. The seed comes
from torch's default generator (torch.manual_seed reproduces a run) unless `seed=` is given.

    import darex_ext.integrations.peft as dp
    dp.install()    # LoraModel.add_weighted_adapter(..., combination_type="dare_ties") uses darex
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..algorithms.prune_tensor import prune_tensor
from ..ops import topk_mask
from ..seeds import resolve_seed, splitmix64

__all__ = ["prune", "magnitude_based_pruning", "random_pruning", "magnitude_prune", "ties", "dare_linear",
           "dare_ties", "install", "uninstall"]

_ORIGINAL: dict[str, Any] = {}
_PATCHED = ("prune", "magnitude_based_pruning", "random_pruning", "magnitude_prune", "ties", "dare_linear", "dare_ties")


def magnitude_based_pruning(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density * n) largest |x| (exactly that many), zero the rest."""
    k = int(density * tensor.numel())
    if k <= 0:
        return tensor * 0
    return tensor * topk_mask(tensor.abs(), min(k, tensor.numel()))


def random_pruning(tensor: torch.Tensor, density: float, rescale: bool, *, seed: int | None = None) -> torch.Tensor:
    """Keep each entry with probability `density` (darex mask); rescale kept ones by 1/density."""
    if density <= 0 or tensor.numel() == 0:
        return tensor * 0
    seed = resolve_seed(torch.default_generator if seed is None else seed)
    out = tensor.detach().clone()
    if rescale:
        return prune_tensor(out, "darex-q", 1.0 - density, q=density, seed=seed)
    return prune_tensor(out, "dare", 1.0 - density, seed=seed, rescale="none")


def prune(tensor: torch.Tensor, density: float, method: str, rescale: bool = False, *,
          seed: int | None = None) -> torch.Tensor:
    """peft.utils.merge_utils.prune with darex kernels."""
    if density >= 1:
        warnings.warn(f"The density {density} is greater than or equal to 1, no pruning will be performed.")
        return tensor
    if density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    if method == "magnitude":
        return magnitude_based_pruning(tensor, density)
    if method == "random":
        return random_pruning(tensor, density, rescale=rescale, seed=seed)
    raise ValueError(f"Unknown method {method}")


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack(list(tensors), dim=0)
    w = weights.to(stacked.dtype).reshape(weights.shape + (1,) * (stacked.dim() - weights.dim()))
    return (stacked * w).sum(dim=0)


def _ties_merge(tensors: Sequence[torch.Tensor], weights: torch.Tensor, method: str) -> torch.Tensor:
    stacked = torch.stack(list(tensors), dim=0)
    if method == "total":
        magnitude = stacked.sum(dim=0)
    elif method == "frequency":
        magnitude = stacked.sign().sum(dim=0)
    else:
        raise RuntimeError(f'Unimplemented mask method "{method}"')
    agree = stacked.sign() == torch.where(magnitude >= 0, 1, -1)
    w = weights.to(stacked.dtype).reshape(weights.shape + (1,) * (stacked.dim() - weights.dim()))
    mixed = (stacked * w * agree).sum(dim=0)
    return mixed / torch.clamp(agree.sum(dim=0), min=1.0)


def _seeds(seed: int | None, n: int) -> list[int]:
    first = resolve_seed(torch.default_generator if seed is None else seed)
    return [splitmix64((first + i) & ((1 << 64) - 1)) for i in range(n)]


def magnitude_prune(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    return _weighted_sum([prune(t, density, "magnitude") for t in task_tensors], weights)


def ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
         majority_sign_method: str = "total") -> torch.Tensor:
    return _ties_merge([prune(t, density, "magnitude") for t in task_tensors], weights, majority_sign_method)


def dare_linear(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float, *,
                seed: int | None = None) -> torch.Tensor:
    seeds = _seeds(seed, len(task_tensors))
    return _weighted_sum([prune(t, density, "random", rescale=True, seed=s) for t, s in zip(task_tensors, seeds)],
                         weights)


def dare_ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
              majority_sign_method: str = "total", *, seed: int | None = None) -> torch.Tensor:
    seeds = _seeds(seed, len(task_tensors))
    pruned = [prune(t, density, "random", rescale=True, seed=s) for t, s in zip(task_tensors, seeds)]
    return _ties_merge(pruned, weights, majority_sign_method)


def install() -> None:
    """Patch peft.utils.merge_utils (and the names peft.tuners.lora.model imported from it)."""
    import peft.tuners.lora.model as lora_model
    import peft.utils.merge_utils as mu

    here = globals()
    for name in _PATCHED:
        if name not in _ORIGINAL:
            _ORIGINAL[name] = getattr(mu, name)
        setattr(mu, name, here[name])
        if hasattr(lora_model, name):
            _ORIGINAL.setdefault(f"lora.{name}", getattr(lora_model, name))
            setattr(lora_model, name, here[name])


def uninstall() -> None:
    import peft.tuners.lora.model as lora_model
    import peft.utils.merge_utils as mu

    for key, fn in list(_ORIGINAL.items()):
        if key.startswith("lora."):
            setattr(lora_model, key[5:], fn)
        else:
            setattr(mu, key, fn)
        del _ORIGINAL[key]
