"""mergekit's other sparsifiers, native: breadcrumbs' `magnitude_outliers`, DELLA's
`della_magprune`, and SCE's `sce_weight` / `sce_mask` (arcee-ai/mergekit 0.1.5,
`mergekit/sparsify.py` and `mergekit/merge_methods/sce.py`).

Deterministic ones (`magnitude_outliers`, `sce_weight`, `sce_mask`) give mergekit's output: the
same kept count, the same values, the same norm rescale (computed with mergekit's expressions, so
it rounds the same way). The one freedom mergekit leaves open is which element wins among equal
scores at the cut (its sorts are unstable, and CPU and CUDA differ): here the lower flat index
wins, which is mergekit's answer whenever torch's sort happens to be stable. Selection runs in
darex's radix-select kernels (`topk_mask`), never a full sort. NaN scores raise ValueError (they
have no rank).

`della_magprune` draws mergekit's law (per-element keep probability linear in the magnitude rank
within a row) from darex's seeded mask (`ops.magnitude_rank_mask`, docs/mask_spec.md "Rank
mask"), so a run replays from its seed. Gradients follow mergekit's code: the mask is built
without grad and applied by multiplication, norm ratios stay in the graph.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..ops import magnitude_rank_mask, topk_mask
from ..seeds import resolve_seed

__all__ = ["RESCALE_NORMS", "magnitude_outliers", "della_magprune", "della_keep_probability", "sce_weight",
           "sce_mask", "rescaled_masked"]

RESCALE_NORMS = ("l1", "l2", "linf")
_NORM_EPS = 1e-7  # mergekit's rescaled_masked_tensor: no rescale when either norm is below this
_VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---- arguments
def _tensor(t, name: str = "tensor") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _VALUE_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    return t


def _number(x, name: str) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"{name} must be a number, got nan")
    return x


def _norm_name(norm) -> str | None:
    """None or "l1" | "l2" | "linf", from a string or mergekit's RescaleNorm enum."""
    value = getattr(norm, "value", norm)
    if value is None:
        return None
    if value not in RESCALE_NORMS:
        raise ValueError(f"rescale_norm must be None or one of {RESCALE_NORMS}, got {norm!r}")
    return value


def _needs_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


# ---- the norm rescale every mergekit sparsifier ends with
def _norm(t: torch.Tensor, norm: str, fused: bool) -> torch.Tensor:
    if norm == "l1":
        # mergekit's abs().sum() materialises |t|; vector_norm does not, but sums in another order.
        return torch.linalg.vector_norm(t, 1) if fused else t.abs().sum()
    if norm == "l2":
        return t.norm()
    return t.abs().max()


def rescaled_masked(tensor: torch.Tensor, masked: torch.Tensor, rescale_norm, *, inplace: bool = False,
                    fused_l1: bool = False) -> torch.Tensor:
    """`masked` scaled so it has `tensor`'s l1 / l2 / linf norm, unless either norm is below 1e-7
    (mergekit's `rescaled_masked_tensor`, same expressions in the same dtype, so the same bits;
    `fused_l1` sums |x| without a temporary, equal to mergekit's to rounding). In place on
    `masked` when `inplace`."""
    norm = _norm_name(rescale_norm)
    if norm is None or masked.numel() == 0:
        return masked
    before, after = _norm(tensor, norm, fused_l1), _norm(masked, norm, fused_l1)
    if before < _NORM_EPS or after < _NORM_EPS:
        return masked
    scale = before / after
    return masked.mul_(scale) if inplace else masked * scale


def _apply_mask(tensor: torch.Tensor, keep: torch.Tensor, norm: str | None, *, scratch: torch.Tensor | None = None,
                fused_l1: bool = False) -> torch.Tensor:
    """tensor * keep, then the norm rescale. With grad: mergekit's multiply (d/d tensor = keep and
    the norm ratio's own terms). Without: the mask is copied into `scratch` (a tensor of ours
    shaped and typed like `tensor`, reused so no second fresh 64 MB buffer pays its page faults)
    or a new tensor as 0 / 1, multiplied by `tensor` in place (torch's bool -> float copy is
    vectorized, its float * bool multiply is not), then rescaled in place. x * 1 and x * 0 are
    the values mergekit's `tensor * mask` gives."""
    if _needs_grad(tensor):
        return rescaled_masked(tensor, tensor * keep, norm, fused_l1=fused_l1)
    usable = scratch is not None and scratch.dtype == tensor.dtype and scratch.shape == tensor.shape
    out = scratch if usable else torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    out.copy_(keep).mul_(tensor)
    return rescaled_masked(tensor, out, norm, inplace=True, fused_l1=fused_l1)


