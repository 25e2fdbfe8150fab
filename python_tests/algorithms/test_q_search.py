"""find_q (DAREx Algorithm 2), output_change and dare_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import darex_ext
from darex_ext.algorithms import dare_model, find_q, output_change, output_change_objective


@pytest.mark.parametrize("peak", [0.37, 0.05, 0.5, 0.81, 0.1])
def test_finds_a_known_argmax(peak):
    r = find_q(lambda v: -(v - peak) ** 2, 0.0, 1.0, 0.1)
    assert r.best == pytest.approx(peak, abs=1e-9)
    assert r.score == pytest.approx(0.0, abs=1e-18)


def test_exact_evaluation_sequence():
    calls = []

    def f(v):
        calls.append(v)
        return -abs(v - 0.42)

    r = find_q(f, 0.0, 1.0, 0.1, patience=2, mode="clipped")
    # Round 1 climbs to 0.4, then 0.5, 0.6, 0.7 miss (3 > patience 2): stop.
    # Round 2 from 0.31 in steps of 0.01 up to 0.5: climbs to 0.42, then 0.43, 0.44, 0.45 miss.
    # 0.4 is reused from round 1, not evaluated again.
    round1 = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    round2 = [0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37, 0.38, 0.39, 0.41, 0.42, 0.43, 0.44, 0.45]
    assert calls == round1 + round2
    assert [h[0] for h in r.history] == calls and [h[2] for h in r.history] == [1] * 8 + [2] * 14
    assert r.best == 0.42


def test_minimize_and_clipping():
    r = find_q(lambda v: (v - 2.0) ** 2, 0.0, 1.0, 0.25, maximize=False, mode="clipped")
    assert r.best == 1.0 and all(0.0 <= v <= 1.0 for v, _, _ in r.history)
    r = find_q(lambda v: -v, 0.2, 1.0, 0.25, patience=0, mode="clipped")
    assert r.best == 0.2 and min(v for v, _, _ in r.history) == 0.2


def test_ties_keep_the_smallest_value():
    r = find_q(lambda v: 1.0, 0.0, 1.0, 0.1, patience=100, mode="clipped")
    assert r.best == 0.0
    assert find_q(lambda v: 1.0, 0.0, 1.0, 0.1).best == 0.0  # reference: the first-found maximum


def test_bad_arguments():
    f = lambda v: v  # noqa: E731
    with pytest.raises(TypeError, match="evaluate"):
        find_q(3, 0, 1, 0.1)
    with pytest.raises(ValueError, match="hi"):
        find_q(f, 1, 0, 0.1)
    with pytest.raises(ValueError, match="step"):
        find_q(f, 0, 1, 0)
    with pytest.raises(ValueError, match="decay"):
        find_q(f, 0, 1, 0.1, decay=1.0)
    with pytest.raises(TypeError, match="patience"):
        find_q(f, 0, 1, 0.1, patience=1.5)
    with pytest.raises(ValueError, match="patience"):
        find_q(f, 0, 1, 0.1, patience=-1)
    with pytest.raises(ValueError, match="evaluate"):
        find_q(lambda v: float("nan"), 0, 1, 0.1)


def _pair():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    ft = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for pb, pf in zip(base.parameters(), ft.parameters()):
            pf.copy_(pb + 0.1 * torch.randn_like(pb))
    return ft, base


def test_dare_model_uses_the_kernel_with_per_tensor_seeds():
    ft, base = _pair()
    pruned = dare_model(ft, base, 0.5, 0.4, seed=7)
    for name, p in pruned.named_parameters():
        f, b = dict(ft.named_parameters())[name], dict(base.named_parameters())[name]
        expected = darex_ext.dare(f.detach(), b.detach(), 0.5, 0.4, seed=darex_ext.tensor_seed(7, name))
        assert torch.equal(p, expected)
    assert not torch.equal(pruned[0].weight, ft[0].weight)
    only = dare_model(ft, base, 0.5, include=lambda n: n.startswith("2."))
    assert torch.equal(only[0].weight, ft[0].weight) and not torch.equal(only[2].weight, ft[2].weight)
    from darex_ext.algorithms.q_search import QFallbackWarning

    with pytest.warns(QFallbackWarning, match="3 pruned tensors have no q"):
        per_row = dare_model(ft, base, 0.5, {"0.weight": torch.full((16,), 0.25)}, seed=1)
    w = darex_ext.dare(ft[0].weight.detach(), base[0].weight.detach(), 0.5, torch.full((16,), 0.25),
                       seed=darex_ext.tensor_seed(1, "0.weight"))
    assert torch.equal(per_row[0].weight, w)


def test_output_change():
    ft, base = _pair()
    batches = [torch.randn(5, 8), torch.randn(3, 8)]
    assert output_change(ft, ft, batches) == 0.0
    pruned = dare_model(ft, base, 0.5, seed=0)
    with torch.no_grad():
        direct = sum(float((ft(b) - pruned(b)).abs().mean()) for b in batches) / 2
    assert output_change(ft, pruned, batches) == pytest.approx(direct, rel=1e-6)
    # Averaged over seeds: the callable is called once per seed.
    called = []

    def build(seed):
        called.append(seed)
        return dare_model(ft, base, 0.5, seed=seed)

    avg = output_change(ft, build, batches, seeds=(3, 4))
    each = [output_change(ft, dare_model(ft, base, 0.5, seed=s), batches) for s in (3, 4)]
    assert called == [3, 4] and avg == pytest.approx(sum(each) / 2, rel=1e-6)


def test_output_change_topk_logits():
    class LM(nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return type("Out", (), {"logits": x + self.shift})()

    x = torch.tensor([[[0.0, 5.0, 1.0, 4.0]]])
    pr = LM(torch.tensor([1.0, 2.0, 0.0, 0.0]))
    # top-2 of the reference logits are tokens 1 and 3: changes 2 and 0 -> MSE 2.
    assert output_change(LM(torch.zeros(4)), pr, [x], top_k=2) == pytest.approx(2.0)
    assert output_change(LM(torch.zeros(4)), pr, [x], top_k=None) == pytest.approx(0.75)  # mean |change|
    assert output_change(LM(torch.zeros(4)), pr, [x]) == pytest.approx(5 / 4)  # default k = 10 -> all 4


def test_on_a_tiny_llama():
    transformers = pytest.importorskip("transformers")
    from darex_ext.algorithms import analytic_q_for_model, collect_input_stats

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    ft = transformers.LlamaForCausalLM(cfg).eval()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batches = [{"input_ids": torch.randint(0, 64, (2, 8))}]
    stats = collect_input_stats(ft, batches)
    assert "model.layers.0.mlp.down_proj" in stats and stats["model.layers.0.mlp.down_proj"].mean.shape == (48,)
    qs = analytic_q_for_model(ft, base, stats, 0.9, two_sided=True, per_row=True)
    assert qs["model.layers.0.self_attn.q_proj.weight"].shape == (32,)
    change = output_change(ft, lambda s: dare_model(ft, base, 0.9, qs, seed=s), batches, seeds=(0, 1))
    assert change > 0
    objective = output_change_objective(ft, base, batches, 0.9, seeds=(0,))
    r = find_q(objective, 0.1, 1.0, 0.3, maximize=False, mode="clipped")
    assert 0.1 <= r.best <= 1.0 and len(r.history) >= 4


def test_output_change_objective_in_find_q():
    ft, base = _pair()
    batches = [torch.randn(64, 8)]
    objective = output_change_objective(ft, base, batches, 0.9, seeds=(0, 1))
    assert objective(0.1) == pytest.approx(
        output_change(ft, lambda s: dare_model(ft, base, 0.9, 0.1, seed=s), batches, seeds=(0, 1)), rel=1e-6)
    r = find_q(objective, 0.1, 1.0, 0.1, maximize=False, mode="clipped")
    assert 0.1 <= r.best <= 1.0 and r.score <= objective(0.1)
    r = find_q(objective, 0.1, 1.0, 0.1, maximize=False)  # reference: may pass hi (here 1.1)
    assert r.best >= 0.1 and r.score <= objective(0.1)
