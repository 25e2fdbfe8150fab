"""darex_ext inside PEFT: drop-ins for `peft.utils.merge_utils` (huggingface/peft,
`src/peft/utils/merge_utils.py`): `prune`, `magnitude_based_pruning`, `random_pruning`,
`magnitude_prune`, `ties`, `dare_linear`, `dare_ties`, the functions `add_weighted_adapter` merges
LoRA adapters with.

Same signatures, semantics and arithmetic (`density` = kept fraction): magnitude keeps exactly
int(density * n) entries by |x| (radix select instead of torch.topk; among equal |x| the lower
index is kept, where torch.topk keeps an unspecified one), so the magnitude merges equal PEFT's
output; random drops with darex's seeded mask (PEFT's Bernoulli mask in law) and rescales by
1/density. The seed comes from torch's default generator (torch.manual_seed reproduces a run)
unless `seed=` is given. Deliberately not PEFT: random pruning at density 0 with rescale returns
zeros (PEFT divides by 0 and returns NaN).

Autograd: with inputs that require grad (under grad mode) the masks are applied by
multiplication and the merge is PEFT's expression, so gradients are PEFT's (for the random
methods, given the mask). Without autograd each pruned tensor is written once, in place, into the
stacked buffer the merge reads.

    import darex_ext.integrations.peft as dp
    dp.install()    # LoraModel.add_weighted_adapter(..., combination_type="dare_ties") uses darex
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..algorithms.merge_sparsify import random as _random_sparsify
from ..ops import prune_, topk_mask
from ..seeds import resolve_seed, splitmix64

__all__ = ["prune", "magnitude_based_pruning", "random_pruning", "magnitude_prune", "ties", "dare_linear",
           "dare_ties", "install", "uninstall"]

_ORIGINAL: dict[str, Any] = {}
_PATCHED = ("prune", "magnitude_based_pruning", "random_pruning", "magnitude_prune", "ties", "dare_linear", "dare_ties")


def _needs_grad(tensors: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _magnitude_count(density: float, n: int) -> int:
    return min(int(density * n), n)


def magnitude_based_pruning(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density * n) largest |x| (exactly that many), zero the rest."""
    k = _magnitude_count(density, tensor.numel())
    if k <= 0:
        return tensor * 0
    if _needs_grad([tensor]):
        return tensor * topk_mask(tensor.detach().abs(), k)
    out = tensor.detach().clone(memory_format=torch.contiguous_format)
    torch.ops.darex.magnitude_prune_(out, k, False, None)  # the count itself, no rate rounding
    return out


def random_pruning(tensor: torch.Tensor, density: float, rescale: bool, *, seed: int | None = None) -> torch.Tensor:
    """Keep each entry with probability `density` (darex mask); rescale kept ones by 1/density."""
    if density <= 0 or tensor.numel() == 0:
        return tensor * 0
    if density >= 1:
        return tensor.clone()  # PEFT's tensor * 1 (/ 1): a new tensor, gradient 1
    seed = torch.default_generator if seed is None else seed
    return _random_sparsify(tensor, density, "q" if rescale else None, seed=seed)


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