# ---- breadcrumbs
def magnitude_outliers(tensor: torch.Tensor, density: float, gamma: float = 0.01, rescale_norm=None) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023) as mergekit's `magnitude_outliers`: drop the
    int(gamma * n) largest |x| and the smallest, keeping int(density * n) entries.

    In mergekit's ascending order of |x| the kept entries are positions [n_bot, n_bot + int(density
    * n)) with n_bot = max(0, n - int(density * n) - int(gamma * n)) (so outlier removal shrinks
    when density + gamma > 1). Scores are |x| in float32 on the CPU for a float64 tensor, as
    mergekit casts them; equal scores order by flat index. Positional order (tensor, density,
    gamma, rescale_norm); mergekit's keyword call works unchanged.

    Args:
        tensor: float32/float64/float16/bfloat16 tensor, any shape.
        density: kept fraction; >= 1 returns `tensor` itself, <= 0 keeps nothing.
        gamma: fraction of largest |x| removed, >= 0.
        rescale_norm: None, "l1", "l2", "linf" (or mergekit's RescaleNorm).
    """
    _tensor(tensor)
    density = _number(density, "density")
    gamma = _number(gamma, "gamma")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    norm = _norm_name(rescale_norm)
    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n) if density > 0 else 0
    n_top = int(gamma * n) if math.isfinite(gamma) else n
    n_bot = max(0, n - target - n_top)
    if target == 0:
        return _apply_mask(tensor, torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device), norm)
    scores = tensor.detach().abs()
    if scores.device.type == "cpu" and scores.dtype == torch.float64:
        scores = scores.float()  # mergekit ranks float32 magnitudes here: its ties are ours
    # Ascending positions [n_bot, n_bot + target): the smallest n_bot + target minus the smallest
    # n_bot, both with the lower index first among equal scores (a stable ascending sort's order).
    keep = topk_mask(scores, n_bot + target, largest=False)
    if n_bot:
        keep &= topk_mask(scores, n_bot, largest=False).logical_not_()
    return _apply_mask(tensor, keep, norm, scratch=scores)


# ---- DELLA
def _rank_rows(tensor: torch.Tensor):
    """mergekit's DELLA layout: ranks along dim 1 of the tensor (a 1-D tensor is one row; 0-d one
    element). Returns the [rows, cols] tensor to rank and the map of a [rows, cols] result back."""
    if tensor.dim() <= 2:
        shape = tensor.shape
        return tensor.reshape(1, -1) if tensor.dim() < 2 else tensor, lambda m: m.reshape(shape)
    moved = tensor.movedim(1, -1)
    moved_shape = moved.shape
    return moved.reshape(-1, moved_shape[-1]), lambda m: m.reshape(moved_shape).movedim(-1, 1)


def _della_bounds(density: float, epsilon: float) -> tuple[float, float]:
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(f"epsilon must be chosen such that density +/- epsilon is in (0, 1), got density "
                         f"{density} and epsilon {epsilon}")
    return density - epsilon, density + epsilon


def della_keep_probability(tensor: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """float64 keep probability of every element under `della_magprune`: density - epsilon for the
    smallest |x| of its row up to density + epsilon for the largest, linear in the rank (mergekit's
    `(density - epsilon) + rank_norm * 2 * epsilon`; a row of one element: density)."""
    _tensor(tensor)
    lo, hi = _della_bounds(_number(density, "density"), _number(epsilon, "epsilon"))
    rows, restore = _rank_rows(tensor.detach())
    if rows.numel() == 0:
        return torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
    order = torch.sort(rows.abs(), dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    cols = rows.shape[1]
    fraction = ranks.double() / float(cols - 1) if cols > 1 else torch.full(ranks.shape, 0.5, dtype=torch.float64,
                                                                             device=rows.device)
    return restore((fraction * (hi - lo)) + lo)  # the mask kernel's float64 steps, in its order


def della_magprune(tensor: torch.Tensor, density: float, epsilon: float, rescale_norm=None, *, seed=None,
                   inverse_p: bool = False) -> torch.Tensor:
    """DELLA's MAGPRUNE (Deep et al. 2024) as mergekit's `della_magprune`: keep each entry with
    probability from density - epsilon (smallest |x| of its row) to density + epsilon (largest),
    linear in its magnitude rank; then rescale to `rescale_norm`.

    The keep test is darex's seeded rank mask (`ops.magnitude_rank_mask`): mergekit's law, the
    same mask for the same `seed` on any device and thread count. Rows as mergekit ranks them:
    along dim 1 (a 1-D tensor is one row); the mask words follow the row-major order of
    ``tensor.movedim(1, -1)``. Deliberate differences from mergekit: a row of one element is kept
    with probability `density` (mergekit fails on it), a 0-d tensor is a row of one element, and
    float64 stays float64 on the CPU (mergekit computes it in float32).

    Args:
        tensor: float32/float64/float16/bfloat16 tensor.
        density: mean kept fraction; >= 1 returns `tensor` itself, <= 0 zeros.
        epsilon: half-width of the probability range; density +/- epsilon must be in (0, 1).
        rescale_norm: None, "l1", "l2", "linf" (mergekit's RescaleNorm too); float16 is rescaled
            in float32 as mergekit does; the l1 sums run without a |x| temporary (equal to
            mergekit's to rounding).
        seed: int in [0, 2**64) or torch.Generator; None draws one from torch's default generator
            (so torch.manual_seed, e.g. mergekit's --random-seed, makes runs reproducible).
        inverse_p: scale each kept entry by 1 / its keep probability, as the DELLA authors' code
            does (declare-lab/della, `rank_magnitude(rescale=True)`: unbiased, E[out] = tensor);
            exclusive with `rescale_norm`. A slower path (it sorts for the probabilities).
    """
    _tensor(tensor)
    density = _number(density, "density")
    epsilon = _number(epsilon, "epsilon")
    norm = _norm_name(rescale_norm)
    if not isinstance(inverse_p, bool):
        raise TypeError(f"inverse_p must be a bool, got {type(inverse_p).__name__}")
    if inverse_p and norm is not None:
        raise ValueError("inverse_p and rescale_norm are alternatives; pass one of them")
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    lo, hi = _della_bounds(density, epsilon)
    seed = resolve_seed(torch.default_generator if seed is None else seed)
    rows, restore = _rank_rows(tensor.detach())
    keep = restore(magnitude_rank_mask(rows, lo, hi, seed=seed))
    if inverse_p:
        acc = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        scale = torch.where(keep, della_keep_probability(tensor, density, epsilon).reciprocal(), 0.0).to(acc)
        return (tensor.to(acc) * scale).to(tensor.dtype)
    if tensor.dtype == torch.float16 and norm is not None:  # mergekit's work dtype for half on the CPU
        return _apply_mask(tensor.float(), keep, norm, fused_l1=True).to(torch.float16)
    return _apply_mask(tensor, keep, norm, fused_l1=True)


# ---- SCE
def sce_weight(tvs: torch.Tensor) -> torch.Tensor:
    """SCE's fine-tune weights (Wan et al. 2024, mergekit's `sce_weight`): each task vector's mean
    square, normalised to sum 1; uniform when the sum is below 1e-6.

    Args:
        tvs: [n, ...] stacked task vectors, n >= 1.
    """
    _tensor(tvs, "tvs")
    if tvs.dim() == 0 or tvs.shape[0] == 0:
        raise ValueError(f"tvs must be [n, ...] with n >= 1 task vectors, got shape {tuple(tvs.shape)}")
    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = weights.sum().item()  # a Python number, as in mergekit: no gradient through the sum
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / total


def sce_mask(tvs: torch.Tensor, density: float, mask_dtype: torch.dtype | None = None) -> torch.Tensor:
    """SCE's selection (mergekit's `sce_mask`): the int(nonzero * density) elements of largest
    variance across the task vectors, as a mask shaped like one task vector.

    Args:
        tvs: [n, ...] stacked task vectors.
        density: kept fraction of the elements whose variance is non-zero; <= 0 keeps none, >= 1
            all (even zero-variance ones).
        mask_dtype: dtype of the mask (None: tvs' dtype), e.g. torch.int8.
    """
    _tensor(tvs, "tvs")
    density = _number(density, "density")
    if mask_dtype is not None and not isinstance(mask_dtype, torch.dtype):
        raise TypeError(f"mask_dtype must be a torch.dtype or None, got {type(mask_dtype).__name__}")
    if tvs.dim() == 0 or tvs.shape[0] == 0:
        raise ValueError(f"tvs must be [n, ...] with n >= 1 task vectors, got shape {tuple(tvs.shape)}")
    dtype = tvs.dtype if mask_dtype is None else mask_dtype
    if density <= 0:
        return torch.zeros(tvs.shape[1:], dtype=dtype, device=tvs.device)
    if density >= 1:
        return torch.ones(tvs.shape[1:], dtype=dtype, device=tvs.device)
    var = torch.var(tvs.detach(), dim=0, unbiased=False)
    # mergekit multiplies the count tensor by density: a float32 product, truncated. The same op
    # here, so the count agrees past 2**24 elements too.
    k = int(torch.count_nonzero(var) * density)
    if k == 0:
        return torch.zeros(var.shape, dtype=dtype, device=var.device)
    return topk_mask(var, k).to(dtype)  # var >= 0: mergekit's var.abs() changes nothing
