"""The `darex` console script: bench smoke run, version, exit codes."""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext.apps import cli


def test_bench_quick_runs_and_prints_a_table(capsys):
    assert cli.main(["bench", "--quick", "--device", "cpu", "--dtypes", "float32", "--p", "0.9",
                     "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "darex.prune_" in out and "mul_(2.0) (ceiling)" in out and "x vs torch" in out


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert "darex_ext" in capsys.readouterr().out


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--dtypes"])
    assert exc.value.code == 2


def test_bad_dtype_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "--device", "cpu", "--dtypes", "int7"])
    assert exc.value.code == 2
    assert "int7" in capsys.readouterr().err


@pytest.mark.skipif(darex_ext.cuda_built() and torch.cuda.is_available(), reason="CUDA is usable here")
def test_failures_exit_1_with_one_line(capsys):
    assert cli.main(["bench", "--quick", "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cuda" in err.lower() and len(err.splitlines()) == 1


def test_topk_benchmark_script_quick_run():
    # The script checks darex against torch.topk before timing and exits 1 on a mismatch.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_topk.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--no-memory", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "darex.magnitude_prune_" in done.stdout and "identical mask" in done.stdout
