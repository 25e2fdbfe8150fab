"""algorithms.sparsify against installed mergekit (arcee-ai/mergekit 0.1.5) as the oracle:
breadcrumbs' magnitude_outliers and SCE's sce_weight / sce_mask exactly (values, dtype, gradients),
DELLA's della_magprune in law (per-rank keep frequencies against mergekit's formula and against
mergekit's own draws), with exact replay from the seed."""

from __future__ import annotations

import math

import pytest
import torch

from darex_ext.algorithms import sparsify as ds
from darex_ext.ops import magnitude_rank_mask

mk = pytest.importorskip("mergekit.sparsify")
mk_sce = pytest.importorskip("mergekit.merge_methods.sce")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NORMS = [None, "l1", "l2", "linf"]


def tie_free(shape, dtype, seed=0) -> torch.Tensor:
    """Random signs and pairwise distinct magnitudes (also after mergekit's float32 cast), so every
    cut is unambiguous and mergekit's unstable sort has only one answer."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype in (torch.float16, torch.bfloat16):
        bits = (torch.randperm(max(4000, 2 * n), generator=g)[:n] + 0x3000).to(torch.int16)
        mags = bits.view(dtype).double()
    else:
        mags = torch.randperm(max(4000, 2 * n), generator=g)[:n].double() * 0.001 + 0.01
        mags = mags * (1 + 1e-4 * torch.rand(n, generator=g, dtype=torch.float64))
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return (mags * signs).to(dtype).reshape(shape)


def mk_norm(norm):
    return None if norm is None else mk.RescaleNorm(norm)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# ---------------------------------------------------------------- magnitude_outliers (breadcrumbs)
# n = 341: density 0.37 -> 126.17 (fraction below 0.5), 0.6 -> 204.6 (above), 0.5 -> 170.5.
SHAPES = [(1,), (2,), (7,), (31, 11), (2, 3, 5), (0,), (1, 1), (4, 0)]
DENSITIES = [0.0, 1e-3, 0.37, 0.5, 0.6, 0.99, 1.0, 1.5, -0.2]
GAMMAS = [0.0, 0.01, 0.1, 0.7]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_magnitude_outliers_equals_mergekit(shape, dtype):
    x = tie_free(shape, dtype, seed=len(shape))
    original = x.clone()
    for density in DENSITIES:
        for gamma in GAMMAS:
            for norm in NORMS:
                if x.numel() == 0 and norm == "linf":
                    continue  # mergekit's abs().max() fails on an empty tensor; ours returns it
                theirs = mk.magnitude_outliers(x, density, rescale_norm=mk_norm(norm), gamma=gamma)
                ours = ds.magnitude_outliers(x, density, gamma, rescale_norm=norm)
                assert same(ours, theirs), (density, gamma, norm)
    assert torch.equal(x, original)


def test_magnitude_outliers_counts_and_returns_the_tensor_itself():
    x = tie_free((31, 11), torch.float32, seed=3)
    n = x.numel()
    for density, gamma in ((0.37, 0.01), (0.6, 0.1), (0.5, 0.7)):
        out = ds.magnitude_outliers(x, density, gamma)
        assert int((out != 0).sum()) == int(density * n)
        order = torch.sort(x.abs().reshape(-1)).indices
        n_bot = max(0, n - int(density * n) - int(gamma * n))
        kept = torch.zeros(n, dtype=torch.bool)
        kept[order[n_bot:n_bot + int(density * n)]] = True
        assert torch.equal(out.reshape(-1) != 0, kept)
    assert ds.magnitude_outliers(x, 1.0, 0.1) is x  # mergekit returns its input too
    # mergekit's keyword call (rescale_norm as a RescaleNorm, gamma by name) works unchanged.
    assert same(ds.magnitude_outliers(x, density=0.4, rescale_norm=mk.RescaleNorm.l2, gamma=0.05),
                mk.magnitude_outliers(x, density=0.4, rescale_norm=mk.RescaleNorm.l2, gamma=0.05))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_magnitude_outliers_ties_keep_the_lower_index(dtype):
    # Few distinct magnitudes: mergekit's unstable sort picks some of the tied elements at each cut,
    # we pick the lower indices (a stable sort's choice). Counts, every element off the cut values
    # and the multiset of kept magnitudes agree with mergekit; the choice is the stable order's.
    g = torch.Generator().manual_seed(7)
    x = (torch.randint(1, 9, (40, 13), generator=g) * torch.where(torch.rand(40, 13, generator=g) < .5, -1, 1))
    x = (x * 0.25).to(dtype)
    n = x.numel()
    for density, gamma in ((0.37, 0.05), (0.6, 0.1), (0.2, 0.5)):
        ours = ds.magnitude_outliers(x, density, gamma)
        theirs = mk.magnitude_outliers(x, density, gamma=gamma)
        assert int((ours != 0).sum()) == int((theirs != 0).sum()) == int(density * n)
        assert torch.equal(torch.sort(ours.abs().reshape(-1)).values, torch.sort(theirs.abs().reshape(-1)).values)
        order = torch.sort(x.abs().reshape(-1).float(), stable=True).indices
        n_bot = max(0, n - int(density * n) - int(gamma * n))
        stable = torch.zeros(n, dtype=x.dtype)
        stable[order[n_bot:n_bot + int(density * n)]] = 1
        assert torch.equal(ours, x * stable.reshape(x.shape))
        cut_values = {float(v) for v in x.abs().reshape(-1)[order[[n_bot, n_bot + int(density * n) - 1]]]}
        off_cut = ~torch.isin(x.abs().float(), torch.tensor(sorted(cut_values)))
        assert torch.equal(ours[off_cut], theirs[off_cut])


def test_magnitude_outliers_ranks_float64_as_float32_like_mergekit():
    # mergekit sorts float32 magnitudes on the CPU: float64 values that differ below float32's
    # resolution tie there, and the lower index wins (a stable sort's choice), not the larger value.
    x = torch.tensor([1.0, 1.0 + 2e-12, 1.0 + 1e-12, 3.0, 0.5, 2.0, 1.0 + 3e-12, 0.25], dtype=torch.float64)
    ours = ds.magnitude_outliers(x, 0.5, 0.0)
    order = torch.sort(x.abs().float(), stable=True).indices
    twin = torch.zeros(8, dtype=torch.float64)
    twin[order[4:]] = 1
    assert torch.equal(ours, x * twin)
    by_float64 = torch.zeros(8, dtype=torch.float64)
    by_float64[torch.sort(x.abs()).indices[4:]] = 1
    assert not torch.equal(ours, x * by_float64)  # the cast matters on this data


def test_norm_guard_skips_rescale_below_1e_7():
    # mergekit leaves the kept entries unscaled when either norm is below 1e-7.
    x = tie_free((31, 11), torch.float32, seed=2) * 1e-10
    for norm in ("l1", "l2", "linf"):
        ours = ds.magnitude_outliers(x, 0.4, 0.05, rescale_norm=norm)
        assert same(ours, mk.magnitude_outliers(x, 0.4, rescale_norm=mk_norm(norm), gamma=0.05))
        assert torch.equal(ours, ds.magnitude_outliers(x, 0.4, 0.05))
    big = tie_free((31, 11), torch.float32, seed=2)
    assert not torch.equal(ds.magnitude_outliers(big, 0.4, 0.05, rescale_norm="l1"), ds.magnitude_outliers(big, 0.4, 0.05))


@pytest.mark.parametrize("norm", NORMS)
def test_magnitude_outliers_gradients_are_mergekits(norm):
    x = tie_free((9, 7), torch.float64, seed=11)
    v = torch.randn(9, 7, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad((ds.magnitude_outliers(a, 0.45, 0.1, rescale_norm=norm) * v).sum(), a)
    (gb,) = torch.autograd.grad((mk.magnitude_outliers(b, 0.45, rescale_norm=mk_norm(norm), gamma=0.1) * v).sum(), b)
    assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-14)
    # The magnitudes are far apart compared with gradcheck's step, so the mask does not move.
    torch.autograd.gradcheck(lambda t: ds.magnitude_outliers(t, 0.45, 0.1, rescale_norm=norm), (a,))


def test_magnitude_outliers_errors():
    x = tie_free((5, 5), torch.float32)
    with pytest.raises(ValueError, match="gamma"):
        ds.magnitude_outliers(x, 0.5, -0.1)
    with pytest.raises(ValueError, match="density"):
        ds.magnitude_outliers(x, float("nan"), 0.1)
    with pytest.raises(TypeError, match="gamma"):
        ds.magnitude_outliers(x, 0.5, mk.RescaleNorm.l1)  # mergekit's positional order is caught
    with pytest.raises(ValueError, match="rescale_norm"):
        ds.magnitude_outliers(x, 0.5, 0.1, rescale_norm="l3")
    with pytest.raises(TypeError, match="tensor"):
        ds.magnitude_outliers(torch.ones(3, dtype=torch.int64), 0.5, 0.1)
    y = x.clone()
    y[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ds.magnitude_outliers(y, 0.5, 0.1)


# ---------------------------------------------------------------- SCE
@pytest.mark.filterwarnings("ignore:.*degrees of freedom")  # the empty case, in both
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 31, 11), (2, 1), (1, 17), (4, 2, 3, 5), (3, 0)], ids=str)
def test_sce_mask_and_weight_equal_mergekit(dtype, shape):
    tvs = tie_free(shape, dtype, seed=5)
    if tvs.dim() > 1 and tvs.shape[1] > 3:
        tvs[:, 1] = tvs[0, 1]  # a zero-variance column: not counted in the density's base
    for density in (-0.5, 0.0, 1e-3, 0.37, 0.5, 0.6, 0.99, 1.0, 2.0):
        for mask_dtype in (None, torch.int8, torch.bool, torch.float32):
            assert same(ds.sce_mask(tvs, density, mask_dtype), mk_sce.sce_mask(tvs, density, mask_dtype))
    if tvs.numel():
        assert same(ds.sce_weight(tvs), mk_sce.sce_weight(tvs))
    assert same(ds.sce_weight(torch.zeros(3, 4, dtype=dtype)), mk_sce.sce_weight(torch.zeros(3, 4, dtype=dtype)))


def test_sce_mask_counts_nonzero_variance_only():
    tvs = tie_free((3, 40), torch.float32, seed=9)
    tvs[:, :10] = 0.25  # ten elements where every task vector agrees
    mask = ds.sce_mask(tvs, 0.5)
    assert int(mask.sum()) == int(30 * 0.5) and not mask[:10].any()
    var = tvs.var(dim=0, unbiased=False)
    assert var[mask.bool()].min() > var[~mask.bool() & (var > 0)].max()


def test_sce_weight_gradient_is_mergekits():
    tvs = torch.randn(3, 5, 4, dtype=torch.float64)
    a, b = tvs.clone().requires_grad_(), tvs.clone().requires_grad_()
    v = torch.randn(3, dtype=torch.float64)
    (ga,) = torch.autograd.grad((ds.sce_weight(a) * v).sum(), a)
    (gb,) = torch.autograd.grad((mk_sce.sce_weight(b) * v).sum(), b)
    assert torch.equal(ga, gb)
    assert not ds.sce_mask(a, 0.5).requires_grad  # a selection, as mergekit's


def test_sce_errors():
    with pytest.raises(ValueError, match="tvs"):
        ds.sce_weight(torch.ones(0, 3))
    with pytest.raises(TypeError, match="mask_dtype"):
        ds.sce_mask(torch.ones(2, 3), 0.5, "int8")
    with pytest.raises(ValueError, match="density"):
        ds.sce_mask(torch.ones(2, 3), float("nan"))
    with pytest.raises(TypeError, match="tvs"):
        ds.sce_mask([1.0, 2.0], 0.5)
    t = torch.randn(2, 3)
    t[0, 0] = float("inf")  # var -> nan
    with pytest.raises(ValueError, match="NaN"):
        ds.sce_mask(t, 0.5)


# ---------------------------------------------------------------- DELLA
def mk_keep_probability(x: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """mergekit's formula for the keep probability of each element of a 2-D tensor (rank 1..n
    along dim 1, normalised by its min and max), in float64 on tie-free data."""
    ranks = torch.argsort(torch.argsort(x.abs(), dim=1), dim=1).double() + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return (density - epsilon) + ((ranks - lo) / (hi - lo)).clamp(0, 1) * 2 * epsilon


def _permuted_rows(rows: int, cols: int, seed: int = 0):
    """Rows that are permutations of the same distinct magnitudes (random signs): rank of (r, j)
    is perm[r, j]."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(rows, cols, generator=g), dim=1)
    signs = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    return (perm.double() + 1.0) * 0.01 * signs, perm


