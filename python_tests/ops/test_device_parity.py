"""Where the CPU and CUDA kernels take different paths, bit for bit.

The CUDA kernels track rows instead of dividing (per-row q whose rows end inside a group of 4
elements), rank short rows of a top-k by a warp instead of a block's digit passes, and pack or
scatter storage formats a warp tile (1024 elements or columns) at a time. These tests feed those
paths the values where conversions differ (NaN with payloads and signs, -0.0, subnormals) and the
shapes around every boundary. On every device each op equals its reference twin bit for bit;
with a GPU, CUDA also equals the CPU bit for bit. Bad storage layouts raise before `out` changes.
"""

from __future__ import annotations

import pytest
import torch

import darex_ext
from darex_ext import reference as ref

from conftest import DEVICES, DTYPES, HAS_CUDA
from op_samples import same_result

OPS = torch.ops.darex
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(_INT[t.element_size()]).cpu()


def hostile(numel: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random values with NaNs (both signs, a payload), +-0.0, subnormals and infinities mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g, dtype=torch.float64).to(dtype)
    if numel == 0:
        return x
    tiny = torch.finfo(dtype).tiny
    specials = torch.tensor([float("nan"), -0.0, 0.0, tiny / 4, -tiny / 2, float("inf"), -float("inf")],
                            dtype=dtype)
    where = torch.randint(0, numel, (max(1, numel // 7),), generator=g)
    x[where] = specials[torch.randint(0, len(specials), (len(where),), generator=g)]
    neg_nan = -torch.tensor(float("nan"), dtype=dtype)  # sign bit set
    x[where[: max(1, len(where) // 5)]] = neg_nan
    if dtype == torch.float32 and numel > 3:  # a payload the copy paths must keep
        x.view(torch.int32)[numel // 2] = 0x7FA00001
    return x


def q_rows_for(rows: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, generator=g, dtype=torch.float64) + 0.05).to(acc)


def both(device: str, fn):
    """fn(device) and, on CUDA, fn("cpu") too, for a CPU == CUDA check of the same inputs."""
    return fn(device), (fn("cpu") if device == "cuda" else None)


def assert_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(bits(got), bits(want)), f"{what}: bits differ"


# ---- per-row q: rows shorter than, equal to and longer than a group of 4, any start -------------

@pytest.mark.parametrize("row_len", [1, 2, 3, 4, 5, 7, 130])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 1029])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_per_row_q_rows_end_inside_groups(device, row_len, offset, dtype):
    rows = max(3, 1300 // row_len)
    x = hostile(rows * row_len, dtype, seed=row_len).reshape(rows, row_len)
    ft = hostile(rows * row_len, dtype, seed=row_len + 100).reshape(rows, row_len)
    q = q_rows_for(rows, dtype, seed=offset)

    def run(dev):
        pruned = x.to(dev, copy=True)  # prune_ works in place; x stays the input
        OPS.prune_(pruned, 0.6, 11, offset, q.to(dev), 1.0)
        out = torch.empty_like(x, device=dev)
        OPS.dare_out(ft.to(dev), x.to(dev), 0.6, 12, offset, q.to(dev), 1.0, out)
        packed = OPS.seeded_pack(x.to(dev), 0.6, 13, offset, q.to(dev), 1.0)
        return pruned, out, packed

    (pruned, out, packed), cpu = both(device, run)
    assert_bits(pruned, ref.prune(x, 0.6, q, seed=11, offset=offset), "prune_")
    assert_bits(out, ref.dare(ft, x, 0.6, q, seed=12, offset=offset), "dare_out")
    assert_bits(packed, ref.seeded_pack(x, 0.6, q, seed=13, offset=offset), "seeded_pack")
    if cpu is not None:
        for got, want, name in zip((pruned, out, packed), cpu, ("prune_", "dare_out", "seeded_pack")):
            assert_bits(got, want, f"{name} CUDA vs CPU")


# ---- every random op on hostile values, offsets and sizes around groups and tiles ---------------

@pytest.mark.parametrize("numel", [0, 1, 3, 5, 1023, 1024, 1025, 4 * 1024 + 7])
@pytest.mark.parametrize("offset", [0, 3, 1021])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_ops_on_hostile_values(device, numel, offset, dtype):
    x = hostile(numel, dtype, seed=numel)
    base = hostile(numel, dtype, seed=numel + 1)
    p = 0.7

    def run(dev):
        pruned = x.to(dev, copy=True)  # prune_ works in place; x stays the input
        OPS.prune_(pruned, p, 5, offset, None, 0.4)
        dared = OPS.dare(x.to(dev), base.to(dev), p, 6, offset, None, 0.4)
        mask = OPS.keep_mask(x.to(dev), p, 7, offset)
        values = OPS.seeded_pack(x.to(dev), p, 8, offset, None, 0.4)
        count = OPS.keep_count(x.to(dev), p, 8, offset)
        decoded = torch.full_like(x, 9.0, device=dev)
        OPS.seeded_scatter_(decoded, values, p, 8, offset, 1.0, False)
        added = base.to(dev, copy=True)
        OPS.seeded_scatter_(added, values, p, 8, offset, 0.5, True)
        return pruned, dared, mask, values, count, decoded, added

    got, cpu = both(device, run)
    pruned, dared, mask, values, count, decoded, added = got
    assert_bits(pruned, ref.prune(x, p, 0.4, seed=5, offset=offset), "prune_")
    assert_bits(dared, ref.dare(x, base, p, 0.4, seed=6, offset=offset), "dare")
    assert torch.equal(mask.cpu(), ref.keep_mask(x.shape, p, 7, offset=offset))
    want_values = ref.seeded_pack(x, p, 0.4, seed=8, offset=offset)
    assert_bits(values, want_values, "seeded_pack")
    assert int(count) == want_values.numel()
    assert_bits(decoded, ref.seeded_scatter(x, want_values, p, seed=8, offset=offset), "seeded_scatter_")
    assert_bits(added, ref.seeded_scatter(base, want_values, p, seed=8, offset=offset, alpha=0.5,
                                          accumulate=True), "seeded_scatter_ accumulate")
    if cpu is not None:
        for g, c in zip(got, cpu):
            assert same_result(g.cpu(), c, True), "CUDA differs from CPU"


# ---- top-k on many short rows (a warp per row on CUDA) with ties ---------------------------------

@pytest.mark.parametrize("cols", [2, 3, 31, 32, 33, 64, 100, 128, 129, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_short_rows_with_ties(device, cols, dtype):
    g = torch.Generator().manual_seed(cols)
    rows = 257
    scores = torch.randint(-4, 5, (rows, cols), generator=g).to(dtype)  # many equal |x|
    scores[0] = -0.0
    scores[1, : cols // 2] = 0.0
    k = max(1, cols // 3)
    p = 1.0 - k / cols

    def run(dev):
        mask = OPS.topk_mask(scores.abs().to(dev), k, True, True)
        pruned = scores.to(dev, copy=True)
        OPS.magnitude_prune_(pruned, k, True, None)
        return mask, pruned

    (mask, pruned), cpu = both(device, run)
    assert torch.equal(mask.cpu(), ref.topk_mask(scores.abs(), k, dim=1))
    assert_bits(pruned, ref.magnitude_prune(scores, p, scope="row"), "magnitude_prune_ per row")
    if cpu is not None:
        assert torch.equal(mask.cpu(), cpu[0].cpu())
        assert_bits(pruned, cpu[1], "magnitude_prune_ CUDA vs CPU")


# ---- bitmask and CSR around the 1024-column tiles, NaN / -0.0 / subnormal values ----------------

SHAPES = [(0, 5), (5, 0), (1,), (7,), (3, 1), (2, 7), (5, 33), (2, 1023), (3, 1024), (3, 1025), (1, 2049),
          (4097,), (2, 3, 5)]


def _sparse_hostile(shape, dtype) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= s
    x = hostile(numel, dtype, seed=numel)
    g = torch.Generator().manual_seed(numel + 7)
    x[torch.rand(numel, generator=g) < 0.6] = 0.0
    return x.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitmask_and_csr_across_tiles(device, shape, dtype):
    x = _sparse_hostile(shape, dtype)
    base = hostile(x.numel(), dtype, seed=3).reshape(shape)

    def run(dev):
        values, bm, ro = OPS.bitmask_pack(x.to(dev))
        decoded = torch.full_like(x, 5.0, device=dev)
        OPS.bitmask_scatter_(decoded, values, bm, ro, 1.0, False)
        added = base.to(dev, copy=True)
        OPS.bitmask_scatter_(added, values, bm, ro, -2.0, True)
        crow, col, cvalues = OPS.csr_pack(x.to(dev))
        cdecoded = torch.full_like(x, 5.0, device=dev)
        OPS.csr_scatter_(cdecoded, crow, col, cvalues, 1.0, False)
        cadded = base.to(dev, copy=True)
        OPS.csr_scatter_(cadded, crow, col, cvalues, -2.0, True)
        return values, bm, ro, decoded, added, crow, col, cvalues, cdecoded, cadded

    got, cpu = both(device, run)
    values, bm, ro, decoded, added, crow, col, cvalues, cdecoded, cadded = got
    want = ref.bitmask_pack(x)
    assert same_result(tuple(t.cpu() for t in (values, bm, ro)), want, True), "bitmask_pack"
    assert_bits(decoded, ref.bitmask_scatter(torch.full_like(x, 5.0), want[0], want[1]), "bitmask_scatter_")
    assert_bits(added, ref.bitmask_scatter(base, want[0], want[1], alpha=-2.0, accumulate=True),
                "bitmask_scatter_ accumulate")
    cwant = ref.csr_pack(x)
    assert same_result(tuple(t.cpu() for t in (crow, col, cvalues)), cwant, True), "csr_pack"
    assert_bits(cdecoded, ref.csr_scatter(torch.full_like(x, 5.0), *cwant), "csr_scatter_")
    assert_bits(cadded, ref.csr_scatter(base, *cwant, alpha=-2.0, accumulate=True), "csr_scatter_ accumulate")
    if cpu is not None:
        for g, c in zip(got, cpu):
            assert same_result(g.cpu(), c, True), "CUDA differs from CPU"


# ---- bad layouts: a clear ValueError, and `out` keeps every bit ----------------------------------

def _unchanged_after_error(out: torch.Tensor, call, match: str) -> None:
    before = bits(out).clone()
    with pytest.raises(ValueError, match=match):
        call()
    if out.is_cuda:
        torch.cuda.synchronize()
    assert torch.equal(bits(out), before), "out changed although the call was refused"


def test_bad_bitmask_layouts_leave_out_untouched(device):
    x = _sparse_hostile((6, 1030), torch.float32).to(device)
    values, bm, ro = OPS.bitmask_pack(x)
    out = hostile(x.numel(), torch.float32, seed=1).reshape(x.shape).to(device)
    padded = bm.clone()
    padded[2, -1] |= 0x80  # 1030 columns: bits 6 and 7 of a row's last byte are padding
    _unchanged_after_error(out, lambda: OPS.bitmask_scatter_(out, values, padded, ro, 1.0, True), "padding")
    shifted = ro.clone()
    shifted[3] += 1
    _unchanged_after_error(out, lambda: OPS.bitmask_scatter_(out, values, bm, shifted, 1.0, False),
                           r"row_offsets\[3\]")
    _unchanged_after_error(out, lambda: OPS.bitmask_scatter_(out, values[:-1], bm, ro, 1.0, False), "values")


def test_bad_csr_layouts_leave_out_untouched(device):
    x = _sparse_hostile((40, 300), torch.float32).to(device)
    crow, col, values = OPS.csr_pack(x)
    out = hostile(x.numel(), torch.float32, seed=2).reshape(x.shape).to(device)
    k = int(crow[7]) + 1  # inside row 7
    assert int(crow[8]) > k, "the sample needs row 7 to hold at least 2 values"
    swapped = col.clone()
    swapped[k] = swapped[k - 1]  # not strictly increasing
    _unchanged_after_error(out, lambda: OPS.csr_scatter_(out, crow, swapped, values, 1.0, False),
                           rf"col\[{k}\]")
    wide = col.to(torch.int64).clone()
    wide[-1] = 300  # out of range
    _unchanged_after_error(out, lambda: OPS.csr_scatter_(out, crow, wide, values, 1.0, True),
                           rf"col\[{col.numel() - 1}\]")
    bad_crow = crow.clone()
    bad_crow[5] = bad_crow[6] + 1
    _unchanged_after_error(out, lambda: OPS.csr_scatter_(out, bad_crow, col, values, 1.0, False), "crow")


def test_wrong_seeded_value_count_leaves_out_untouched(device):
    x = hostile(3000, torch.bfloat16).to(device)
    values = OPS.seeded_pack(x, 0.9, 1, 0, None, 1.0)
    out = hostile(3000, torch.bfloat16, seed=4).to(device)
    _unchanged_after_error(out, lambda: OPS.seeded_scatter_(out, values[1:], 0.9, 1, 0, 1.0, True), "keeps")
    _unchanged_after_error(out, lambda: OPS.seeded_scatter_(out, values, 0.9, 2, 0, 1.0, False), "keeps")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
def test_non_contiguous_and_misaligned_views_cpu_equals_cuda():
    for dtype in DTYPES:
        x = hostile(4 * 1031, dtype).reshape(4, 1031)
        for view in (lambda t: t[:, 1:], lambda t: t.t(), lambda t: t.reshape(-1)[3:]):
            cpu, gpu = view(x.clone()), view(x.cuda())  # fresh copies each time
            OPS.prune_(cpu, 0.8, 3, 1, None, 0.5)
            OPS.prune_(gpu, 0.8, 3, 1, None, 0.5)
            assert_bits(gpu, cpu, f"prune_ on a view, {dtype}")
            for pack in (OPS.bitmask_pack, OPS.csr_pack):
                assert same_result(tuple(t.cpu() for t in pack(view(x.cuda()))), pack(view(x.clone())), True)
