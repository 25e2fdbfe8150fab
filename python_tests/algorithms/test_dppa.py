"""DPPA, darex's own variants (normalize="block", cut="topk", combine="sum", search="coordinate")
and what both variants share: densities against a hand-computed example, pruning counts,
partitions, the alpha search. The authors' rules: test_dppa_reference.py, test_dppa_search.py."""

from __future__ import annotations

import math

import pytest
import torch

from darex_ext import reference as ref
from darex_ext.algorithms import (
    DPPADensities,
    amplify,
    dppa_densities,
    dynamic_prune_,
    group_by_block,
    partitions,
    search_amplification,
)

from conftest import randn


def _signs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # +-1, never 0


def _hand_example() -> dict[str, torch.Tensor]:
    # Three blocks of two matrices: a/c/e are 4x5, b/d/f are 2x5. Every entry is +-1 except
    # a[3] = 50, a[11] = -50 and c[7] = 40 (flat indices), so outlier counts are evident.
    a = _signs(20, 1)
    a[3], a[11] = 50.0, -50.0
    c = _signs(20, 3)
    c[7] = 40.0
    return {
        "model.embed_tokens.weight": randn(7, 5),  # no block: never touched
        "model.layers.0.self_attn.q_proj.weight": a.reshape(4, 5),
        "model.layers.0.self_attn.q_proj.bias": randn(4),  # 1-D: not grouped
        "model.layers.0.mlp.up_proj.weight": _signs(10, 2).reshape(2, 5),
        "model.layers.1.self_attn.q_proj.weight": c.reshape(4, 5),
        "model.layers.1.mlp.up_proj.weight": _signs(10, 4).reshape(2, 5),
        "model.layers.2.self_attn.q_proj.weight": _signs(20, 5).reshape(4, 5),
        "model.layers.2.mlp.up_proj.weight": _signs(10, 6).reshape(2, 5),
    }


A, B = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"
C, D_ = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"
E, F = "model.layers.2.self_attn.q_proj.weight", "model.layers.2.mlp.up_proj.weight"


def test_densities_of_a_hand_computed_example():
    deltas = _hand_example()
    res = dppa_densities(deltas, 0.8, normalize="block")  # keep 1 - s = 0.2 on average, lambda = 0.08
    # D_l: pooled |delta| of the block's matrices, percent above 3x the pooled mean.
    #   block 0: 28 ones + two 50s: mean 128/30 = 4.27, 3x = 12.8 -> 2 of 30 -> 6.667 %
    #   block 1: 29 ones + one 40:  mean 69/30 = 2.3,   3x = 6.9  -> 1 of 30 -> 3.333 %
    #   block 2: all ones: mean 1, 3x = 3 -> none -> 0 %
    assert res.D == pytest.approx({"model.layers.0": 200 / 30, "model.layers.1": 100 / 30, "model.layers.2": 0.0})
    # mean D = 10/3; deviations +10/3, 0, -10/3; the largest is 10/3 -> moves of +-lambda.
    assert res.rho == pytest.approx({"model.layers.0": 0.28, "model.layers.1": 0.2, "model.layers.2": 0.12})
    # O_m: percent above 5x the module mean.
    #   a: mean 118/20 = 5.9, 5x = 29.5 -> 2 of 20 = 10 %;  c: mean 59/20 = 2.95, 5x = 14.75 -> 1 of 20 = 5 %
    #   b, d, e, f: all ones -> 0 %
    assert res.O == pytest.approx({A: 10.0, B: 0.0, C: 5.0, D_: 0.0, E: 0.0, F: 0.0})
    # Block 0: o = O / mean(O) = [2, 0]; parameter-weighted center (20*2 + 10*0)/30 = 4/3;
    # deviations [2/3, -4/3], largest 4/3 -> r = 0.08 * [0.5, -1] = [0.04, -0.08]. Block 1 has
    # the same o, block 2 has mean O = 0 -> r = 0.
    assert res.r == pytest.approx({A: 0.04, B: -0.08, C: 0.04, D_: -0.08, E: 0.0, F: 0.0})
    expected = {A: 0.28 + 0.04, B: 0.28 - 0.08, C: 0.2 + 0.04, D_: 0.2 - 0.08, E: 0.12, F: 0.12}
    assert res.density == pytest.approx(expected)
    assert res.unclipped == pytest.approx(expected)
    assert res.block_of[A] == "model.layers.0" and res.block_of[F] == "model.layers.2"
    assert "model.embed_tokens.weight" not in res.density
    assert "model.layers.0.self_attn.q_proj.bias" not in res.density
    # The parameter weighting keeps every block's kept count at rho_l * numel.
    for block, rho in res.rho.items():
        members = [n for n, b in res.block_of.items() if b == block]
        kept = sum(res.density[n] * deltas[n].numel() for n in members)
        assert kept == pytest.approx(rho * sum(deltas[n].numel() for n in members))
    assert res.drop_rates()[A] == pytest.approx(0.68)