# ---- the merges: PEFT's expressions on a stacked [N, ...] tensor
def _shaped(weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    return weights.view(weights.shape + (1,) * (stacked.dim() - weights.dim()))


def _times(stacked: torch.Tensor, other: torch.Tensor, grad: bool) -> torch.Tensor:
    # In place only when it cannot change the result: no autograd and no type promotion.
    if grad or torch.result_type(stacked, other) != stacked.dtype:
        return stacked * other
    return stacked.mul_(other)


def _weighted_sum(stacked: torch.Tensor, weights: torch.Tensor, grad: bool) -> torch.Tensor:
    return _times(stacked, _shaped(weights, stacked), grad).sum(dim=0)


def _ties_merge(stacked: torch.Tensor, weights: torch.Tensor, method: str, grad: bool) -> torch.Tensor:
    if method not in ("total", "frequency"):
        raise RuntimeError(f'Unimplemented mask method "{method}"')
    if not grad:
        return _ties_merge_in_place(stacked, weights, method)
    magnitude = stacked.sum(dim=0) if method == "total" else stacked.sign().sum(dim=0)
    agree = stacked.sign() == torch.where(magnitude >= 0, 1, -1)
    weighted = stacked * _shaped(weights, stacked)
    return (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)


def _ties_merge_in_place(stacked: torch.Tensor, weights: torch.Tensor, method: str) -> torch.Tensor:
    """PEFT's ties arithmetic with one row buffer instead of its [N, ...] sign, int64 and
    boolean tensors: with e = the elected sign (+1 / -1), e * relu(e * x) is x where x agrees and
    0 where not, so the kept products, the sum and the count are PEFT's. A NaN entry counts as
    NaN where PEFT counts 0; its merged entry is NaN either way."""
    row_shape = stacked.shape[1:]
    if method == "total":
        elected = stacked.sum(dim=0)
    else:
        elected = torch.zeros(row_shape, dtype=stacked.dtype, device=stacked.device)
        for row in stacked:
            elected.add_(row.sign())  # small whole numbers: exact in any order
    # torch.where(s >= 0, 1, -1): sign(sign(s) + 0.5) is +1 for s >= 0, -1 below; NaN elects -1
    elected.sign_().add_(0.5).sign_().nan_to_num_(nan=-1.0)
    count = torch.zeros(row_shape, dtype=torch.get_default_dtype(), device=stacked.device)
    kept = torch.empty_like(elected)
    for row in stacked:
        row.mul_(elected).clamp_(min=0)
        count.add_(torch.sign(row, out=kept))
        row.mul_(elected)
    del kept, elected
    mixed = _times(stacked, _shaped(weights, stacked), False).sum(dim=0)
    return _divided(mixed, count.clamp_(min=1.0))


def _divided(mixed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    if torch.result_type(mixed, count) == mixed.dtype:
        return mixed.div_(count)
    return mixed / count


def _pruned_stack(tensors: Sequence[torch.Tensor], density: float, prune_row: Callable[[torch.Tensor, int], None],
                  prune_one: Callable[[torch.Tensor, int], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """torch.stack of the pruned tensors. Without autograd, each tensor is copied once into its
    row and pruned there in place (no per-tensor copy, no mask)."""
    tensors = list(tensors)
    if _needs_grad(tensors) or density >= 1 or density < 0:
        return torch.stack([prune_one(t, i) for i, t in enumerate(tensors)], dim=0), _needs_grad(tensors)
    stacked = torch.stack(tensors, dim=0)  # a fresh buffer: the rows are ours to prune
    for i in range(len(tensors)):
        prune_row(stacked[i], i)
    return stacked, False


def _magnitude_stack(tensors, density: float) -> tuple[torch.Tensor, bool]:
    def row(r: torch.Tensor, _i: int) -> None:
        k = _magnitude_count(density, r.numel())
        if k <= 0:
            r.mul_(0)  # PEFT: tensor * 0 (keeps NaN/inf as NaN)
        else:
            torch.ops.darex.magnitude_prune_(r, k, False, None)

    return _pruned_stack(tensors, density, row, lambda t, _i: prune(t, density, "magnitude"))


def _seeds(seed: int | None, n: int) -> list[int]:
    first = resolve_seed(torch.default_generator if seed is None else seed)
    return [splitmix64((first + i) & ((1 << 64) - 1)) for i in range(n)]


def _random_stack(tensors, density: float, seed: int | None) -> tuple[torch.Tensor, bool]:
    seeds = _seeds(seed, len(tensors))

    def row(r: torch.Tensor, i: int) -> None:
        if density <= 0:
            r.mul_(0)
        else:
            prune_(r, 1.0 - density, density, seed=seeds[i])

    return _pruned_stack(tensors, density, row,
                         lambda t, i: prune(t, density, "random", rescale=True, seed=seeds[i]))


def magnitude_prune(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """PEFT's magnitude_prune: the weighted sum of magnitude-pruned task tensors."""
    return _weighted_sum(*_with_weights(_magnitude_stack(task_tensors, density), weights))


def ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
         majority_sign_method: str = "total") -> torch.Tensor:
    """PEFT's ties: magnitude pruning, sign election on the unweighted tensors, disjoint mean."""
    stacked, grad = _magnitude_stack(task_tensors, density)
    return _ties_merge(stacked, weights, majority_sign_method, grad or weights.requires_grad)


def dare_linear(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float, *,
                seed: int | None = None) -> torch.Tensor:
    """PEFT's dare_linear: the weighted sum of DARE-pruned (1/density rescaled) task tensors."""
    tensors = list(task_tensors)
    plain = (0 < density < 1 and weights.dim() == 1 and len({t.dtype for t in tensors}) == 1
             and not _needs_grad([*tensors, weights]))
    if not plain:
        return _weighted_sum(*_with_weights(_random_stack(tensors, density, seed), weights))
    # Random, so equal to PEFT in law only: accumulate w_i * prune(t_i) through one row buffer
    # instead of stacking (one pass fewer and 2 tensors of memory instead of N + 1).
    seeds = _seeds(seed, len(tensors))
    first = tensors[0]
    out = torch.zeros(first.shape, dtype=torch.result_type(first, weights), device=first.device)
    row = torch.empty_like(first, memory_format=torch.contiguous_format)
    for t, w, s in zip(tensors, weights.tolist(), seeds):
        prune_(row.copy_(t), 1.0 - density, density, seed=s)
        out.add_(row, alpha=w)
    return out


def dare_ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
              majority_sign_method: str = "total", *, seed: int | None = None) -> torch.Tensor:
    """PEFT's dare_ties: DARE pruning, sign election on the unweighted tensors, disjoint mean."""
    stacked, grad = _random_stack(task_tensors, density, seed)
    return _ties_merge(stacked, weights, majority_sign_method, grad or weights.requires_grad)


def _with_weights(stacked_grad: tuple[torch.Tensor, bool], weights: torch.Tensor):
    stacked, grad = stacked_grad
    return stacked, weights, grad or (torch.is_grad_enabled() and weights.requires_grad)


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
