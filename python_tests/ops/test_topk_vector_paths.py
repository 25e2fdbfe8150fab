"""The vectorized top-k paths (csrc/cpu/topk_spans.inc) on large tensors and long rows: ties of
low-precision scores in every write chunk, the gathered keys selected on every thread, rows
selected through a sample bracket (and the radix fallback when it misses), every ISA path and
thread count giving the same bits, NaN refused before anything is written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

# Tensors of at least 2^20 elements take the sample-bracketed pass (16 x its 2^16 samples).
LARGE = (1 << 21) + 13


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.99, 0.9, 0.5])
def test_low_precision_ties_in_every_chunk(dtype, p):
    # randn in 16 bits: thousands of elements tie at the cut, spread over every write chunk, so
    # which ties are kept (the lowest indices) is decided across chunks.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(LARGE, generator=g).to(dtype)
    keep = LARGE - round(p * LARGE)
    _, _, ties_taken = darex_ext.topk_threshold(x.abs(), keep)
    assert ties_taken > 0
    cut = float(torch.topk(x.abs().float(), keep).values[-1])
    assert int((x.abs().float() == cut).sum()) > ties_taken  # some ties are dropped, some kept
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p), ref.magnitude_prune(x, p))
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p, q=0.3), ref.magnitude_prune(x, p, q=0.3))
    for largest in (True, False):
        assert torch.equal(darex_ext.topk_mask(x, keep, largest=largest), ref.topk_mask(x, keep, largest=largest))


@pytest.mark.parametrize("kind", ["all_ties_kept", "no_tie_kept", "boundary_mid_chunk"])
def test_tie_quota_boundaries(kind):
    # Values in {0, 1, 2}: the cut is on a tie group; the quota ends exactly at a group's end, at
    # its start, or in the middle of a write chunk.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (LARGE,), generator=g).float()
    twos, ones = int((x == 2).sum()), int((x == 1).sum())
    k = {"all_ties_kept": twos + ones, "no_tie_kept": twos, "boundary_mid_chunk": twos + ones // 2 + 4097}[kind]
    assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))
    p = 1 - k / LARGE
    assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p), ref.magnitude_prune(x, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_gathered_keys_are_selected_in_parallel(dtype):
    # At k = n / 2 of 2^23 spread-out keys the bracket holds over 2^17 keys, which are selected
    # by the parallel radix passes instead of one thread.
    n = 1 << 23
    x = torch.randn(n, generator=torch.Generator().manual_seed(5)).to(dtype)
    for k in (n // 2, n // 2 + 1):
        value, beyond, ties = darex_ext.topk_threshold(x, k)
        assert value == float(torch.kthvalue(x.float(), n - k + 1).values)
        assert beyond == int((x > value).sum()) and beyond + ties == k
        assert torch.equal(darex_ext.topk_mask(x, k), ref.topk_mask(x, k))


def _digests(code: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


# Selections and prunes of every dtype, hashed: the same bits whatever the ISA or thread count.
_DIGEST_CODE = """
import hashlib, torch, darex_ext
torch.set_num_threads({threads})
out = []
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    x = torch.randn({n}, generator=torch.Generator().manual_seed(7)).to(dtype)
    rows = x[: 97 * 4099].reshape(97, 4099)
    act_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    act = torch.rand(4099, generator=torch.Generator().manual_seed(8)).to(act_dtype)
    for p in (0.99, 0.9):
        y = darex_ext.magnitude_prune_(x.clone(), p)
        m = darex_ext.topk_mask(x, round((1 - p) * {n}), largest=False)
        yr = darex_ext.magnitude_prune_(rows.clone(), p, scope="row")
        mr = darex_ext.topk_mask(rows, round((1 - p) * 4099), dim=-1)
        w = darex_ext.wanda_prune_(rows.clone(), act, p)
        parts = [t.contiguous().view(torch.uint8).numpy().tobytes() for t in (y, m, yr, mr, w)]
        out.append(hashlib.sha256(b"".join(parts)).hexdigest()[:16])
