"""benchmarks/bench_merge.py --quick: the darex-vs-stock table runs end to end (its own
correctness check against mergekit / PEFT included: it exits 1 on a mismatch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_merge.py"


def test_bench_merge_quick_prints_every_row():
    pytest.importorskip("mergekit")
    pytest.importorskip("peft")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--markdown"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 8  # header, rule, 4 mergekit sparsifiers + 4 PEFT merges
    for name in ("magnitude_outliers", "della_magprune", "dare_ties", "magnitude_prune"):
        assert any(f"| {name} |" in line for line in table), name
    assert "identical to the stock output" in done.stderr  # the deterministic rows were checked
    assert all(cell.strip() != "-" for line in table[2:] for cell in line.split("|")[-3:-1])  # peaks measured


def test_bench_merge_rejects_a_bad_dtype():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-memory", "--dtypes", "int7"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "--dtypes" in done.stderr
