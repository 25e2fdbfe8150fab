"""scripts/gpu_check.sh, the GPU job, runs here as `--cpu-dry-run` so it cannot rot before a GPU
is lent: same harness, same output files, the CUDA build/tests/benchmarks replaced by CPU stand-ins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ("env", "build", "tests", "sanitizer", "bench_prune", "bench_storage", "bench_topk", "bench_swap")
FILES = {"log", "build.log", "sanitizer.log", "bench_prune.md", "bench_storage.md", "bench_topk.md", "bench_swap.md",
         "summary.md"}


def _gpu_check(*args: str, out: Path | None = None, timeout: float = 240,
               **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, **env_vars)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check_out")
    # mergekit is not on the H200: a test module importing it must be left out, not fail the job.
    return _gpu_check("--cpu-dry-run", out=out, GPU_CHECK_PRETEND_MISSING="mergekit"), out


def test_dry_run_passes_every_step(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    for step in STEPS:
        assert re.search(rf"^\| {step} \| PASS \|", summary, re.M), summary
    assert done.stdout.rstrip().endswith(f"files in {out}")  # the summary is printed last


def test_dry_run_writes_what_the_device_tool_brings_back(dry_run):
    _, out = dry_run
    files = {p.name for p in out.iterdir()}
    assert files == FILES
    # The device tool returns at most 8 plain files named in letters, digits, '.', '_' and '-'.
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert all((out / f).is_file() for f in files)
    log = (out / "log").read_text()
    assert "gpu_check.sh dry run" in log and "| bench_topk | PASS |" in log  # the tee caught it all


def test_dry_run_tables_carry_a_copy_ceiling(dry_run):
    _, out = dry_run
    prune = (out / "bench_prune.md").read_text()
    assert "| darex.prune_ |" in prune and "(ceiling)" in prune and "% of ceiling" in prune
    storage = (out / "bench_storage.md").read_text()
    assert "dst.copy_(src) (ceiling)" in storage and "% of copy" in storage
    topk = (out / "bench_topk.md").read_text()
    assert "| copy_ (ceiling) |" in topk and "% of copy" in topk and "identical mask" in topk


def test_dry_run_prints_the_gpu_job_command_lines(dry_run):
    _, out = dry_run
    log = (out / "log").read_text()
    build = next(ln for ln in log.splitlines() if "pip install" in ln)
    for flag in ("TORCH_CUDA_ARCH_LIST=9.0", "MAX_JOBS=16", "--no-build-isolation", "--no-index", "-e ."):
        assert flag in build, build
    for script, size in (("bench_prune.py", "--numel 268435456"), ("bench_topk.py", "--numel 268435456"),
                         ("bench_storage.py", "--size 28")):
        line = next(ln for ln in log.splitlines() if ln.startswith("on the GPU:") and script in ln)
        assert "--device cuda" in line and size in line and "float32,bfloat16" in line, line
    # The CUDA test selection was collected here, with the same -k expressions the GPU runs.
    assert "-m pytest" in log and "-k 'cuda or not cpu'" in log and "test_cuda.py" in log
    # Both sanitizer tools over the smoke program, our kernels only; the smoke itself ran here.
    for tool in ("memcheck", "racecheck"):
        line = next(ln for ln in log.splitlines() if f"compute-sanitizer --tool {tool}" in ln)
        assert "--error-exitcode 1" in line and "kns=darex" in line and "sanitizer_smoke.py --device cuda" in line
    assert "sanitizer smoke:" in (out / "sanitizer.log").read_text()


def test_dry_run_leaves_out_test_modules_whose_imports_are_missing(dry_run):
    _, out = dry_run
    log = (out / "log").read_text()
    module = "python_tests/integrations/test_integrations_mergekit.py"
    assert f"left out {module}: it imports mergekit" in log
    assert all(f"--ignore={module}" in ln for ln in log.splitlines() if " -m pytest " in ln)
    note = next(ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("| tests |"))
    assert "left out:" in note and module in note


def test_usage_errors_exit_2_and_help_exits_0(tmp_path):
    done = _gpu_check("--no-such-flag", out=tmp_path, timeout=30)
    assert done.returncode == 2 and "--cpu-dry-run" in done.stderr
    done = _gpu_check("--help", out=tmp_path, timeout=30)
    assert done.returncode == 0 and "run(command=" in done.stdout
