"""DPPA as its authors wrote it (the defaults): hand-worked examples of each rule (global
normalization, the threshold cut with its ties, max-magnitude combination, max(alpha) outside the
partitions) and equality with a twin of their code (python_tests/dppa_twin.py)."""

from __future__ import annotations

import pytest
import torch

from darex_ext.algorithms import (
    amplify,
    amplify_tensor,
    dppa_densities,
    dppa_keep_mask,
    dppa_prune_,
    dynamic_prune_,
    partitions,
)
from darex_ext.algorithms.dppa import wide_drop_rate

from conftest import randn
from dppa_twin import authors_densities, authors_dp, authors_enhance, authors_prune
from test_dppa import A, B, C, D_, E, F, _hand_example


def test_global_normalization_of_the_hand_example():
    deltas = _hand_example()
    res = dppa_densities(deltas, 0.8)
    assert res.normalize == "global"
    # Blocks as in test_dppa: D = [20/3, 10/3, 0] % -> rho = [0.28, 0.20, 0.12].
    assert res.rho == pytest.approx({"model.layers.0": 0.28, "model.layers.1": 0.2, "model.layers.2": 0.12})
    # O over the whole model: [10, 0, 5, 0, 0, 0] %, mean 2.5 -> o = [4, 0, 2, 0, 0, 0]; numel
    # [20, 10, 20, 10, 20, 10] -> center (80 + 40) / 90 = 4/3; deviations [8/3, -4/3, 2/3, -4/3,
    # -4/3, -4/3], largest 8/3 -> r = 0.08 * [1, -1/2, 1/4, -1/2, -1/2, -1/2].
    assert res.r == pytest.approx({A: 0.08, B: -0.04, C: 0.02, D_: -0.04, E: -0.04, F: -0.04})
    assert res.density == pytest.approx({A: 0.36, B: 0.24, C: 0.22, D_: 0.16, E: 0.08, F: 0.08})
    # Per block (darex's variant) the same statistics give other densities.
    block = dppa_densities(deltas, 0.8, normalize="block")
    assert block.density == pytest.approx({A: 0.32, B: 0.20, C: 0.24, D_: 0.12, E: 0.12, F: 0.12})
    # The global center keeps the model's kept count (not each block's) at (1 - p) * numel.
    kept = sum(res.density[n] * deltas[n].numel() for n in res.density)
    assert kept == pytest.approx(0.2 * 90)
    block_0 = res.density[A] * 20 + res.density[B] * 10
    assert block_0 != pytest.approx(0.28 * 30)


def test_densities_at_another_rate_shift_by_the_rate_gap():
    res = dppa_densities(_hand_example(), 0.8)
    wide = res.at(0.7)
    assert wide.p == 0.7 and wide.r == res.r
    assert wide.density == pytest.approx({n: d + 0.1 for n, d in res.density.items()})
    assert wide_drop_rate(0.8, 0.1) == 0.7 and wide_drop_rate(0.9, 0.1) == 0.8  # the literals
    with pytest.raises(ValueError, match="p"):
        res.at(1.0)


def test_threshold_cut_drops_every_tie_of_the_cut():
    x = torch.tensor([0.5, -3.0, 2.0, 2.0, -2.0, 0.1, 4.0, 2.0])
    # |x| sorted: 0.1 0.5 2 2 2 2 3 4. Drop rate 0.5: int(8 * 0.5) = 4 -> t = 2 -> every |x| <= 2
    # goes: 2 kept (the top-k cut would keep 4, two of the 2s among them).
    assert dppa_keep_mask(x, 0.5).tolist() == [False, True, False, False, False, False, True, False]
    assert int(dppa_keep_mask(x, 0.5, cut="topk").sum()) == 4
    # 0.3: int(2.4) = 2 -> t = 2 again; 0.2: int(1.6) = 1 -> t = 0.5 -> the 2s stay.
    assert dppa_keep_mask(x, 0.3).tolist() == dppa_keep_mask(x, 0.5).tolist()
    assert dppa_keep_mask(x, 0.2).tolist() == [False, True, True, True, True, False, True, True]
    # 0.1: int(0.8) = 0 -> t = 0.1, the smallest goes even though round(0.8) = 1 would too.
    assert dppa_keep_mask(x, 0.1).tolist() == [True, True, True, True, True, False, True, True]
    assert bool(dppa_keep_mask(x, 0.0).all())  # a density of 1 keeps everything
    assert not bool(dppa_keep_mask(x, 1.0).any())
    assert dppa_keep_mask(torch.empty(0), 0.5).shape == (0,)
    pruned = dppa_prune_(x.clone(), 0.5)
    assert pruned.tolist() == [0.0, -3.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5, 0.8, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (64, 33)])