def test_dynamic_prune_keeps_the_computed_counts_by_magnitude():
    deltas = _hand_example()
    before = {k: v.clone() for k, v in deltas.items()}
    res = dynamic_prune_(deltas, 0.8, normalize="block", cut="topk")
    # kept = n - round((1 - density) * n), halves to even: a 20 - round(13.6) = 6, b 10 - 8 = 2,
    # c 20 - round(15.2) = 5, d 10 - round(8.8) = 1, e 20 - round(17.6) = 2, f 1.
    counts = {A: 6, B: 2, C: 5, D_: 1, E: 2, F: 1}
    for name, k in counts.items():
        kept = deltas[name].reshape(-1) != 0
        assert int(kept.sum()) == k, name
        # The outliers survive; the +-1 ties go to the lowest flat indices.
        orig = before[name].reshape(-1)
        big = (orig.abs() > 1).nonzero().flatten().tolist()
        ones = [i for i in range(orig.numel()) if i not in big][: k - len(big)]
        assert kept.nonzero().flatten().tolist() == sorted(big + ones), name
        assert torch.equal(deltas[name].reshape(-1)[kept], orig[kept])  # no rescaling
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert torch.equal(deltas[name], before[name])
    assert res.density[A] == pytest.approx(0.32)


def test_explicit_blocks_equal_the_name_grouping():
    deltas = _hand_example()
    auto = dppa_densities(deltas, 0.8)
    explicit = dppa_densities(deltas, 0.8, blocks={"x": [A, B], "y": [C, D_], "z": [E, F]})
    assert explicit.density == pytest.approx(auto.density)
    assert explicit.D == pytest.approx({"x": auto.D["model.layers.0"], "y": auto.D["model.layers.1"],
                                        "z": auto.D["model.layers.2"]})
    # Another grouping changes the block statistics: one block holds everything -> rho = 1 - p.
    one = dppa_densities(deltas, 0.8, blocks={"all": [A, B, C, D_, E, F]})
    assert one.rho == pytest.approx({"all": 0.2})


def test_densities_clip_to_the_unit_interval():
    deltas = _hand_example()
    high = dppa_densities(deltas, 0.1, normalize="block")  # rho_0 = 0.98, a: 0.98 + 0.04 = 1.02 -> 1
    assert high.unclipped[A] == pytest.approx(1.02)
    assert high.density[A] == 1.0
    low = dppa_densities(deltas, 0.95, min_density=0.01, normalize="block")  # rho_2 = 0.05 - 0.08 < 0
    assert low.unclipped[E] == pytest.approx(-0.03)
    assert low.density[E] == 0.01
    assert all(0.0 < d <= 1.0 for d in low.density.values())