def _z(count: torch.Tensor, n: int, p: torch.Tensor) -> torch.Tensor:
    return (count - n * p) / torch.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("density,epsilon", [(0.5, 0.15), (0.3, 0.25), (0.7, 0.05)])
def test_della_keep_frequency_per_rank_is_mergekits_law(density, epsilon):
    # 3000 rows of 41: each rank is kept 3000 times independently with mergekit's probability.
    # Binomial z per rank (|z| < 5 over 41 ranks) and the chi-square of all of them.
    x, perm = _permuted_rows(3000, 41)
    out = ds.della_magprune(x.float(), density, epsilon, seed=99)
    kept = torch.zeros(41, dtype=torch.float64).index_add_(0, perm.reshape(-1), (out != 0).reshape(-1).double())
    p = mk_keep_probability(x[:1], density, epsilon)[0][torch.argsort(perm[0])]  # by rank
    assert torch.allclose(p, ds.della_keep_probability(x[:1], density, epsilon)[0][torch.argsort(perm[0])])
    z = _z(kept, 3000, p)
    assert z.abs().max() < 5, z
    assert float((z ** 2).sum()) < 41 + 6 * math.sqrt(2 * 41)


def test_della_matches_mergekits_own_draws():
    # Two-sample: mergekit's della_magprune and ours on the same tensor, 400 runs each; per element
    # the kept counts must agree (two-proportion z, |z| < 5 over 60 elements), and a law with the
    # slope reversed is rejected by the same statistic.
    torch.manual_seed(0)
    x, _ = _permuted_rows(1, 60, seed=4)
    x = x.float()
    runs = 400
    ours = torch.stack([ds.della_magprune(x, 0.5, 0.3, seed=s) != 0 for s in range(runs)]).double().sum(0)
    theirs = torch.stack([mk.della_magprune(x, 0.5, 0.3) != 0 for _ in range(runs)]).double().sum(0)
    pooled = (ours + theirs) / (2 * runs)
    z = (ours - theirs) / torch.sqrt(2 * runs * pooled * (1 - pooled))
    assert z.abs().max() < 5, z
    flipped = x.abs().max() + 0.01 - x.abs()  # the same elements with their ranks reversed
    reversed_law = torch.stack([ds.della_magprune(flipped, 0.5, 0.3, seed=s) != 0 for s in range(runs)]).double().sum(0)
    pooled = (reversed_law + theirs) / (2 * runs)
    assert ((reversed_law - theirs) / torch.sqrt(2 * runs * pooled * (1 - pooled))).abs().max() > 5


