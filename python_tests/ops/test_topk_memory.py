"""Extra memory of the exact top-k ops does not depend on the data: all zeros, a mostly-zero delta,
few distinct values and many ties at the cut cost no more than random data (a small fraction of
the tensor); and the select stays exact on such data where it takes its large-tensor paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.apps.bench_memory import hwm_resettable

from conftest import HAS_CUDA

NUMEL = 1 << 25  # 64 MiB of bf16: a few seconds in all, large enough for the whole-tensor paths
COLS = 4096  # rows of a typical weight (per-row ops)
LONG_COLS = 1 << 21  # a few long rows (per-row select of a row that is a tensor of its own)
KINDS = ["zeros", "mostly_zeros", "few_values", "ties_at_cut", "random"]
OPS = ["magnitude_prune", "topk_mask", "topk_mask_rows", "topk_mask_long_rows", "wanda_prune"]
MIB = 1 << 20


def bound(numel: int, element_size: int) -> int:
    """Extra bytes allowed for one call: max(8 MiB, 2% of the tensor)."""
    return max(8 * MIB, numel * element_size // 50)


def make(kind: str, n: int, dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> torch.Tensor:
    """Deterministic test data of `kind`; the half-way cut of each lands where its kind says."""
    g = torch.Generator().manual_seed(7)
    if kind == "zeros":  # the delta of an unchanged tensor
        x = torch.zeros(n)
    elif kind == "mostly_zeros":  # 99.9% zeros
        x = torch.zeros(n)
        idx = torch.randint(0, n, (n // 1000,), generator=g)
        x[idx] = torch.randn(idx.numel(), generator=g)
    elif kind == "few_values":
        x = torch.randint(0, 3, (n,), generator=g).float()
    elif kind == "ties_at_cut":  # a quarter of distinct values above a 3/4 block of ties
        x = torch.ones(n)
        idx = torch.randint(0, n, (n // 4,), generator=g)
        x[idx] = 3.0 + torch.rand(idx.numel(), generator=g)
    else:
        x = torch.randn(n, generator=g)
    return x.to(dtype).to(device)


def run(op: str, x: torch.Tensor):
    """One call of `op` keeping half of each slice; returns its output (None for in-place ops)."""
    if op == "magnitude_prune":
        darex_ext.magnitude_prune_(x, 0.5)
        return None
    if op == "topk_mask":
        return darex_ext.topk_mask(x, x.numel() // 2)
    if op == "topk_mask_rows":
        return darex_ext.topk_mask(x.view(-1, COLS), COLS // 2, dim=-1)
    if op == "topk_mask_long_rows":
        return darex_ext.topk_mask(x.view(-1, LONG_COLS), LONG_COLS // 2, dim=-1)
    if op == "wanda_prune":
        act = torch.ones(COLS, device=x.device)
        act[::3] = 2.0
        darex_ext.wanda_prune_(x.view(-1, COLS), act, 0.5)
        return None
    raise ValueError(f"unknown op {op!r}")


def output_bytes(op: str, numel: int) -> int:
    return numel if op.startswith("topk_mask") else 0  # the bool mask is the result, not overhead


# ---- CPU: peak RSS of one call, in a child process ------------------------------------------

_CHILD = """
import gc, json, sys
import torch
sys.path.insert(0, sys.argv[1])
import test_topk_memory as t
from darex_ext.apps.bench_memory import extra_peak_of
peaks = {}
for kind in t.KINDS:
    master = t.make(kind, t.NUMEL)
    warm = t.make(kind, 1 << 21)
    for op in t.OPS:
        t.run(op, warm.clone())  # first use maps pages and starts threads: not the op's cost
        work = master.clone()
        gc.collect()
        extra = extra_peak_of(lambda: t.run(op, work), True) - t.output_bytes(op, t.NUMEL)
        peaks[kind + "/" + op] = extra
        del work
print(json.dumps(peaks))
"""


@pytest.fixture(scope="module")
def cpu_peaks() -> dict[str, int]:
    if not hwm_resettable():
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs)")
    env = dict(os.environ)
    # Every large buffer a fresh mmap (counted in RSS while alive), never glibc's cached heap.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(darex_ext.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.path.dirname(here), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, here], capture_output=True, text=True, env=env,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_extra_peak_is_a_small_fraction(cpu_peaks, kind, op):
    extra = cpu_peaks[f"{kind}/{op}"]
    limit = bound(NUMEL, 2)
    assert extra <= limit, f"{op} on {kind}: {extra / MIB:.1f} MiB extra, limit {limit / MIB:.1f} MiB"


# ---- CUDA: the caching allocator's peak -----------------------------------------------------

@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_extra_peak_is_a_small_fraction(kind, op):
    master = make(kind, NUMEL, device="cuda")
    run(op, make(kind, 1 << 21, device="cuda"))
    work = master.clone()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run(op, work)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - output_bytes(op, NUMEL)
    del result
    limit = bound(NUMEL, 2)
    assert extra <= limit, f"{op} on {kind}: {extra / MIB:.1f} MiB extra, limit {limit / MIB:.1f} MiB"


# ---- exactness on the same kinds of data, where the large-tensor paths run --------------------

N_EXACT = (1 << 21) + 37  # past the sample-guided select's minimum, not a multiple of a chunk


def _cut_ks(x: torch.Tensor) -> list[int]:
    """k at the edges of the tie groups (the sample bracket's ends) and in between."""
    n = x.numel()
    above_one = int((x.double().abs() > 1).sum())
    ks = {1, 5, n // 3, n // 2, n - 1, above_one + 1, above_one + 7, max(1, above_one - 3)}
    return sorted(k for k in ks if 1 <= k <= n)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_exact_on_tie_heavy_large_tensors(kind, dtype):
    x = make(kind, N_EXACT, dtype)
    wide = x.double()
    for largest in (True, False):
        # The reference's stable sort, once for every k: the first k of it are the selection.
        order = torch.sort(wide, descending=largest, stable=True).indices
        for k in _cut_ks(x):
            expected = torch.zeros(N_EXACT, dtype=torch.bool)
            expected[order[:k]] = True
            assert torch.equal(darex_ext.topk_mask(x, k, largest=largest), expected), (k, largest)
            cut = float(wide[order[k - 1]])
            strict = int((wide > cut).sum() if largest else (wide < cut).sum())
            assert darex_ext.topk_threshold(x, k, largest=largest) == (cut, strict, k - strict), (k, largest)
    k = N_EXACT // 2
    assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), 0.6), ref.magnitude_prune(x, 0.6))


@pytest.mark.parametrize("kind", ["mostly_zeros", "few_values", "ties_at_cut"])
def test_exact_whatever_the_thread_count(kind):
    x = make(kind, N_EXACT, torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            results.append((darex_ext.topk_mask(x, N_EXACT // 2),
                            darex_ext.magnitude_prune_(x.clone(), 0.3),
                            darex_ext.topk_threshold(x, N_EXACT // 3)))
    finally:
        torch.set_num_threads(threads)
    (m1, p1, t1), (m3, p3, t3) = results
    assert torch.equal(m1, m3) and torch.equal(p1, p3) and t1 == t3
    assert torch.equal(m1, ref.topk_mask(x, N_EXACT // 2))
