"""The mask spec: Philox known answers, CPU kernels vs the pure-torch reference, statistics."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import darex_ext
from darex_ext import reference as ref
from darex_ext.seeds import fnv1a64, splitmix64, tensor_seed

# Random123 kat_vectors for philox4x32_10: (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_reference_philox_known_answers(ctr, key, expected):
    out = ref.philox4x32_10(tuple(torch.tensor([c]) for c in ctr), key)
    assert tuple(int(o) for o in out) == expected


def test_seed_hashes_known_answers():
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert tensor_seed(0, "a") == splitmix64(0xAF63DC4C8601EC8C)
    assert tensor_seed(7, "layer.0.weight") != tensor_seed(7, "layer.1.weight")


def test_mask_words_block_layout():
    # Element i uses word i % 4 of block i // 4, key (seed lo, seed hi).
    seed = 0x0123456789ABCDEF
    u = ref.mask_words(8, seed)
    blk = ref.philox4x32_10(tuple(torch.tensor([c]) for c in (1, 0, 0, 0)), (0x89ABCDEF, 0x01234567))
    assert [int(v) for v in u[4:8]] == [int(b) for b in blk]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.99, 1 - 2**-33])
def test_drop_threshold(p):
    assert ref.drop_threshold(p) == min(math.floor(p * 2**32), 2**32 - 1)


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 61, 2**34 + 3])
@pytest.mark.parametrize("numel", [0, 1, 3, 31, 33, 64, 1000, 5003])
def test_cpu_mask_equals_reference(seed, offset, numel):
    p = 0.37
    got = darex_ext.keep_mask((numel,), p, seed=seed, offset=offset)
    assert torch.equal(got, ref.keep_mask((numel,), p, seed, offset=offset))


def test_block_counter_carries_into_high_word():
    # Blocks around 2^32 exercise the high counter word (lanes of one vector straddle it).
    offset = 4 * (2**32 - 5)
    got = darex_ext.keep_mask((200,), 0.5, seed=99, offset=offset)
    assert torch.equal(got, ref.keep_mask((200,), 0.5, 99, offset=offset))


def test_multichunk_mask_equals_reference():
    # Larger than one word buffer and one parallel task, odd length.
    n = (1 << 17) + 7
    got = darex_ext.keep_mask((n,), 0.8, seed=5)
    assert torch.equal(got, ref.keep_mask((n,), 0.8, 5))


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_every_isa_path_gives_the_same_mask(isa):
    code = (
        "import torch, darex_ext;"
        "m = darex_ext.keep_mask((100003,), 0.6, seed=2**40 + 3, offset=5);"
        "x = torch.linspace(-3, 3, 4099, dtype=torch.bfloat16);"
        "darex_ext.prune_(x, 0.3, 0.55, seed=4);"
        "print(darex_ext.build_info()['cpu_isa'], int(m.sum()), hash(tuple(m.nonzero().flatten()[:50].tolist())),"
        " float(x.double().sum()))"
    )
    env = dict(os.environ, DAREX_CPU_ISA=isa)
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    forced_isa, *forced_vals = forced.stdout.split()
    _, *default_vals = default.stdout.split()
    assert forced_isa in (isa, "scalar")  # a CPU without AVX2 falls back to scalar
    assert forced_vals == default_vals


def test_mask_independent_of_thread_count():
    n = 3 * (1 << 16) + 11
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = darex_ext.keep_mask((n,), 0.9, seed=8)
        torch.set_num_threads(max(2, before))
        many = darex_ext.keep_mask((n,), 0.9, seed=8)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_streaming_offsets_reassemble_the_whole_mask():
    whole = darex_ext.keep_mask((10007,), 0.7, seed=3)
    cuts = [0, 1, 5, 4096, 4099, 9000, 10007]
    parts = [darex_ext.keep_mask((b - a,), 0.7, seed=3, offset=a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(parts), whole)


# --- statistics: the mask must behave like i.i.d. Bernoulli(1 - p) -------------------------

def _z(count: float, n: int, prob: float) -> float:
    return (count - n * prob) / math.sqrt(n * prob * (1 - prob))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", [0, 17, 2**63 + 1])
def test_keep_rate_is_binomial(p, seed):
    n = 1 << 20
    kept = int(darex_ext.keep_mask((n,), p, seed=seed).sum())
    assert abs(_z(kept, n, 1 - p)) < 5.0


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5, 8, 1024])
def test_neighbours_are_independent(lag):
    # P(keep_i and keep_{i+lag}) must be (1-p)^2: lags inside a Philox block, across blocks,
    # and across vector-register widths.
    p, n = 0.5, 1 << 21
    m = darex_ext.keep_mask((n,), p, seed=11)
    both = int((m[:-lag] & m[lag:]).sum())
    assert abs(_z(both, n - lag, (1 - p) ** 2)) < 5.0


def test_words_within_a_block_are_independent():
    m = darex_ext.keep_mask((1 << 20, 4), 0.5, seed=12)  # column w = word w of each block
    for a in range(4):
        for b in range(a + 1, 4):
            both = int((m[:, a] & m[:, b]).sum())
            assert abs(_z(both, m.shape[0], 0.25)) < 5.0


def test_rows_are_independent():
    # Row keep counts of a 2-D mask: dispersion of a binomial (chi-square over rows), and no
    # correlation between consecutive rows' counts.
    rows, cols, p = 2048, 1000, 0.9
    m = darex_ext.keep_mask((rows, cols), p, seed=13)
    counts = m.sum(dim=1).double()
    mean, var = cols * (1 - p), cols * p * (1 - p)
    chi2 = float(((counts - mean) ** 2 / var).sum())
    assert abs(chi2 - rows) / math.sqrt(2 * rows) < 5.0
    c = counts - counts.mean()
    corr = float((c[:-1] * c[1:]).sum() / (c * c).sum())
    assert abs(corr) * math.sqrt(rows) < 5.0


def test_same_seed_replays_different_seed_differs():
    a = darex_ext.keep_mask((4096,), 0.5, seed=21)
    assert torch.equal(a, darex_ext.keep_mask((4096,), 0.5, seed=21))
    b = darex_ext.keep_mask((4096,), 0.5, seed=22)
    assert abs(_z(int((a == b).sum()), 4096, 0.5)) < 5.0  # two seeds agree only by chance
    c = darex_ext.keep_mask((4096,), 0.5, seed=21 + 2**32)  # high key word matters too
    assert abs(_z(int((a == c).sum()), 4096, 0.5)) < 5.0


def test_generator_seed_is_reproducible():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(darex_ext.keep_mask((999,), 0.5, seed=g1), darex_ext.keep_mask((999,), 0.5, seed=g2))


def test_p_zero_keeps_everything_and_mask_like_tensor():
    x = torch.randn(3, 5, 7)
    m = darex_ext.keep_mask(x, 0.0, seed=1)
    assert m.shape == x.shape and m.dtype == torch.bool and bool(m.all())


def test_known_answers_of_the_spec_doc():
    # docs/mask_spec.md's table; the Philox and seed answers are checked above.
    assert ref.drop_threshold(0.5) == 2147483648
    assert ref.drop_threshold(0.99) == 4252017623
    assert ref.drop_threshold(0.0) == 0