def test_della_inverse_p_is_unbiased():
    # The DELLA authors' 1/p rescale: E[out] = tensor. Mean of 2000 seeded runs per element against
    # the tensor, in units of its standard error x * sqrt((1 - p) / p / runs).
    x, _ = _permuted_rows(2, 30, seed=2)
    runs = 2000
    outs = torch.stack([ds.della_magprune(x, 0.4, 0.2, seed=s, inverse_p=True) for s in range(runs)])
    p = ds.della_keep_probability(x, 0.4, 0.2)
    se = x.abs() * torch.sqrt((1 - p) / p / runs)
    assert ((outs.mean(0) - x) / se).abs().max() < 5
    kept = outs[0] != 0
    assert torch.allclose(outs[0][kept], x[kept] / p[kept], rtol=1e-12)
    without = ds.della_magprune(x, 0.4, 0.2, seed=0)  # same seed: same mask
    assert torch.equal(without != 0, kept)


def test_della_replays_and_seeds_differ():
    x = torch.randn(64, 100)
    a = ds.della_magprune(x, 0.5, 0.15, seed=5)
    assert torch.equal(a, ds.della_magprune(x, 0.5, 0.15, seed=5))
    assert not torch.equal(a, ds.della_magprune(x, 0.5, 0.15, seed=6))
    torch.manual_seed(3)
    b = ds.della_magprune(x, 0.5, 0.15)  # seed drawn from torch's default generator
    torch.manual_seed(3)
    assert torch.equal(b, ds.della_magprune(x, 0.5, 0.15))
    # The mask is the rank mask of the documented bounds; kept entries are the input's values.
    keep = magnitude_rank_mask(x, 0.35, 0.65, seed=5)
    assert torch.equal(a != 0, keep) and torch.equal(a[keep], x[keep])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_della_dtypes_and_norms(dtype, norm):
    x = tie_free((16, 33), dtype, seed=1)
    out = ds.della_magprune(x, 0.5, 0.2, rescale_norm=norm, seed=7)
    assert out.dtype == dtype and out.shape == x.shape
    keep = magnitude_rank_mask(x, 0.3, 0.7, seed=7)
    assert torch.equal(out != 0, keep)
    # The rescale is mergekit's rescaled_masked_tensor on the same mask (float32 for half, as
    # mergekit's work dtype); the l1 norms are summed without a temporary, so to rounding there.
    work = torch.float32 if dtype == torch.float16 else dtype
    expected = mk.rescaled_masked_tensor(x.to(work), keep.to(work), mk_norm(norm)).to(dtype)
    if norm == "l1":
        eps = torch.finfo(dtype).eps
        assert torch.allclose(out, expected, rtol=4 * eps, atol=0) and out.dtype == dtype
        assert not torch.allclose(out, x * keep)  # the rescale did act
    else:
        assert same(out, expected)