def test_no_evidence_means_the_target_density():
    # Equal statistics everywhere: every deviation has a zero denominator and stays 0.
    deltas = {f"encoder.layer.{i}.dense.weight": torch.ones(3, 4) for i in range(3)}
    res = dppa_densities(deltas, 0.7)
    assert res.density == pytest.approx({n: 0.3 for n in deltas})


def test_lambda_scales_the_moves():
    deltas = _hand_example()
    res = dppa_densities(deltas, 0.8, lam=0.02, normalize="block")
    assert res.rho == pytest.approx({"model.layers.0": 0.22, "model.layers.1": 0.2, "model.layers.2": 0.18})
    assert res.density[B] == pytest.approx(0.22 - 0.02)


def test_half_precision_statistics_match_float32():
    deltas = _hand_example()
    half = {k: v.half() for k, v in deltas.items()}
    assert dppa_densities(half, 0.8).density == pytest.approx(dppa_densities(deltas, 0.8).density)


def test_group_by_block_names():
    t2, t1 = torch.zeros(2, 2), torch.zeros(2)
    names = {
        "model.layers.0.self_attn.q_proj.weight": t2, "model.layers.0.self_attn.q_proj.bias": t1,
        "model.layers.12.mlp.down_proj.weight": t2, "encoder.layer.3.attention.self.query.weight": t2,
        "transformer.h.11.attn.c_attn.weight": t2, "encoder.block.0.layer.1.DenseReluDense.wi.weight": t2,
        "model.embed_tokens.weight": t2, "lm_head.weight": t2, "model.layers.x.weight": t2,
    }
    assert group_by_block(names) == {
        "model.layers.0": ["model.layers.0.self_attn.q_proj.weight"],
        "model.layers.12": ["model.layers.12.mlp.down_proj.weight"],
        "encoder.layer.3": ["encoder.layer.3.attention.self.query.weight"],
        "transformer.h.11": ["transformer.h.11.attn.c_attn.weight"],
        "encoder.block.0": ["encoder.block.0.layer.1.DenseReluDense.wi.weight"],
    }
    assert group_by_block(names, r"^(model\.layers\.\d+)\.", min_dim=1) == {
        "model.layers.0": ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"],
        "model.layers.12": ["model.layers.12.mlp.down_proj.weight"],
    }


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.93, 1.0])
def test_partitions_are_disjoint_nested_top_k(density, dtype):
    x = randn(13, 17, dtype=dtype)
    n = x.numel()
    parts = partitions({"w": x}, {"w": density}, cut="topk")
    hi, lo = parts.hi["w"], parts.lo["w"]
    k_hi = n - round((1 - density) * n)
    k_wide = n - round((1 - min(1.0, density + 0.1)) * n)
    scores = x.abs()
    assert torch.equal(hi, ref.topk_mask(scores, k_hi))
    assert torch.equal(lo, ref.topk_mask(scores, k_wide) & ~ref.topk_mask(scores, k_hi))
    assert not (hi & lo).any()
    assert int(hi.sum()) == k_hi and int(lo.sum()) == k_wide - k_hi
    if k_hi:
        assert scores[hi].min() >= scores[lo].max() if lo.any() else True
        assert parts.cut["w"] == float(scores[hi].min())
    else:
        assert parts.cut["w"] is None
    # P_hi is exactly what dynamic pruning (magnitude_prune_ at 1 - density) keeps.
    from darex_ext import magnitude_prune_
    assert torch.equal(magnitude_prune_(x.clone(), 1 - density) != 0, hi)


