"""learn_layer_q: learned per-layer q (DAREx perlayer_opt.py with BinaryDiff)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from darex_ext.algorithms import dare_model, output_change
from darex_ext.algorithms.analytic_q import AnalyticQMap
from darex_ext.algorithms.learned_q import LearnedQMap, learn_layer_q
from darex_ext.ops import keep_mask
from darex_ext.seeds import tensor_seed

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls: on a shared machine extra threads only add contention (20x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 8))


def _finetune(base: nn.Module, scale: float) -> nn.Module:
    import copy

    ft = copy.deepcopy(base)
    with torch.no_grad():
        for t in ft.parameters():
            t.add_(torch.randn_like(t) * scale)
    return ft


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _val_steps(result) -> list[tuple[int, float]]:
    return [(h.step, h.val_loss) for h in result.history if h.val_loss is not None]


def test_learns_q_far_from_dare_and_reduces_the_output_change():
    # Random small deltas and drop rate 0.9: plain DARE's 1/(1-p) = 10x rescale amplifies the
    # mask noise far more than it restores the mean, so the best q is well above 1 - p.
    base = _mlp()
    ft = _finetune(base, 0.05)
    train = [torch.randn(32, 16) for _ in range(60)]
    val = [torch.randn(64, 16) for _ in range(2)]
    p, seed = 0.9, 3
    r = learn_layer_q(ft, base, train, p, val_batches=val, seed=seed)

    assert isinstance(r, LearnedQMap) and isinstance(r, AnalyticQMap)
    assert set(r.layer_q) == {"0", "2", "4"}
    assert all(q > 1 - p + 0.1 for q in r.layer_q.values()), r.layer_q
    train_losses = [h.train_loss for h in r.history]
    assert len(train_losses) == 60 and not r.stopped_early
    assert sum(train_losses[-10:]) / 10 < 0.6 * sum(train_losses[:5]) / 5

    def change(q):
        return output_change(ft, dare_model(ft, base, p, q, seed=seed), val, seeds=(seed,), top_k=None)

    initial_q = float(torch.tensor(1e-4) + torch.tensor(1 - p, dtype=torch.float32))
    assert r.best_val_loss < 0.6 * change(None)       # plain DARE, q = 1 - p
    assert r.best_val_loss < 0.6 * change(initial_q)  # the initial coefficient
    assert r.best_val_loss == min(v for _, v in _val_steps(r))


def _bert_pair():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(1)
    base = transformers.BertModel(cfg)
    return base, _finetune(base, 0.05)


def _bert_batches(n):
    out = []
    for _ in range(n):
        ids = torch.randint(0, 40, (4, 8))
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _llama_pair(tied: bool = False):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                                   tie_word_embeddings=tied)
    torch.manual_seed(2)
    base = transformers.LlamaForCausalLM(cfg)
    return base, _finetune(base, 0.05)


def _llama_batches(n):
    return [{"input_ids": torch.randint(0, 48, (2, 8))} for _ in range(n)]


CASES = {
    "mlp": (lambda: (lambda b: (b, _finetune(b, 0.05)))(_mlp()), lambda n: [torch.randn(8, 16) for _ in range(n)],
            None),
    "bert": (_bert_pair, _bert_batches, None),   # no logits: mean |change| of last_hidden_state
    "llama": (_llama_pair, _llama_batches, 5),   # logits: top-5 MSE
}


@pytest.mark.parametrize("case", list(CASES))
def test_dare_model_rebuilds_the_trained_model_exactly(case):
    make, batches_of, top_k = CASES[case]
    base, ft = make()
    ft.train()  # the run uses eval mode and must restore this
    before_ft, before_base = _snapshot(ft), _snapshot(base)
    p, seed = 0.8, 11
    val = batches_of(2)
    r = learn_layer_q(ft, base, batches_of(12), p, val_batches=val, seed=seed, eval_every=4, lr=0.05)

    # Neither model changed, no gradient reached them, the mode is back.
    assert _same(before_ft, _snapshot(ft)) and _same(before_base, _snapshot(base))
    assert all(t.grad is None for t in list(ft.parameters()) + list(base.parameters()))
    assert ft.training

    # Every shared Linear weight has a q; its bias (if any) shares it.
    linears = {n for n, m in ft.named_modules() if isinstance(m, nn.Linear)}
    assert set(r.layer_q) == linears
    for module, q in r.layer_q.items():
        prefix = f"{module}." if module else ""
        assert r[prefix + "weight"] == q and r.sources[prefix + "weight"] == "learned"
        if getattr(ft.get_submodule(module), "bias", None) is not None:
            assert r[prefix + "bias"] == q and r.sources[prefix + "bias"] == "learned bias"
        assert q == float(torch.tensor(abs(r.coeffs[module])) + torch.tensor(1 - p, dtype=torch.float32))
    assert any(q != r.layer_q[next(iter(r.layer_q))] for q in r.layer_q.values())  # trained per layer

    # The validation loss of the returned q's is output_change of the dare_model they give, bit
    # for bit: the same masks, the same rounding of every pruned tensor.
    pruned = dare_model(ft, base, p, r, seed=seed, include=r.__contains__)
    assert output_change(ft, pruned, val, seeds=(seed,), top_k=top_k) == r.best_val_loss
    # A different seed is a different model.
    other = dare_model(ft, base, p, r, seed=seed + 1, include=r.__contains__)
    assert output_change(ft, other, val, seeds=(seed,), top_k=top_k) != r.best_val_loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_other_dtypes_rebuild_exactly(dtype):
    # float64 tensors use a float64 1/q; float16 / bfloat16 are computed in float32 and rounded
    # once, as the dare kernel does. The coefficients stay float32.
    base = _mlp().to(dtype)
    ft = _finetune(base, 0.05)
    val = [torch.randn(8, 16, dtype=dtype)]
    r = learn_layer_q(ft, base, [torch.randn(8, 16, dtype=dtype) for _ in range(6)], 0.8, val_batches=val,
                      seed=9, eval_every=2, lr=0.05)
    pruned = dare_model(ft, base, 0.8, r, seed=9)
    assert output_change(ft, pruned, val, seeds=(9,), top_k=None) == r.best_val_loss


def test_bias_left_out_stays_finetuned():
    base = _mlp()
    ft = _finetune(base, 0.05)
    val = [torch.randn(8, 16)]
    include = lambda n: n.endswith("weight")  # noqa: E731
    r = learn_layer_q(ft, base, [torch.randn(8, 16) for _ in range(6)], 0.7, val_batches=val, seed=5,
                      include=include, eval_every=2)
    assert set(r) == {"0.weight", "2.weight", "4.weight"}
    pruned = dare_model(ft, base, 0.7, r, seed=5, include=r.__contains__)
    assert torch.equal(pruned[0].bias, ft[0].bias)
    assert output_change(ft, pruned, val, seeds=(5,), top_k=None) == r.best_val_loss


def test_tied_linear_weight_is_not_trained_twice():
    base, ft = _llama_pair(tied=True)
    r = learn_layer_q(ft, base, _llama_batches(2), 0.5, seed=0)
    assert "lm_head.weight" not in r and "lm_head" not in r.layer_q
    assert "model.layers.0.mlp.up_proj.weight" in r


def _plateau_model(n: int, p: float, seed: int, q_val: float):
    """One Linear(n, 1): a training input whose best q is 1 and a validation input whose best
    q is q_val, so training drives q up through q_val and the validation loss, falling until
    then, rises strictly afterwards."""
    base = nn.Sequential(nn.Linear(n, 1, bias=False))
    keep = keep_mask(base[0].weight, p, seed=tensor_seed(seed, "0.weight"))[0]
    j = int(keep.nonzero()[0])
    k = int((~keep).nonzero()[0])
    ft = _finetune(base, 0.0)
    with torch.no_grad():
        ft[0].weight[0, j] += 1.0
        ft[0].weight[0, k] += 1.0 / q_val - 1.0  # pruned output change on e_j + e_k: |1/q - 1/q_val|
    x_train = torch.zeros(1, n)
    x_train[0, j] = 1.0
    x_val = x_train.clone()
    x_val[0, k] = 1.0
    return base, ft, x_train, x_val


def test_early_stopping_returns_the_best_not_the_last():
    p, seed, patience = 0.9, 4, 3
    base, ft, x_train, x_val = _plateau_model(128, p, seed, q_val=0.3)
    r = learn_layer_q(ft, base, [x_train] * 200, p, val_batches=[x_val], seed=seed, lr=0.02, t_max=10_000,
                      weight_decay=0.0, eval_every=2, patience=patience)
    vals = _val_steps(r)
    assert r.stopped_early and len(r.history) < 200
    assert r.history[-1].step == vals[-1][0]  # it stopped right at a validation
    losses = [v for _, v in vals]
    b = losses.index(min(losses))
    assert len(vals) - 1 - b == patience                     # exactly `patience` worse ones
    assert all(v > losses[b] for v in losses[b + 1:])
    assert all(x > y for x, y in zip(losses[:b], losses[1:b + 1]))  # falling before the best
    assert (r.best_step, r.best_val_loss) == vals[b]
    assert r.layer_q["0"] == pytest.approx(0.3, abs=0.03)
    # The returned q is the best one: it rebuilds the best loss, not the last.
    pruned = dare_model(ft, base, p, r, seed=seed)
    assert output_change(ft, pruned, [x_val], seeds=(seed,), top_k=None) == r.best_val_loss < losses[-1]


def test_ties_count_as_improvement():
    p, seed = 0.9, 4
    base, ft, x_train, _ = _plateau_model(128, p, seed, q_val=0.3)
    zeros = torch.zeros_like(x_train)  # no change at all: every validation ties at 0
    r = learn_layer_q(ft, base, [x_train] * 30, p, val_batches=[zeros], seed=seed, eval_every=1, patience=1)
    assert not r.stopped_early and [v for _, v in _val_steps(r)] == [0.0] * 30
    assert r.best_step == 29  # the latest of equals, as published
    assert r.coeffs["0"] > 0.1  # the coefficient moved, and the last one came back


def test_schedule_of_validations_and_max_steps():
    base = _mlp()
    ft = _finetune(base, 0.05)
    val = [torch.randn(4, 16)]
    r = learn_layer_q(ft, base, [torch.randn(4, 16) for _ in range(15)], 0.5, val_batches=val, eval_every=10)
    assert [s for s, _ in _val_steps(r)] == [0, 10, 14]  # the last step is validated too

    consumed = []

    def stream():
        for i in range(15):
            consumed.append(i)
            yield torch.randn(4, 16)

    r = learn_layer_q(ft, base, stream(), 0.5, val_batches=val, eval_every=10, max_steps=12)
    assert [s for s, _ in _val_steps(r)] == [0, 10, 11] and len(consumed) == 12

    r = learn_layer_q(ft, base, [torch.randn(4, 16) for _ in range(5)], 0.5)  # no validation
    assert all(h.val_loss is None for h in r.history) and r.best_val_loss is None and r.best_step == 4
    assert not r.stopped_early


def test_lr_schedule_and_optimizer_match_the_script():
    # lr 0 after T_max steps of the cosine: the coefficients stop moving there.
    base = _mlp()
    ft = _finetune(base, 0.05)
    batches = [torch.randn(4, 16) for _ in range(6)]
    a = learn_layer_q(ft, base, batches, 0.9, t_max=4, max_steps=5, weight_decay=0.0)
    b = learn_layer_q(ft, base, batches, 0.9, t_max=4, max_steps=4, weight_decay=0.0)
    assert a.coeffs == b.coeffs
    c = learn_layer_q(ft, base, batches, 0.9, t_max=4, max_steps=3, weight_decay=0.0)
    assert c.coeffs != b.coeffs


def test_bad_arguments():
    base = _mlp()
    ft = _finetune(base, 0.05)
    batches = [torch.randn(4, 16)]
    for p in (0.0, 1.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="p"):
            learn_layer_q(ft, base, batches, p)
    for lr in (0.0, -1e-2, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr"):
            learn_layer_q(ft, base, batches, 0.5, lr=lr)
    with pytest.raises(TypeError, match="lr"):
        learn_layer_q(ft, base, batches, 0.5, lr="0.01")
    with pytest.raises(ValueError, match="batches"):
        learn_layer_q(ft, base, [], 0.5)
    with pytest.raises(ValueError, match="batches"):
        learn_layer_q(ft, base, iter(()), 0.5)
    with pytest.raises(ValueError, match="val_batches"):
        learn_layer_q(ft, base, batches, 0.5, val_batches=[])
    with pytest.raises(TypeError, match="batches"):
        learn_layer_q(ft, base, torch.randn(4, 16), 0.5)
    with pytest.raises(TypeError, match="batches"):
        learn_layer_q(ft, base, 3, 0.5)
    with pytest.raises(ValueError, match="Linear"):
        learn_layer_q(ft, base, batches, 0.5, include=lambda n: False)
    with pytest.raises(ValueError, match="Linear"):
        learn_layer_q(nn.Sequential(nn.Conv1d(2, 2, 1)), nn.Sequential(nn.Conv1d(2, 2, 1)), batches, 0.5)
    with pytest.raises(ValueError, match="Linear"):
        learn_layer_q(ft, nn.Sequential(nn.Linear(3, 3)), batches, 0.5)
    with pytest.raises(TypeError, match="finetuned"):
        learn_layer_q({"w": 1}, base, batches, 0.5)
    with pytest.raises(TypeError, match="base"):
        learn_layer_q(ft, None, batches, 0.5)
    with pytest.raises(TypeError, match="include"):
        learn_layer_q(ft, base, batches, 0.5, include="mlp")
    with pytest.raises(TypeError, match="seed"):
        learn_layer_q(ft, base, batches, 0.5, seed=torch.Generator())
    with pytest.raises(ValueError, match="seed"):
        learn_layer_q(ft, base, batches, 0.5, seed=-1)
    for name in ("eval_every", "patience", "t_max", "max_steps", "top_k"):
        with pytest.raises(ValueError, match=name):
            learn_layer_q(ft, base, batches, 0.5, **{name: 0})
        with pytest.raises(TypeError, match=name):
            learn_layer_q(ft, base, batches, 0.5, **{name: 1.5})
    with pytest.raises(ValueError, match="weight_decay"):
        learn_layer_q(ft, base, batches, 0.5, weight_decay=-0.1)
    with pytest.raises(ValueError, match="init"):
        learn_layer_q(ft, base, batches, 0.5, init=math.inf)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_matches_dare_model():
    import darex_ext

    if not darex_ext.cuda_built():
        pytest.skip("darex_ext built without CUDA")
    base = _mlp().cuda()
    ft = _finetune(base, 0.05)
    val = [torch.randn(16, 16, device="cuda")]
    r = learn_layer_q(ft, base, [torch.randn(16, 16, device="cuda") for _ in range(12)], 0.9, val_batches=val,
                      seed=7, eval_every=3)
    assert all(q > 0.1 for q in r.layer_q.values())
    pruned = dare_model(ft, base, 0.9, r, seed=7)
    assert output_change(ft, pruned, val, seeds=(7,), top_k=None) == r.best_val_loss
