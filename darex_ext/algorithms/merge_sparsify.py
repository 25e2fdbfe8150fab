"""Task vectors sparsified the way mergekit does it (arcee-ai/mergekit, `mergekit/sparsify.py`),
with darex kernels: the one per-delta step of every merge method in `algorithms.merge` and of the
mergekit drop-in `integrations.mergekit.sparsify`.

- ``magnitude``: keeps exactly ``max(1, int(density * n))`` entries of largest |x| (mergekit's
  count; ``algorithms.prune_tensor`` rounds instead, for `darex prune`). Among equal |x| at the cut
  the lower flat index is kept; mergekit's unstable argsort keeps an unspecified one.
- ``random``: keeps each entry with probability `density` by darex's seeded mask
  (docs/mask_spec.md): mergekit's Bernoulli mask in law, reproducible from `seed`.
- ``magnitude_outliers`` (breadcrumbs) and ``della_magprune`` (DELLA): `algorithms.sparsify`.

`density >= 1` returns the tensor itself and `density <= 0` zeros, as mergekit. `rescale`
"l1" | "l2" | "linf" scales the kept entries so the tensor keeps that norm, skipped when either
norm is below 1e-7 (mergekit's guard); "q" (random only) scales them by 1/q, q = density unless
given (DARE's rescale; DAREx-q with a q).

Autograd: when `tensor` requires grad under grad mode, the mask is built without grad and applied
by multiplication, and the norm ratio stays in the graph, as in mergekit's code, so gradients are
mergekit's. Otherwise one copy is pruned in place by the kernels (no mask tensor, no multiply).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..ops import _checks, dare, prune_, topk_mask
from ..seeds import as_int64, resolve_seed

__all__ = ["SPARSIFY_METHODS", "RESCALE_NORMS", "keep_count", "rescale_name", "rescale_to_norm", "magnitude",
           "random", "sparsify"]

SPARSIFY_METHODS = ("magnitude", "random", "magnitude_outliers", "della_magprune")
RESCALE_NORMS = ("l1", "l2", "linf")
_NORM_EPS = 1e-7  # mergekit's rescaled_masked_tensor: no rescale when a norm is below this
_MIN_Q = 1e-30  # smallest kernel q used for the l1 ratio (1/q stays finite in float32)


def keep_count(density: float, n: int) -> int:
    """mergekit's magnitude count: max(1, int(density * n)) for 0 < density < 1 and n > 0."""
    return max(1, int(density * n)) if n > 0 else 0


def rescale_name(rescale, *, allow_q: bool = False) -> str | None:
    """None, "l1", "l2", "linf" (or "q" where allowed) from a string, a mergekit RescaleNorm enum
    or a bool (mergekit's `rescale: true` means "l1"); "none" is None."""
    if isinstance(rescale, bool):
        return "l1" if rescale else None
    value = getattr(rescale, "value", rescale)
    if value is None or value == "none":
        return None
    allowed = RESCALE_NORMS + (("q",) if allow_q else ())
    if value not in allowed:
        raise ValueError(f"rescale must be None, 'none' or one of {allowed}, got {rescale!r}")
    return value


def _needs_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _check(tensor, density) -> float:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError(f"tensor must be a floating-point torch.Tensor, got {type(tensor).__name__}"
                        + (f" of {tensor.dtype}" if isinstance(tensor, torch.Tensor) else ""))
    if isinstance(density, torch.Tensor) and density.numel() == 1:
        density = density.item()
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a real number, got {type(density).__name__}")
    density = float(density)
    if math.isnan(density):
        raise ValueError("density must be a number, got nan")
    return density


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    # mergekit's expressions, in the tensor's dtype, so the ratio rounds as mergekit's does.
    if norm == "l1":
        return t.abs().sum()
    if norm == "l2":
        return t.norm()
    return t.abs().max()


def rescale_to_norm(tensor: torch.Tensor, masked: torch.Tensor, norm: str | None, *,
                    inplace: bool = False) -> torch.Tensor:
    """`masked` scaled by norm(tensor) / norm(masked), unless either is below 1e-7 (mergekit's
    `rescaled_masked_tensor`); in place on `masked` when `inplace`."""
    if norm is None or masked.numel() == 0:
        return masked
    before, after = _norm(tensor, norm), _norm(masked, norm)
    if before < _NORM_EPS or after < _NORM_EPS:
        return masked
    scale = before / after
    return masked.mul_(scale) if inplace else masked * scale