print(darex_ext.build_info()["cpu_isa"], " ".join(out))
"""


@pytest.mark.parametrize("isa,threads", [("scalar", 2), ("avx2", 2), (None, 1)])
def test_every_isa_and_thread_count_selects_the_same(isa, threads):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    default = _digests(_DIGEST_CODE.format(threads=2, n=LARGE), env)
    if isa is not None:
        env["DAREX_CPU_ISA"] = isa
    forced = _digests(_DIGEST_CODE.format(threads=threads, n=LARGE), env)
    forced_isa, *forced_vals = forced.split()
    _, *default_vals = default.split()
    assert forced_isa in ((isa, "scalar") if isa else (default.split()[0],))
    assert len(forced_vals) == 8 and forced_vals == default_vals


@pytest.mark.parametrize("where", [0, LARGE // 2, LARGE - 1])
def test_nan_refused_before_any_write_on_large_tensors(where):
    x = torch.randn(LARGE)
    x[where] = float("nan")
    before = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    with pytest.raises(ValueError, match="1 NaN"):
        darex_ext.magnitude_prune_(x, 0.99)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("cols", [2047, 2048, 4099, 1 << 16, (1 << 16) + 1])
def test_rows_match_reference(cols, dtype):
    # Rows of 2^11 to 2^16 keys are selected through a sample bracket; shorter and longer ones by
    # radix passes. Every k from one to all but one, both directions, and the row ops.
    rows = max(2, (1 << 18) // cols)
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(rows, cols, generator=g).to(dtype)
    for k in (1, 2, cols // 100, cols // 10, cols // 2, cols - 1):
        for largest in (True, False):
            got = darex_ext.topk_mask(x, k, dim=-1, largest=largest)
            assert torch.equal(got, ref.topk_mask(x, k, dim=-1, largest=largest)), (k, largest)
    for p in (0.99, 0.9, 0.5):
        assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p, scope="row"), ref.magnitude_prune(x, p, "row"))
    act = torch.rand(cols, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(darex_ext.wanda_prune_(x.clone(), act, 0.9, q=0.5), ref.wanda_prune(x, act, 0.9, q=0.5))


@pytest.mark.parametrize("kind", ["few_values", "misleading_sample", "all_equal"])
def test_rows_with_ties_and_misleading_samples(kind):
    rows, cols = 33, 8195
    g = torch.Generator().manual_seed(9)
    if kind == "few_values":
        x = torch.randint(-2, 3, (rows, cols), generator=g).float()
    elif kind == "misleading_sample":
        # The strided sample (every 16th key from the 9th) sees only large keys; the rest is small.
        x = torch.rand(rows, cols, generator=g) * 1e-3
        x[:, 8::16] = 1.0 + torch.rand(rows, len(range(8, cols, 16)), generator=g)
    else:
        x = torch.full((rows, cols), -0.5)
    for k in (1, 100, 1024, 1025, 2000, cols - 1):
        for largest in (True, False):
            got = darex_ext.topk_mask(x, k, dim=-1, largest=largest)
            assert torch.equal(got, ref.topk_mask(x, k, dim=-1, largest=largest)), (k, largest)
        p = 1 - k / cols
        assert torch.equal(darex_ext.magnitude_prune_(x.clone(), p, scope="row"), ref.magnitude_prune(x, p, "row"))


def test_row_with_nan_is_refused_and_others_untouched():
    x = torch.randn(16, 4099)
    x[11, 2000] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        darex_ext.topk_mask(x, 40, dim=-1)
    before = x.clone()
    with pytest.raises(ValueError, match="1 NaN"):
        darex_ext.magnitude_prune_(x, 0.99, scope="row")
    assert torch.equal(x.nan_to_num(), before.nan_to_num()) and int(x.isnan().sum()) == 1