def test_partitions_follow_dppa_densities_and_amplify(dtype):
    deltas = {f"model.layers.{i}.fc.weight": randn(9, 11, dtype=dtype) for i in range(3)}
    deltas["model.layers.1.fc.weight"][0, :4] *= 20  # some outliers to move the densities
    dens = dppa_densities(deltas, 0.7, normalize="block")
    parts = partitions(deltas, dens, cut="topk")
    out = amplify(deltas, parts, 1.8, 0.3, combine="sum")
    for name, x in deltas.items():
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        expected = torch.zeros_like(x)
        expected[parts.hi[name]] = (x[parts.hi[name]].to(acc) * 1.8).to(dtype)
        expected[parts.lo[name]] = (x[parts.lo[name]].to(acc) * 0.3).to(dtype)
        assert torch.equal(out[name], expected)
        assert int(parts.hi[name].sum()) == x.numel() - round((1 - dens.density[name]) * x.numel())
    # alpha = (1, 0) is dynamic pruning itself.
    pruned = {k: v.clone() for k, v in deltas.items()}
    dynamic_prune_(pruned, 0.7, normalize="block", cut="topk")
    one_zero = amplify(deltas, parts, 1.0, 0.0, combine="sum")
    assert all(torch.equal(one_zero[k], pruned[k]) for k in deltas)


def test_search_finds_the_optimum_of_a_separable_quadratic():
    res = search_amplification(lambda a, b: -(a - 2.3) ** 2 - (b - 0.4) ** 2, search="coordinate")
    assert (res.alpha_hi, res.alpha_lo) == (2.3, 0.4)
    assert res.history[0][:2] == (1.8, 0.0)  # starts where the authors start
    assert res.score == pytest.approx(0.0, abs=1e-20)
    points = [(a, b) for a, b, _ in res.history]
    assert len(points) == len(set(points))  # nothing evaluated twice
    for a, b in points:  # every point is on the 0.1 grid from the start
        assert abs(a * 10 - round(a * 10)) < 1e-9 and abs(b * 10 - round(b * 10)) < 1e-9


def test_search_finds_the_optimum_of_a_coupled_function_below_the_start():
    def f(a, b):
        return -((a - 1.2) ** 2) - (b - 0.7) ** 2 - 0.6 * (a - 1.2) * (b - 0.7)

    res = search_amplification(f, search="coordinate")
    assert (res.alpha_hi, res.alpha_lo) == (1.2, 0.7)
    grid = [(round(i * 0.1, 12), round(j * 0.1, 12)) for i in range(0, 40) for j in range(0, 20)]
    assert res.score == pytest.approx(max(f(a, b) for a, b in grid))


def test_search_respects_bounds_budget_and_nan():
    res = search_amplification(lambda a, b: a + b, bounds_hi=(1.0, 2.2), bounds_lo=(0.0, 0.3), search="coordinate")
    assert (res.alpha_hi, res.alpha_lo) == (2.2, 0.3)
    calls = []

    def count(a, b):
        calls.append((a, b))
        return a
    res = search_amplification(count, max_evals=4, search="coordinate")
    assert len(calls) == 4 and len(res.history) == 4
    assert res.alpha_hi == pytest.approx(2.1)
    res = search_amplification(lambda a, b: math.nan if a > 1.85 else -abs(a - 1.5), search="coordinate")
    assert res.alpha_hi == pytest.approx(1.5)