def _private_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone(memory_format=torch.contiguous_format)


def magnitude(tensor: torch.Tensor, density: float, rescale=None) -> torch.Tensor:
    """Keep the max(1, int(density * n)) largest |x| (mergekit's `magnitude`); see the module
    docstring for ties, `rescale` and autograd."""
    density = _check(tensor, density)
    norm = rescale_name(rescale)
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = keep_count(density, tensor.numel())
    if _needs_grad(tensor):
        masked = tensor * topk_mask(tensor.detach().abs(), k)
        return rescale_to_norm(tensor, masked, norm)
    out = _private_copy(tensor)
    # The raw op takes the count itself; the wrapper's drop-rate form would round it.
    torch.ops.darex.magnitude_prune_(out, k, False, None)
    return rescale_to_norm(tensor, out, norm, inplace=True)


def random(tensor: torch.Tensor, density: float, rescale=None, *, seed, q=None, mask: str = "skip") -> torch.Tensor:
    """Keep each entry with probability `density` (darex's seeded mask; mergekit's `bernoulli`
    in law). `rescale`: None, "l1" | "l2" | "linf" (mergekit's norms, with its 1e-7 guard) or "q"
    (kept / q, q = density unless given: DARE / DAREx-q). `seed`: int or torch.Generator.
    `mask`: the mask spec, "skip" (version 2, default) or "philox" (version 1)."""
    density = _check(tensor, density)
    mode = rescale_name(rescale, allow_q=True)
    if q is not None and mode != "q":
        raise ValueError(f"q applies to rescale='q' only, got rescale={rescale!r}")
    if density < 0:
        raise ValueError(f"density must be >= 0, got {density}")
    if density >= 1 and q is None:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    seed = resolve_seed(seed)
    spec = _checks.mask_spec(mask)
    p = max(0.0, 1.0 - density)
    scale_q = (density if q is None else q) if mode == "q" else 1.0
    if _needs_grad(tensor):
        # darex::dare is differentiable: d/d tensor = mask / q, the same mask as below.
        masked = dare(tensor, torch.zeros_like(tensor), p, scale_q, seed=seed, mask=mask)
        return masked if mode in (None, "q") else rescale_to_norm(tensor, masked, mode)
    out = _private_copy(tensor)
    if mode == "l1" and out.numel():
        # Both sums in one fused pass; mergekit's guard decides whether to rescale at all.
        kept, total = torch.ops.darex.kept_abs_sum(out, p, as_int64(seed), 0, spec).tolist()
        if kept < _NORM_EPS or total < _NORM_EPS:
            return prune_(out, p, 1.0, seed=seed, mask=mask)
        if math.isfinite(total) and kept / total >= _MIN_Q:
            return prune_(out, p, kept / total, seed=seed, mask=mask)
        # inf or a ratio too small for a kernel q: mergekit's expression (inf / inf is NaN there too)
        return rescale_to_norm(tensor, prune_(out, p, 1.0, seed=seed, mask=mask), mode, inplace=True)
    prune_(out, p, scale_q, seed=seed, mask=mask)
    return out if mode in (None, "q") else rescale_to_norm(tensor, out, mode, inplace=True)


def sparsify(tensor: torch.Tensor, density: float, method, *, gamma: float = 0.0, epsilon: float = 0.0,
             rescale=None, seed=None, q=None) -> torch.Tensor:
    """mergekit's `sparsify` by method name (or SparsificationMethod): magnitude, random,
    magnitude_outliers (breadcrumbs, `gamma`), della_magprune (DELLA, `epsilon`). `seed` (int or
    torch.Generator) drives the random methods; None draws it from torch's default generator."""
    name = getattr(method, "value", method)
    if name not in SPARSIFY_METHODS:
        raise ValueError(f"method must be one of {SPARSIFY_METHODS}, got {method!r}")
    if name == "magnitude":
        return magnitude(tensor, density, rescale)
    if name == "random":
        return random(tensor, density, rescale, seed=torch.default_generator if seed is None else seed, q=q)
    from . import sparsify as natives  # breadcrumbs / DELLA kernels, loaded on first use

    if name == "magnitude_outliers":
        return natives.magnitude_outliers(tensor, density, gamma, rescale_norm=rescale_name(rescale))
    seed = resolve_seed(torch.default_generator if seed is None else seed)
    return natives.della_magprune(tensor, density, epsilon, rescale_norm=rescale_name(rescale), seed=seed)
