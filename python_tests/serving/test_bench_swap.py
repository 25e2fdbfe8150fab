"""benchmarks/bench_swap.py runs (tiny) and reports every row, the baselines and the targets."""

from __future__ import annotations

import math

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_swap")


@pytest.mark.parametrize("params", [2e5, 1e9, 7e9])
def test_shapes_add_up(bench, params):
    shapes = bench.llama_shapes(params)
    n = sum(math.prod(s) for _, s in shapes)
    assert abs(n - params) / params < 0.2
    assert len({name for name, _ in shapes}) == len(shapes)


def test_tiny_run(bench, capsys, tmp_path):
    assert bench.main(["--params", "2e5", "--repeat", "1", "--formats", "seeded,csr", "--ps", "0.99,0.9",
                       "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("seeded ", "csr "))]
    assert len(rows) == 4
    assert "cpu: " in out and "date: " in out and "load checkpoint" in out and "dense delta add" in out
    assert out.count("targets, ") == 2
    assert not list(tmp_path.iterdir())  # the checkpoint of the load baseline is removed


def test_bad_options(bench):
    with pytest.raises(SystemExit):
        bench.main(["--formats", "dense"])
    with pytest.raises(SystemExit):
        bench.main(["--params", "10"])
