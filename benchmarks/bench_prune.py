#!/usr/bin/env python
"""Fused prune_/dare vs the PyTorch way vs a bandwidth ceiling; prints one table.

The implementation lives in darex_ext/apps/bench.py so that `darex bench` works from an installed
package; this script is the same benchmark with `--device cpu` as the default.

    python benchmarks/bench_prune.py                 # 2**26 elements, fp32 + bf16, p = 0.9, 0.99
    python benchmarks/bench_prune.py --quick         # smoke test
    python benchmarks/bench_prune.py --device cuda --markdown >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import sys

from darex_ext.apps.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_prune.py"))