def test_della_layouts():
    # 1-D: one row; 3-D: rows along dim 1 (mergekit's argsort(dim=1)); 0-d and rows of one
    # element: probability `density`; empty: empty.
    v = torch.randn(50)
    assert torch.equal(ds.della_magprune(v, 0.5, 0.2, seed=1) != 0,
                       magnitude_rank_mask(v.reshape(1, -1), 0.3, 0.7, seed=1).reshape(-1))
    t = torch.randn(3, 20, 4)
    moved = t.movedim(1, -1).reshape(-1, 20)
    expected = magnitude_rank_mask(moved, 0.3, 0.7, seed=2).reshape(3, 4, 20).movedim(-1, 1)
    assert torch.equal(ds.della_magprune(t, 0.5, 0.2, seed=2) != 0, expected)
    p = ds.della_keep_probability(t, 0.5, 0.2)
    assert torch.allclose(p.movedim(1, -1).reshape(-1, 20), mk_keep_probability(moved, 0.5, 0.2))
    column = torch.randn(20000, 1) + 10
    kept = int((ds.della_magprune(column, 0.3, 0.2, seed=3) != 0).sum())
    assert abs(_z(torch.tensor(float(kept)), 20000, torch.tensor(0.3))) < 5
    assert ds.della_magprune(torch.tensor(2.0), 0.5, 0.2, seed=1).shape == ()
    assert ds.della_magprune(torch.randn(0, 4), 0.5, 0.2, seed=1).shape == (0, 4)
    assert ds.della_magprune(torch.randn(4, 0), 0.5, 0.2, seed=1).shape == (4, 0)
    x = torch.randn(5, 6)
    assert ds.della_magprune(x, 1.0, 0.2) is x
    assert torch.equal(ds.della_magprune(x, 0.0, 0.2), torch.zeros_like(x))