def test_threshold_cut_equals_the_authors_sort(rate, shape, dtype):
    # Rounded to a coarse grid so that bf16 / fp16 / fp32 all have many ties at the cut.
    x = (randn(*shape, dtype=torch.float32) * 4).round().div(4).to(dtype)
    got = x.clone()
    dppa_prune_(got, rate)
    want = authors_prune(x, rate) if rate > 0 else x
    assert torch.equal(got, want)
    assert torch.equal(torch.where(dppa_keep_mask(x, rate), x, 0), want)


def test_max_magnitude_combination_by_hand(dtype):
    d = torch.tensor([4.0, -3.0, 2.0, 1.0, 0.5], dtype=dtype)
    hi = torch.tensor([True, True, False, False, False])
    wide = torch.tensor([True, True, True, False, False])
    case = lambda a_hi, a_lo: amplify_tensor(d, hi, wide, a_hi, a_lo).tolist()  # noqa: E731
    # P_hi gets the larger-magnitude factor, P_lo alpha_lo, the rest 0.
    assert case(1.5, 1.25) == [6.0, -4.5, 2.5, 0.0, 0.0]
    assert case(0.5, 1.25) == [5.0, -3.75, 2.5, 0.0, 0.0]  # alpha_lo is the larger: P_hi gets it
    assert case(1.5, 0.0) == [6.0, -4.5, 0.0, 0.0, 0.0]
    assert case(-2.0, 1.0) == [-8.0, 6.0, 2.0, 0.0, 0.0]  # by magnitude, sign and all
    assert case(-1.0, 1.0) == [4.0, -3.0, 2.0, 0.0, 0.0]  # a tie keeps alpha_lo's product
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert amplify_tensor(d, hi, wide, 1.5, 1.25).dtype == acc  # not rounded: a merge rounds once
    # darex's sum variant: alpha_hi on P_hi whatever alpha_lo is.
    assert amplify_tensor(d, hi, wide, 0.5, 1.25, combine="sum").tolist() == [2.0, -1.5, 2.5, 0.0, 0.0]


def test_deltas_outside_the_partitions_get_max_alpha():
    deltas = _hand_example()
    deltas["model.norm.weight"] = torch.tensor([0.5, -0.25, 0.0])
    parts = partitions(deltas, dppa_densities(deltas, 0.8))
    out = amplify(deltas, parts, 1.5, 1.25)
    assert set(out) == set(deltas)
    assert out["model.norm.weight"].tolist() == [0.75, -0.375, 0.0]
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert torch.equal(out[name], deltas[name] * 1.5)
    out = amplify(deltas, parts, 0.5, 1.25)
    assert out["model.norm.weight"].tolist() == [0.625, -0.3125, 0.0]
    # darex's sum variant leaves them as they are.
    out = amplify(deltas, parts, 1.5, 1.25, combine="sum")
    assert torch.equal(out["model.norm.weight"], deltas["model.norm.weight"])


def _llama_like(seed: int, dtype=torch.float32) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Three layers of Linear weight deltas in module order (heavy-tailed, so the outlier
    counts differ between modules) and a full delta state dict around them."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q_proj": (24, 24), "self_attn.k_proj": (12, 24), "self_attn.v_proj": (12, 24),
              "self_attn.o_proj": (24, 24), "mlp.gate_proj": (40, 24), "mlp.up_proj": (40, 24),
              "mlp.down_proj": (24, 40)}

    def draw(shape, heavy, share=0.97):
        x = torch.randn(shape, generator=g)
        return (x * (1 + heavy * (torch.rand(shape, generator=g) > share))).to(dtype)

    # Mild, varied outliers everywhere and one module full of them: its block and itself are the
    # largest deviations, so every density at p = 0.9 stays positive, as in the authors' runs.
    layers = [{f"model.layers.{i}.{m}.weight": draw(s, 2 + (i + j) % 3) for j, (m, s) in enumerate(shapes.items())}
              for i in range(3)]
    layers[1]["model.layers.1.mlp.up_proj.weight"] = draw(shapes["mlp.up_proj"], 12, share=0.9)
    full = {"model.embed_tokens.weight": draw((50, 24), 0)}
    for i, layer in enumerate(layers):
        full[f"model.layers.{i}.input_layernorm.weight"] = draw((24,), 0)
        full.update(layer)
        full[f"model.layers.{i}.post_attention_layernorm.weight"] = draw((24,), 0)
    full["model.norm.weight"] = draw((24,), 0)
    full["lm_head.weight"] = draw((50, 24), 0)
    return layers, full


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [0.9, 0.8, 0.5])
def test_densities_and_dp_equal_the_authors_code(seed, p):
    layers, full = _llama_like(seed)
    res = dppa_densities(full, p)
    want = authors_densities(layers, p)
    assert res.unclipped == want  # bit for bit: the same float64 steps
    assert len(set(want.values())) > 3
    pruned = {k: v.clone() for k, v in full.items()}
    dynamic_prune_(pruned, p)
    authors, _ = authors_dp(layers, p)
    for name, t in full.items():
        assert torch.equal(pruned[name], authors.get(name, t)), name