def _bad_calls():
    deltas = _hand_example()
    return [
        ("p", lambda: dppa_densities(deltas, 1.0), ValueError, "p"),
        ("lam", lambda: dppa_densities(deltas, 0.5, lam=-0.1), ValueError, "lam"),
        ("block_outlier", lambda: dppa_densities(deltas, 0.5, block_outlier=0), ValueError, "block_outlier"),
        ("min_density", lambda: dppa_densities(deltas, 0.5, min_density=0.0), ValueError, "min_density"),
        ("deltas type", lambda: dppa_densities([torch.ones(2, 2)], 0.5), TypeError, "deltas"),
        ("deltas dtype", lambda: dppa_densities({"a": torch.ones(2, 2, dtype=torch.int32)}, 0.5), TypeError, "deltas"),
        ("no blocks", lambda: dppa_densities({"w": torch.ones(2, 2)}, 0.5), ValueError, "blocks"),
        ("unknown name", lambda: dppa_densities(deltas, 0.5, blocks={"b": ["nope"]}), ValueError, "blocks"),
        ("twice", lambda: dppa_densities(deltas, 0.5, blocks={"x": [A], "y": [A]}), ValueError, "blocks"),
        ("empty", lambda: dppa_densities(deltas, 0.5, blocks={"x": []}), ValueError, "blocks"),
        ("names str", lambda: dppa_densities(deltas, 0.5, blocks={"x": A}), TypeError, "blocks"),
        ("density", lambda: partitions(deltas, {A: 1.5}), ValueError, "densities"),
        ("density name", lambda: partitions(deltas, {"nope": 0.5}), ValueError, "densities"),
        ("width", lambda: partitions(deltas, {A: 0.5}, width=-0.1), ValueError, "width"),
        ("amplify names", lambda: amplify({}, partitions(deltas, {A: 0.5}), 1.8, 0.0), ValueError, "deltas"),
        ("amplify alpha", lambda: amplify(deltas, partitions(deltas, {A: 0.5}), "x", 0.0), TypeError, "alpha_hi"),
        ("evaluate", lambda: search_amplification(3.0), TypeError, "evaluate"),
        ("step", lambda: search_amplification(lambda a, b: a, step=0.0), ValueError, "step"),
        ("start", lambda: search_amplification(lambda a, b: a, alpha_hi=20.0), ValueError, "alpha_hi"),
        ("bounds", lambda: search_amplification(lambda a, b: a, bounds_lo=(1.0, 0.0)), ValueError, "bounds_lo"),
        ("max_evals", lambda: search_amplification(lambda a, b: a, max_evals=0), ValueError, "max_evals"),
    ]


@pytest.mark.parametrize("name,call,exc,arg", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_arguments(name, call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


def test_densities_dataclass_is_exported():
    assert isinstance(dppa_densities(_hand_example(), 0.5), DPPADensities)


def test_outliers_are_strictly_above_the_threshold():
    # With factor 1 every entry of a constant matrix sits exactly at the threshold: not counted.
    deltas = {f"model.layers.{i}.w.weight": torch.full((3, 3), 0.5) for i in range(2)}
    res = dppa_densities(deltas, 0.5, block_outlier=1.0, module_outlier=1.0)
    assert res.D == {"model.layers.0": 0.0, "model.layers.1": 0.0}
    assert set(res.O.values()) == {0.0}
    deltas["model.layers.1.w.weight"][0, 0] = 0.6  # now 1 of 9 is above the mean 0.511
    res = dppa_densities(deltas, 0.5, block_outlier=1.0, module_outlier=1.0)
    assert res.O["model.layers.1.w.weight"] == pytest.approx(100 / 9)
    assert res.D["model.layers.1"] == pytest.approx(100 / 9)


def test_dynamic_prune_on_a_gpt2_state_dict_keeps_the_target_fraction():
    # Real HF names (transformer.h.<i>.*, Conv1D weights): equal-sized blocks, so the density
    # moves cancel and the model keeps 1 - p of its grouped entries up to per-matrix rounding.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    deltas = {k: torch.randn_like(v) * (1 + 4 * (torch.rand_like(v) > 0.99))  # a few outliers
              for k, v in model.state_dict().items() if v.is_floating_point()}
    res = dynamic_prune_(deltas, 0.8)
    assert set(res.D) == {"transformer.h.0", "transformer.h.1", "transformer.h.2"}
    assert set(res.density) == {k for k, v in deltas.items() if k.startswith("transformer.h.") and v.dim() == 2}
    assert len(set(round(d, 9) for d in res.density.values())) > 1  # the densities do move
    total = sum(deltas[n].numel() for n in res.density)
    kept = sum(int((deltas[n] != 0).sum()) for n in res.density)
    assert abs(kept - 0.2 * total) <= len(res.density)
    assert "transformer.wte.weight" not in res.density
