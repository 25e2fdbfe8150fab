"""The dispatcher ops of darex_ext, one module per schema file (docs/architecture.md).

Each `darex_ext/ops/<op>.py` holds the typed wrappers of the ops declared in
`csrc/ops/<op>.cpp`, their fake kernels and, where an op is differentiable, its autograd; the
kernels are `csrc/cpu/<op>_kernel.cpp` and `csrc/cuda/<op>_kernel.cu`, the plain-PyTorch twin is
`darex_ext/reference/<op>.py`. Importing this package loads the compiled extension and
registers every `torch.ops.darex.*` op with its fake.
"""

from __future__ import annotations

from ._library import build_info, cuda_built
from .bitmask import bitmask_pack, bitmask_scatter_
from .csr import csr_pack, csr_scatter_
from .positions import positions_add_, positions_put_
from .prune import dare, keep_mask, prune_
from .rank_mask import magnitude_rank_mask
from .row_moments import row_moments
from .seeded import keep_count, seeded_pack, seeded_scatter_
from .structural import structural_prune_
from .topk import count_from_rate, magnitude_prune_, topk_mask, topk_threshold, wanda_prune_

# The op modules, by the name of their schema file.
OP_MODULES = ("prune", "topk", "structural", "row_moments", "seeded", "bitmask", "csr", "rank_mask", "positions")

__all__ = [
    "prune_", "dare", "keep_mask", "topk_mask", "topk_threshold", "magnitude_prune_", "wanda_prune_",
    "count_from_rate", "structural_prune_", "row_moments", "seeded_pack", "keep_count",
    "seeded_scatter_", "bitmask_pack", "bitmask_scatter_", "csr_pack", "csr_scatter_", "magnitude_rank_mask",
    "positions_add_", "positions_put_", "cuda_built", "build_info", "OP_MODULES",
]
