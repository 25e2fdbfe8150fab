"""One tensor's delta pruned by a named method: the single per-tensor entry (like mergekit's
`sparsify`) that the model pipeline, the merge methods, the integrations and the demo call, so a
method means the same everywhere.

Methods (`PRUNE_METHODS`):
- ``dare``: keep each entry with probability 1 - p, kept scaled by 1/(1-p) (seeded mask).
- ``darex-q``: the same mask, kept scaled by 1/q: q a number, a per-row tensor, or computed by
  analytic q from the mean input `x_mean` (2-D tensors only; see `tensor_q`).
- ``magnitude``: exact top-k by |x| over the tensor; kept scaled by 1/q when q is given.
- ``wanda``: per output row by |x| * act_norm (2-D with `act_norm`), else magnitude.
- ``dppa``: DPPA's dynamic pruning of one matrix at its own drop rate (`drop_rate`), with the
  authors' cut (``algorithms.dppa.dppa_keep_mask``: every |x| at or below the int(n * rate)-th
  smallest is dropped).
"""

from __future__ import annotations

import torch

from ..ops import magnitude_prune_, prune_, wanda_prune_

__all__ = ["PRUNE_METHODS", "RANDOM_METHODS", "prune_tensor", "tensor_q"]

PRUNE_METHODS = ("dare", "darex-q", "magnitude", "wanda", "dppa")
RANDOM_METHODS = ("dare", "darex-q")


def tensor_q(delta: torch.Tensor, p: float, q=None, *, x_mean: torch.Tensor | None = None):
    """The rescale q DARE / DAREx-q use for this tensor: analytic per-row q from `x_mean` (the
    signed mean input per column) when it is given and `delta` is a matrix, else `q` (None
    meaning 1 - p)."""
    if x_mean is not None and delta.dim() == 2:
        from .analytic_q import analytic_q

        return analytic_q(delta, x_mean.to(delta.device), p)
    return q


def prune_tensor(delta: torch.Tensor, method: str, p: float, *, q=None, seed=0, rescale: str = "q",
                 x_mean: torch.Tensor | None = None, act_norm: torch.Tensor | None = None,
                 drop_rate: float | None = None, mask: str = "skip") -> torch.Tensor:
    """Prune `delta` in place by `method` at drop rate p; returns it.

    Args:
        delta: the delta tensor (fine-tuned - base), any float dtype, CPU or CUDA. Mutated.
        method: one of PRUNE_METHODS.
        p: drop rate.
        q: rescale (kept -> x / q): None (DARE: 1 - p; importance methods: no rescale), a
            number, or for the random methods a per-row tensor.
        seed: the tensor's seed (random methods), e.g. ``tensor_seed(seed, name)``.
        rescale: random methods only: "q" (default), "none" or "l1" (as ``prune_``).
        x_mean: darex-q only: the mean input per column; gives analytic per-row q.
        act_norm: wanda only: the input-channel norms; without it (or for a non-matrix) wanda
            falls back to magnitude.
        drop_rate: dppa only: this tensor's drop rate from ``dppa_densities`` (default p).
        mask: random methods only: the mask spec, "skip" (version 2, default) or "philox"
            (version 1); see docs/mask_spec.md.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"method must be one of {PRUNE_METHODS}, got {method!r}")
    if method in RANDOM_METHODS:
        if method == "dare" and (q is not None or x_mean is not None):
            raise ValueError("method 'dare' rescales by 1/(1-p); use method 'darex-q' to set q")
        return prune_(delta, p, tensor_q(delta, p, q, x_mean=x_mean), seed=seed, rescale=rescale, mask=mask)
    if rescale != "q":
        raise ValueError(f"rescale={rescale!r} applies to the random methods {RANDOM_METHODS}")
    if method == "wanda" and act_norm is not None and delta.dim() == 2:
        return wanda_prune_(delta, act_norm.to(delta.device), p, q=q)
    if method == "dppa":
        from .dppa import dppa_prune_

        return dppa_prune_(delta, p if drop_rate is None else drop_rate, q=q)
    # magnitude; wanda without statistics (biases, norms)
    return magnitude_prune_(delta, p, q=q)