@pytest.mark.parametrize("inverse_p", [False, True])
def test_della_gradient_is_the_mask(inverse_p):
    # mergekit's della multiplies by its mask: d out / d tensor = mask (here mask / p with the
    # authors' rescale). Magnitudes far apart, so gradcheck's steps keep every rank.
    x, _ = _permuted_rows(4, 9, seed=8)
    a = x.clone().requires_grad_()
    out = ds.della_magprune(a, 0.5, 0.2, seed=4, inverse_p=inverse_p)
    (g,) = torch.autograd.grad(out.sum(), a)
    keep = (out != 0).double()
    scale = 1 / ds.della_keep_probability(x, 0.5, 0.2) if inverse_p else 1.0
    assert torch.allclose(g, keep * scale, rtol=1e-12)
    torch.autograd.gradcheck(lambda t: ds.della_magprune(t, 0.5, 0.2, seed=4, inverse_p=inverse_p), (a,))
    torch.autograd.gradcheck(lambda t: ds.della_magprune(t, 0.5, 0.2, rescale_norm="l2", seed=4), (a,))
    # mergekit's gradient is its own mask as well.
    (gm,) = torch.autograd.grad(mk.della_magprune(a.float(), 0.5, 0.2).sum(), a)
    assert set(gm.unique().tolist()) <= {0.0, 1.0}


def test_della_errors():
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="epsilon"):
        ds.della_magprune(x, 0.5, 0.5)
    with pytest.raises(ValueError, match="epsilon"):
        ds.della_keep_probability(x, 0.9, 0.15)
    with pytest.raises(ValueError, match="inverse_p"):
        ds.della_magprune(x, 0.5, 0.1, rescale_norm="l1", inverse_p=True)
    with pytest.raises(TypeError, match="inverse_p"):
        ds.della_magprune(x, 0.5, 0.1, inverse_p=1)
    with pytest.raises(TypeError, match="seed"):
        ds.della_magprune(x, 0.5, 0.1, seed=1.5)
    with pytest.raises(TypeError, match="epsilon"):
        ds.della_magprune(x, 0.5, None)
    y = x.clone()
    y[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ds.della_magprune(y, 0.5, 0.1, seed=1)
