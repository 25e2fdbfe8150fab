"""Exact top-k at fixed shapes, for comparing two builds of darex_ext (before / after a change).

    PYTHONPATH=<tree> python benchmarks/topk_shapes.py LABEL [THREADS]

Prints one line: the best of 6 calls, in ms, of whole-tensor magnitude_prune_ and topk_mask and
per-row topk_mask on 2^24 random elements (fp32, bf16, fp16). Run it alternately on the trees
to compare, so a drift of a shared machine hits both.
"""

from __future__ import annotations

import sys
import time

import torch

import darex_ext


def best_ms(fn, make=None, repeat: int = 6) -> float:
    best = float("inf")
    for _ in range(repeat):
        arg = make() if make is not None else None
        t = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "darex"
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    torch.manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        x0 = torch.randn(1 << 24).to(dtype)
        for p in (0.99, 0.9):
            out.append(f"magnitude {name} p={p}: {best_ms(lambda x: darex_ext.magnitude_prune_(x, p), x0.clone):.1f}")
        out.append(f"mask {name} k=2^18: {best_ms(lambda _: darex_ext.topk_mask(x0, 1 << 18)):.1f}")
        for shape, k in (((4096, 4096), 40), ((4096, 4096), 2048), ((65536, 256), 3)):
            m = x0.reshape(shape)
            out.append(f"row mask {name} {shape[0]}x{shape[1]} k={k}: "
                       f"{best_ms(lambda _: darex_ext.topk_mask(m, k, dim=1)):.1f}")
    print(label, torch.get_num_threads(), "; ".join(out))


if __name__ == "__main__":
    main()
