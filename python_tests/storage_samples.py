"""A small valid delta set with every format, dtype class and shape kind: the starting point
of the hostile-file tests and of the atheris fuzz target (fuzz_load.py)."""

from __future__ import annotations

import torch

import darex_ext
from darex_ext.storage import SparseDelta, compress, compress_dare


def sample_deltas(dtypes=(torch.float32, torch.bfloat16)) -> dict[str, SparseDelta]:
    torch.manual_seed(0)
    deltas = {}
    for dtype in dtypes:
        x = torch.randn(6, 21).to(dtype)
        tag = str(dtype).replace("torch.", "")
        deltas[f"{tag}.seeded"] = compress_dare(x, 0.7, 0.5, seed=3)
        deltas[f"{tag}.bitmask"] = compress_dare(x, 0.7, seed=3, format="bitmask")
        deltas[f"{tag}.csr"] = compress_dare(x, 0.7, seed=3, format="csr")
    deltas["vec.bitmask"] = compress(darex_ext.prune_(torch.randn(13), 0.5, seed=1), "bitmask")
    deltas["cube.csr"] = compress(darex_ext.prune_(torch.randn(2, 3, 300), 0.9, seed=1), "csr")
    return deltas
