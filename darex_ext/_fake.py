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


# ---- storage ops (darex_ext.storage): packed sizes depend on the data, so the fakes allocate
# dynamic sizes; the scatter ops mutate `out` and return nothing.
def _row_view(t):
    if t.dim() <= 1:
        return 1, t.numel()
    cols = 1
    for s in t.shape[1:]:
        cols *= s
    return t.shape[0], cols


def _column_dtype(cols):
    for dtype, limit in ((torch.uint8, 1 << 8), (torch.uint16, 1 << 16), (torch.uint32, 1 << 32)):
        if cols <= limit:
            return dtype
    return torch.int64


@torch.library.register_fake("darex::seeded_pack")
def _seeded_pack_fake(delta, p, seed, offset, q_rows, q):
    k = torch.library.get_ctx().new_dynamic_size()
    return delta.new_empty((k,))


@torch.library.register_fake("darex::keep_count")
def _keep_count_fake(like, p, seed, offset):
    return torch.empty((), dtype=torch.int64, device=like.device)


@torch.library.register_fake("darex::seeded_scatter_")
def _seeded_scatter_fake(out, values, p, seed, offset, alpha, accumulate):
    return None


@torch.library.register_fake("darex::bitmask_pack")
def _bitmask_pack_fake(dense):
    rows, cols = _row_view(dense)
    k = torch.library.get_ctx().new_dynamic_size()
    return (dense.new_empty((k,)), dense.new_empty((rows, (cols + 7) // 8), dtype=torch.uint8),
            dense.new_empty((rows,), dtype=torch.int64))


@torch.library.register_fake("darex::bitmask_scatter_")
def _bitmask_scatter_fake(out, values, bitmask, row_offsets, alpha, accumulate):
    return None


@torch.library.register_fake("darex::csr_pack")
def _csr_pack_fake(dense):
    rows, cols = _row_view(dense)
    k = torch.library.get_ctx().new_dynamic_size()
    return (dense.new_empty((rows + 1,), dtype=torch.int64),
            dense.new_empty((k,), dtype=_column_dtype(cols)), dense.new_empty((k,)))


@torch.library.register_fake("darex::csr_scatter_")
def _csr_scatter_fake(out, crow, col, values, alpha, accumulate):
    return None
