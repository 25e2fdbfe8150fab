"""Mask spec v2 ("skip", docs/mask_spec.md "Version 2"): the twin's known answers, the twin
against a literal walk written from the spec, pieces with offsets; the kernels against the twin
and the statistical law are in test_mask_v2.py."""

from __future__ import annotations

import pytest
import torch

from darex_ext.reference.mask import philox4x32_10
from darex_ext.reference.skip_mask import STRIPE, skip_keep_mask, skip_rare_positions, skip_table


def test_table_known_answers():
    t = skip_table(0.99)
    assert [t[0], t[1], t[2], t[99], t[4095]] == [42949672, 85469849, 127564823, 2722870360, 4294967295]
    assert skip_table(0.5)[:3] == [2147483648, 3221225472, 3758096384]
    assert skip_table(0.3)[:2] == [1288490188, 2190433320]
    tiny = skip_table(1e-6)
    assert (tiny[0], tiny[4095]) == (4294, 17556215)
    assert skip_table(0.0) == [0] * STRIPE
    assert skip_table(0.25) == skip_table(0.75)


def test_positions_known_answers():
    s0 = skip_rare_positions(0, 0.99, 0, STRIPE).tolist()
    assert s0[:8] == [19, 27, 469, 570, 774, 856, 1137, 1196] and len(s0) == 36
    s5 = skip_rare_positions(0xDEADBEEFCAFEF00D, 0.99, 5 * STRIPE, STRIPE).tolist()
    assert s5[:4] == [20596, 20672, 20703, 20713]
    assert skip_rare_positions(1, 0.3, 0, STRIPE).tolist()[:8] == [0, 1, 2, 3, 5, 7, 9, 10]


def _literal_walk(seed: int, p: float, stripe: int) -> list[int]:
    """The spec's walk, one draw at a time, with a linear search of the table."""
    table = skip_table(p)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    out, pos, d = [], 0, 0
    while pos < STRIPE:
        ctr = tuple(torch.tensor([v]) for v in (stripe & 0xFFFFFFFF, stripe >> 32, d // 4, 1))
        w = int(philox4x32_10(ctr, key)[d % 4])
        d += 1
        left = STRIPE - pos
        g = next((g for g in range(left) if w < table[g]), left)
        if g == left:
            break
        out.append(stripe * STRIPE + pos + g)
        pos += g + 1
    return out


@pytest.mark.parametrize("seed,p,stripe", [(0, 0.99, 0), (3, 0.9, 7), (2**64 - 1, 0.6, 2**33 + 1),
                                           (5, 0.05, 1), (9, 0.999, 2)])
def test_twin_is_the_literal_walk(seed, p, stripe):
    got = skip_rare_positions(seed, p, stripe * STRIPE, STRIPE).tolist()
    assert got == _literal_walk(seed, p, stripe)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.93])
def test_twin_pieces_with_offsets_are_the_whole(p):
    whole = skip_keep_mask((3 * STRIPE + 77,), p, 42, offset=1000)
    cuts = [0, 1, 3000, 3096, 4097, 9000, 3 * STRIPE + 77]
    pieces = [skip_keep_mask((b - a,), p, 42, offset=1000 + a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(pieces), whole)


def test_twin_extreme_rates():
    assert skip_keep_mask((10000,), 0.0, 1).all()
    assert not skip_keep_mask((10000,), 1 - 1e-12, 1).any()