@pytest.mark.parametrize("alphas", [(1.8, 0.0), (2.1, 1.3), (1.9, 1.0), (0.7, 1.2)])
@pytest.mark.parametrize("seed", [0, 3])
def test_dppa_equals_the_authors_pipeline(alphas, seed):
    # run.sh: DP at 0.9 and 0.8, enhance_offset.py with the two factors (the search's points).
    layers, full = _llama_like(seed)
    a_hi, a_lo = alphas
    nine, _ = authors_dp(layers, 0.9)
    eight, _ = authors_dp(layers, 0.8)
    want = authors_enhance({k: eight.get(k, v) for k, v in full.items()}, {k: nine.get(k, v) for k, v in full.items()},
                           a_lo, a_hi)
    parts = partitions(full, dppa_densities(full, 0.9), width=0.1)
    got = amplify(full, parts, a_hi, a_lo)
    for name in full:
        assert torch.equal(got[name], want[name]), name


def test_bf16_deltas_amplify_like_the_authors_float32_models():
    # The authors load the pruned deltas as float32 for enhance_offset.py: the products are
    # float32 products of the bf16 values; amplify_tensor returns exactly those.
    layers, full = _llama_like(5, dtype=torch.bfloat16)
    parts = partitions(full, dppa_densities(full, 0.9))
    for name in [*layers[1], "lm_head.weight"]:
        d = full[name]
        hi = parts.hi.get(name)
        wide = None if hi is None else hi | parts.lo[name]
        got = amplify_tensor(d, hi, wide, 1.9, 1.1)
        nine = d.float() if hi is None else torch.where(hi, d, 0).float()
        eight = d.float() if hi is None else torch.where(wide, d, 0).float()
        want = authors_enhance({name: eight}, {name: nine}, 1.1, 1.9)[name]
        assert got.dtype == torch.float32 and torch.equal(got, want), name


def _bad_calls():
    x = torch.ones(3, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    deltas = _hand_example()
    return [
        ("drop_rate", lambda: dppa_keep_mask(x, 1.5), ValueError, "drop_rate"),
        ("drop_rate nan", lambda: dppa_keep_mask(x, float("nan")), ValueError, "drop_rate"),
        ("drop_rate type", lambda: dppa_keep_mask(x, "0.5"), TypeError, "drop_rate"),
        ("cut", lambda: dppa_keep_mask(x, 0.5, cut="sort"), ValueError, "cut"),
        ("delta", lambda: dppa_keep_mask([1.0], 0.5), TypeError, "delta"),
        ("nan delta", lambda: dppa_keep_mask(torch.tensor([1.0, float("nan")]), 0.5), ValueError, "NaN"),
        ("grad", lambda: dppa_prune_(torch.ones(3, requires_grad=True), 0.5), ValueError, "requires grad"),
        ("combine", lambda: amplify_tensor(x, mask, mask, 1.8, 0.0, combine="mean"), ValueError, "combine"),
        ("masks", lambda: amplify_tensor(x, mask, None, 1.8, 0.0), ValueError, "wide"),
        ("alpha nan", lambda: amplify_tensor(x, None, None, float("nan"), 0.0), ValueError, "alpha_hi"),
        ("alpha type", lambda: amplify_tensor(x, None, None, 1.8, None), TypeError, "alpha_lo"),
        ("normalize", lambda: dppa_densities(deltas, 0.5, normalize="layer"), ValueError, "normalize"),
        ("partitions cut", lambda: partitions(deltas, {A: 0.5}, cut="x"), ValueError, "cut"),
        ("partitions densities", lambda: partitions(deltas, [0.5]), TypeError, "densities"),
        ("amplify combine", lambda: amplify(deltas, partitions(deltas, {A: 0.5}), 1.8, 0.0, combine="x"),
         ValueError, "combine"),
    ]


@pytest.mark.parametrize("name,call,exc,arg", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_arguments(name, call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


def test_equal_statistics_are_no_evidence():
    # The same heavy-tailed matrix everywhere: every D and every O is equal (and nonzero). Their
    # mean can miss them by an ulp, which the authors' normalization would blow up to +-lambda;
    # here nothing moves.
    g = torch.Generator().manual_seed(4)
    w = torch.randn(10, 10, generator=g) * (1 + 9 * (torch.rand(10, 10, generator=g) > 0.9))
    deltas = {f"model.layers.{i}.m{j}.weight": w.clone() for i in range(3) for j in range(7)}
    res = dppa_densities(deltas, 0.9)
    assert set(res.O.values()) != {0.0} and len(set(res.O.values())) == 1
    assert set(res.density.values()) == {1.0 - 0.9}
