"""benchmarks/bench_mask_v2.py runs (tiny), reports every row, and its paired ratios pair the calls."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_mask_v2")


def test_paired_times_both_calls_each_round_and_takes_the_median(bench, monkeypatch):
    # a fake clock: the ceiling takes 2 units, the op 1, 4 and 2 units in rounds 1-3
    calls = []
    times = iter([2.0, 1.0, 2.0, 4.0, 2.0, 2.0])
    monkeypatch.setattr(bench, "best_time", lambda call, reset, repeat, device: (calls.append(call), next(times))[1])
    ceiling, op = object(), object()
    best_c, best_o, ratio = bench.paired(ceiling, op, None, 1, 3, torch.device("cpu"))
    assert calls == [ceiling, op] * 3
    assert (best_c, best_o) == (2.0, 1.0)
    assert ratio == pytest.approx(1.0)  # median of 2.0, 0.5, 1.0


def test_tiny_run(bench, capsys):
    assert bench.main(["--numel", "4096", "--repeat", "1", "--rounds", "1", "--p", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "cpu: " in out and "date: " in out and "median of 1 interleaved rounds" in out
    assert re.search(r"walk speed-up on [0-9]+ threads over 1: [0-9.]+x", out)
    for dtype in ("float32", "bfloat16"):
        for mask in ("skip", "philox"):
            prune = [line for line in out.splitlines() if line.startswith(f"| {dtype} | 0.99 | prune_ mask={mask} |")]
            assert len(prune) == 1
            assert re.search(r"[0-9.]+ of write ceiling; [0-9.]+ of walk \+ mul_", prune[0])
            for op in ("dare(out=base)", "keep_mask", "seeded add_to_", "seeded to_dense"):
                assert f"| {dtype} | 0.99 | {op} mask={mask} |" in out
        assert f"| {dtype} | 0.99 | reference: the walk alone (keep_count mask=skip) |" in out
