"""darex_ext: fast, exact delta-parameter pruning (DARE, DAREx, DPPA) for PyTorch.

Quick start::

    import darex_ext
    darex_ext.prune_(delta, p=0.99, q=0.05, seed=0)   # in place, CPU or CUDA
    merged = darex_ext.dare(finetuned, base, p=0.9)    # base + pruned delta, fused
"""

from __future__ import annotations

from . import _loader
from . import _fake  # noqa: F401  (registers fake kernels)
from . import _autograd  # noqa: F401  (registers autograd for dare)
from ._version import __version__
from .ops import dare, keep_mask, prune_
from .seeds import tensor_seed
from .topk import magnitude_prune_, topk_mask, topk_threshold, wanda_prune_

__all__ = [
    "__version__", "prune_", "dare", "keep_mask", "tensor_seed", "topk_mask", "topk_threshold",
    "magnitude_prune_", "wanda_prune_", "cuda_built", "build_info",
]


def cuda_built() -> bool:
    """True if the installed extension was compiled with CUDA kernels."""
    return bool(_loader._C.cuda_built())


def build_info() -> dict:
    """Versions and features the extension was built with (torch version, CUDA, CPU ISA)."""
    return dict(_loader._C.build_info())

# Sparse delta storage (issue 4): darex_ext.storage.{compress, compress_dare, SparseDelta, save, load}
from . import storage  # noqa: E402
__all__ += ["storage"]
