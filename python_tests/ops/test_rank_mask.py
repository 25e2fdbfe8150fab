"""magnitude_rank_mask against the reference (exactly), its keep law per rank, replay and errors."""

from __future__ import annotations

import math

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.ops import magnitude_rank_mask

from conftest import randn
from op_samples import check_samples_against_reference

SHAPES = [(0,), (1,), (7,), (0, 5), (5, 0), (1, 1), (1, 2), (3, 33), (17, 129), (4, 3, 65), (1, 5000)]
PROBS = [(0.35, 0.65), (0.0, 1.0), (0.5, 0.5), (0.9, 0.1), (1.0, 1.0)]


def test_samples(device):
    check_samples_against_reference("magnitude_rank_mask", device)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p_lo,p_hi", PROBS, ids=str)
def test_matches_reference(shape, p_lo, p_hi, dtype, device):
    x = randn(*shape, dtype=dtype, device=device)
    for seed, offset in ((42, 0), (2**64 - 1, 7)):
        got = magnitude_rank_mask(x, p_lo, p_hi, seed=seed, offset=offset)
        assert got.dtype == torch.bool and got.shape == x.shape
        assert torch.equal(got, ref.magnitude_rank_mask(x, p_lo, p_hi, seed=seed, offset=offset))


def test_ties_rank_by_column(dtype, device):
    # Few distinct magnitudes, both signs and both zeros: equal |x| must rank by column.
    x = (torch.randint(-3, 4, (40, 257), device=device).to(dtype) * 0.5)
    x[::3, ::5] = -0.0
    for seed in range(5):
        got = magnitude_rank_mask(x, 0.1, 0.9, seed=seed)
        assert torch.equal(got, ref.magnitude_rank_mask(x, 0.1, 0.9, seed=seed))
    ranks = ref.magnitude_ranks(x)
    equal = x.abs()[0] == x.abs()[0, 0]
    assert torch.equal(ranks[0][equal], torch.sort(ranks[0][equal]).values)  # increasing with column


def test_special_values_are_ordered(device):
    x = randn(9, 70, device=device)
    x[:, ::7] = float("inf")
    x[:, 3::9] = -float("inf")
    x[:, 5::11] = 1e-42  # subnormal
    assert torch.equal(magnitude_rank_mask(x, 0.2, 0.8, seed=3), ref.magnitude_rank_mask(x, 0.2, 0.8, seed=3))


@pytest.mark.parametrize("view", ["transpose", "step"])
def test_non_contiguous_is_its_contiguous_copy(view, dtype, device):
    base = randn(40, 30, dtype=dtype, device=device)
    x = base.t() if view == "transpose" else base[::3, 1::2]
    assert not x.is_contiguous()
    assert torch.equal(magnitude_rank_mask(x, 0.3, 0.7, seed=5),
                       ref.magnitude_rank_mask(x.contiguous(), 0.3, 0.7, seed=5))


def test_equal_probabilities_give_the_spec_keep_mask(device):
    # With p_lo == p_hi every rank has the same threshold: the spec v1 mask of drop rate 1 - p.
    x = randn(13, 77, device=device)
    for p in (0.25, 0.5, 0.875):
        assert torch.equal(magnitude_rank_mask(x, p, p, seed=9),
                           darex_ext.keep_mask(x, 1.0 - p, seed=9, mask="philox"))


def test_extremes(device):
    x = randn(50, 40, device=device)
    assert magnitude_rank_mask(x, 1.0, 1.0, seed=1).all()
    mask = magnitude_rank_mask(x, 0.0, 1.0, seed=1)
    ranks = ref.magnitude_ranks(x)
    assert mask[ranks == 39].all()        # probability 1
    assert not mask[ranks == 0].any()     # probability 0 (kept only for the one word 2^32 - 1)


def test_replay_seeds_offsets_threads():
    x = randn(64, 300)
    a = magnitude_rank_mask(x, 0.35, 0.65, seed=11)
    assert torch.equal(a, magnitude_rank_mask(x, 0.35, 0.65, seed=11))
    assert not torch.equal(a, magnitude_rank_mask(x, 0.35, 0.65, seed=12))
    # Rows ranked on their own, words by global index: rows streamed with an offset give the
    # mask of the whole.
    part = magnitude_rank_mask(x[10:20], 0.35, 0.65, seed=11, offset=10 * 300)
    assert torch.equal(part, a[10:20])
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert torch.equal(magnitude_rank_mask(x, 0.35, 0.65, seed=11), a)
    finally:
        torch.set_num_threads(threads)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(magnitude_rank_mask(x, 0.3, 0.6, seed=g1),
                       magnitude_rank_mask(x, 0.3, 0.6, seed=g2))


def test_keep_frequency_per_rank_is_the_linear_law():
    # 4000 rows, each a permutation of the same 51 magnitudes: rank k is kept in each row with
    # probability p_lo + (p_hi - p_lo) k / 50, independently. Per rank a binomial z-test (|z| < 5
    # at 51 ranks: false alarm ~1e-5), and the chi-square of all ranks together.
    rows, cols, p_lo, p_hi = 4000, 51, 0.2, 0.8
    values = torch.arange(1, cols + 1, dtype=torch.float32)
    perm = torch.argsort(torch.rand(rows, cols), dim=1)
    x = values[perm] * torch.where(torch.rand(rows, cols) < 0.5, -1.0, 1.0)
    mask = magnitude_rank_mask(x, p_lo, p_hi, seed=2024)
    kept = torch.zeros(cols, dtype=torch.float64)
    kept.index_add_(0, perm.reshape(-1), mask.reshape(-1).double())  # perm[r, j] = rank of (r, j)
    p = p_lo + (p_hi - p_lo) * torch.arange(cols, dtype=torch.float64) / (cols - 1)
    z = (kept - rows * p) / torch.sqrt(rows * p * (1 - p))
    assert z.abs().max() < 5, z
    chi2 = float((z ** 2).sum())  # ~ chi-square with 51 dof: mean 51, sd ~10
    assert chi2 < 51 + 6 * math.sqrt(2 * 51), chi2
    # A wrong law (the reversed slope) is far outside these bounds.
    z_reversed = (kept - rows * p.flip(0)) / torch.sqrt(rows * p * (1 - p))
    assert z_reversed.abs().max() > 20


def test_errors():
    x = randn(4, 5)
    with pytest.raises(ValueError, match="p_lo"):
        magnitude_rank_mask(x, -0.1, 0.5)
    with pytest.raises(ValueError, match="p_hi"):
        magnitude_rank_mask(x, 0.1, float("nan"))
    with pytest.raises(TypeError, match="p_lo"):
        magnitude_rank_mask(x, "0.1", 0.5)
    with pytest.raises(ValueError, match="at least one dimension"):
        magnitude_rank_mask(torch.tensor(1.0), 0.1, 0.5)
    with pytest.raises(TypeError, match="delta"):
        magnitude_rank_mask(torch.ones(3, dtype=torch.int32), 0.1, 0.5)
    with pytest.raises(ValueError, match="offset"):
        magnitude_rank_mask(x, 0.1, 0.5, offset=-1)
    y = x.clone()
    y[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        magnitude_rank_mask(y, 0.1, 0.5)
    with pytest.raises(ValueError, match="p_hi"):  # the dispatcher op checks too
        torch.ops.darex.magnitude_rank_mask(x, 0.1, 1.5, 0, 0)
