"""Fake (meta) implementations of every darex op, for torch.compile and opcheck.

One place for all of them, as bitsandbytes does: shapes, dtypes and devices only.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("darex::prune_")
def _prune_fake(delta, p, seed, offset, q_rows, q):
    return None


@torch.library.register_fake("darex::dare")
def _dare_fake(finetuned, base, p, seed, offset, q_rows, q):
    return torch.empty(finetuned.shape, dtype=finetuned.dtype, device=finetuned.device)


@torch.library.register_fake("darex::dare_out")
def _dare_out_fake(finetuned, base, p, seed, offset, q_rows, q, out):
    return None


@torch.library.register_fake("darex::keep_mask")
def _keep_mask_fake(like, p, seed, offset):
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


@torch.library.register_fake("darex::kept_abs_sum")
def _kept_abs_sum_fake(delta, p, seed, offset):
    return torch.empty((2,), dtype=torch.float64, device=delta.device)


@torch.library.register_fake("darex::topk_mask")
def _topk_mask_fake(scores, k, largest, per_row):
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)


@torch.library.register_fake("darex::topk_threshold")
def _topk_threshold_fake(scores, k, largest):
    return torch.empty((3,), dtype=torch.float64, device=scores.device)


@torch.library.register_fake("darex::magnitude_prune_")
def _magnitude_prune_fake(delta, keep, per_row, q):
    return None


@torch.library.register_fake("darex::wanda_prune_")
def _wanda_prune_fake(delta, act_norm, keep, q):
    return None


@torch.library.register_fake("darex::structural_prune_")
def _structural_prune_fake(delta, p, dim, seed, offset, q):
    return None


@torch.library.register_fake("darex::row_moments")
def _row_moments_fake(delta, x, bias):
    rows = delta.shape[0]
    return (torch.empty((rows,), dtype=torch.float64, device=delta.device),
            torch.empty((rows,), dtype=torch.float64, device=delta.device))
