"""Plain-PyTorch twins of every darex op: slow, obviously correct, device-agnostic.

One module per op, named like the op (darex_ext/ops/<op>.py <-> darex_ext/reference/<op>.py),
plus `mask` and `skip_mask` (the mask spec of docs/mask_spec.md, versions 1 and 2, literally: Philox4x32-10 in int64 arithmetic,
the float64 threshold, one rounding to the storage dtype). They import nothing of darex_ext's
kernels, so they stay independent of what they check; the tests compare kernels against them.
"""

from __future__ import annotations

from .bitmask import bitmask_pack, bitmask_scatter, bitmask_unpack
from .csr import csr_pack, csr_scatter
from .mask import (acc_dtype, canonical_nan, drop_threshold, inverse_q, keep_mask, mask_words,
                   philox4x32_10, to_storage)
from .prune import dare, kept_abs_sum, prune, prune_l1
from .rank_mask import magnitude_rank_mask, magnitude_ranks, rank_keep_probability
from .positions import positions_add, positions_put
from .row_moments import row_moments
from ._storage import row_view_2d
from .skip_mask import skip_keep_mask, skip_rare_positions, skip_table
from .seeded import keep_count, seeded_pack, seeded_scatter
from .structural import structural_prune
from .topk import magnitude_prune, topk_mask, wanda_prune

__all__ = [
    "philox4x32_10", "mask_words", "drop_threshold", "keep_mask", "acc_dtype", "inverse_q",
    "canonical_nan", "to_storage", "prune", "dare", "prune_l1", "kept_abs_sum", "topk_mask",
    "magnitude_prune", "wanda_prune", "structural_prune", "row_moments", "row_view_2d",
    "seeded_pack", "keep_count", "seeded_scatter", "bitmask_pack", "bitmask_unpack",
    "bitmask_scatter", "csr_pack", "csr_scatter", "magnitude_rank_mask", "magnitude_ranks",
    "rank_keep_probability", "skip_table", "skip_rare_positions", "skip_keep_mask", "positions_add",
    "positions_put",
]
