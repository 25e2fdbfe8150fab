"""DARE / DAREx-q on the update of a real peft LoRA model: product mode bit for bit, factor mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402

import darex_ext  # noqa: E402
from darex_ext import tensor_seed  # noqa: E402
from darex_ext.algorithms import lora_layers, prune_lora  # noqa: E402


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 6)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _peft_mlp(dtype=torch.float32, autocast_adapter_dtype=True, **config):
    torch.manual_seed(0)
    base = MLP().to(dtype)
    cfg = dict(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], init_lora_weights=False)
    cfg.update(config)
    return get_peft_model(base, LoraConfig(**cfg), autocast_adapter_dtype=autocast_adapter_dtype)


def _factors(model, name):
    layer = model.get_base_model().get_submodule(name)
    return (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone(),
            layer.scaling["default"], layer.get_base_layer().weight.detach().clone())


def _expected_product(model, p, q=None, seed=0):
    out = {}
    for name in ("fc1", "fc2"):
        A, B, scaling, W = _factors(model, name)
        delta = (B @ A) * scaling
        assert (delta != 0).all()  # a nonzero update: dropped entries are visible
        out[name] = W + darex_ext.prune_(delta, p, q if not isinstance(q, dict) else q[name],
                                         seed=tensor_seed(seed, name))
    return out


@pytest.mark.parametrize("p,q", [(0.5, None), (0.9, None), (0.9, 0.3), (0.99, 0.05)])
def test_product_mode_merges_base_plus_pruned_update_bit_for_bit(p, q):
    model = _peft_mlp()
    expected = _expected_product(model, p, q, seed=17)
    base = model.get_base_model()
    biases = {n: base.get_submodule(n).get_base_layer().bias.detach().clone() for n in ("fc1", "fc2")}
    merged = prune_lora(model, p, q, seed=17)
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    assert isinstance(merged, MLP)
    for name in ("fc1", "fc2"):
        assert torch.equal(merged.get_submodule(name).weight, expected[name])
        assert torch.equal(merged.get_submodule(name).bias, biases[name])


def test_product_mask_is_the_spec_mask_of_the_update():
    model = _peft_mlp()
    deltas = prune_lora(model, 0.8, seed=5, merge=False)
    assert set(deltas) == {"fc1.weight", "fc2.weight"}
    for name in ("fc1", "fc2"):
        kept = deltas[f"{name}.weight"] != 0
        assert torch.equal(kept, darex_ext.keep_mask(kept, 0.8, seed=tensor_seed(5, name)))


def test_p_zero_equals_peft_merge_and_unload():
    model = _peft_mlp()
    reference = copy.deepcopy(model).merge_and_unload()
    ours = prune_lora(model, 0.0)
    x = torch.randn(5, 12)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(ours.get_submodule(name).weight, reference.get_submodule(name).weight)
    torch.testing.assert_close(ours(x), reference(x))


def test_merge_false_returns_deltas_and_leaves_the_model():
    model = _peft_mlp()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _expected_product(model, 0.7, 0.2, seed=3)
    deltas = prune_lora(model, 0.7, 0.2, seed=3, merge=False)
    for name in ("fc1", "fc2"):
        W = model.get_base_model().get_submodule(name).get_base_layer().weight
        assert torch.equal(W + deltas[f"{name}.weight"], expected[name])
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in snapshot.items())
    assert lora_layers(model).keys() == {"fc1", "fc2"}


def test_per_layer_q_mapping_with_per_row_q():
    model = _peft_mlp()
    q = {"fc1": torch.linspace(0.1, 0.9, 20), "fc2": 0.25}
    expected = _expected_product(model, 0.6, q, seed=11)
    merged = prune_lora(model, 0.6, q, seed=11)
    for name in ("fc1", "fc2"):
        assert torch.equal(merged.get_submodule(name).weight, expected[name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("autocast", [True, False], ids=["fp32-adapter", "same-dtype-adapter"])
def test_half_models_product_mode(dtype, autocast):
    model = _peft_mlp(dtype, autocast_adapter_dtype=autocast)
    layer = model.get_base_model().fc1
    delta = layer.get_delta_weight("default").detach()  # peft's own path (fp32 matmul on CPU)
    assert delta.dtype == (torch.float32 if autocast else dtype)
    W = layer.get_base_layer().weight.detach()
    expected = (W + darex_ext.prune_(delta.clone(), 0.5, seed=tensor_seed(1, "fc1"))).to(dtype)
    reference = copy.deepcopy(model).merge_and_unload()
    merged = prune_lora(model, 0.5, seed=1)
    assert merged.fc1.weight.dtype == dtype
    assert torch.equal(merged.fc1.weight, expected)
    # At p = 0 the merge is peft's, bit for bit, in every dtype.
    zero = prune_lora(_peft_mlp(dtype, autocast_adapter_dtype=autocast), 0.0)
    assert torch.equal(zero.fc1.weight, reference.fc1.weight)
    assert torch.equal(zero.fc2.weight, reference.fc2.weight)


def test_factors_mode_prunes_each_factor_with_its_own_seed():
    model = _peft_mlp()
    before = {n: _factors(model, n) for n in ("fc1", "fc2")}
    out = prune_lora(model, 0.5, mode="factors", seed=9, merge=False)
    assert out is model
    for name in ("fc1", "fc2"):
        A, B, _, _ = before[name]
        A2, B2, _, _ = _factors(model, name)
        assert torch.equal(A2, darex_ext.prune_(A.clone(), 0.5, seed=tensor_seed(9, f"{name}.lora_A")))
        assert torch.equal(B2, darex_ext.prune_(B.clone(), 0.5, seed=tensor_seed(9, f"{name}.lora_B")))


def test_factors_mode_single_factor_and_merge():
    model = _peft_mlp()
    A, B, scaling, W = _factors(model, "fc1")
    merged = prune_lora(model, 0.5, 0.4, mode="factors", factors="A", seed=2)
    A2 = darex_ext.prune_(A.clone(), 0.5, 0.4, seed=tensor_seed(2, "fc1.lora_A"))
    assert torch.equal(merged.fc1.weight, W + (B @ A2) * scaling)  # B untouched


def test_factors_mode_is_unbiased_on_average():
    # E[B' A'] = B A for independent unbiased factor masks; the average over many seeds
    # agrees with the update within a few standard errors, entry by entry.
    model = _peft_mlp(r=2)
    A, B, scaling, _ = _factors(model, "fc2")
    target = (B @ A) * scaling
    samples = []
    for s in range(600):
        m = copy.deepcopy(model)
        prune_lora(m, 0.5, mode="factors", seed=s, merge=False)
        samples.append(m.get_base_model().fc2.get_delta_weight("default").detach())
    stack = torch.stack(samples).double()
    mean, se = stack.mean(0), stack.std(0) / len(samples) ** 0.5
    z = (mean - target.double()).abs() / se.clamp_min(1e-12)
    assert float(z.max()) < 5.0
    # ...but it is not DARE of the update: an entry of B'A' is zero only when every one of its r
    # products lost a factor, so its density is 1 - (1 - (1 - p)^2)^r (0.4375 at p = 0.5, r = 2),
    # not DARE's 1 - p. Averaged over the seeds (one seed's density varies too much to tell).
    density = (stack != 0).double().mean().item()
    assert abs(density - (1 - (1 - 0.25) ** 2)) < 0.03, density


def test_injected_plain_module_is_unloaded_in_place():
    from peft import inject_adapter_in_model
    torch.manual_seed(0)
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["fc1"], init_lora_weights=False), MLP())
    layer = model.fc1
    A, B, scaling = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    delta = ((B @ A) * scaling).detach()
    expected = layer.get_base_layer().weight + darex_ext.prune_(delta, 0.5, seed=tensor_seed(4, "fc1"))
    out = prune_lora(model, 0.5, seed=4)
    assert out is model and isinstance(out.fc1, nn.Linear)
    assert not isinstance(out.fc1, peft.tuners.lora.LoraLayer)
    assert torch.equal(out.fc1.weight, expected)


def test_gpt2_conv1d_fan_in_fan_out():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=8,
                                  bos_token_id=0, eos_token_id=0)
    base = transformers.GPT2LMHeadModel(cfg).eval()  # no dropout: outputs are comparable
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                            init_lora_weights=False))
    name = "transformer.h.0.attn.c_attn"
    assert set(lora_layers(model)) == {name}
    layer = model.get_base_model().get_submodule(name)
    A, B, scaling = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    delta = ((B @ A).T * scaling).detach()  # Conv1D stores the weight as [in, out]
    expected = layer.get_base_layer().weight.detach() + darex_ext.prune_(delta.clone(), 0.9,
                                                                         seed=tensor_seed(0, name))
    reference = copy.deepcopy(model).merge_and_unload()
    merged = prune_lora(copy.deepcopy(model), 0.9)
    assert torch.equal(merged.get_submodule(name).weight, expected)
    zero = prune_lora(model, 0.0)
    ids = torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(zero(ids).logits, reference(ids).logits)


def _bad_calls():
    return [
        ("p", lambda m: prune_lora(m, 1.0), ValueError, "p"),
        ("mode", lambda m: prune_lora(m, 0.5, mode="svd"), ValueError, "mode"),
        ("factors", lambda m: prune_lora(m, 0.5, mode="factors", factors="C"), ValueError, "factors"),
        ("merge", lambda m: prune_lora(m, 0.5, merge="yes"), TypeError, "merge"),
        ("model", lambda m: prune_lora("model", 0.5), TypeError, "model"),
        ("adapter", lambda m: prune_lora(m, 0.5, adapter="other"), ValueError, "adapter"),
        ("q name", lambda m: prune_lora(m, 0.5, {"fc1": 0.5, "fc3": 0.5}), ValueError, "q"),
        ("q missing", lambda m: prune_lora(m, 0.5, {"fc1": 0.5}), ValueError, "q"),
        ("q zero", lambda m: prune_lora(m, 0.5, 0.0), ValueError, "q"),
        ("q missing factors", lambda m: prune_lora(m, 0.5, {"fc1": 0.5}, mode="factors"), ValueError, "q"),
        ("q zero factors", lambda m: prune_lora(m, 0.5, {"fc1": 0.5, "fc2": 0.0}, mode="factors"), ValueError, "q"),
        ("q rows factors", lambda m: prune_lora(m, 0.5, {"fc1": 0.5, "fc2": torch.ones(4)}, mode="factors"),
         TypeError, "q"),
        ("no lora", lambda m: prune_lora(MLP(), 0.5), ValueError, "LoRA"),
    ]


@pytest.mark.parametrize("name,call,exc,arg", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_arguments(name, call, exc, arg):
    model = _peft_mlp()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=arg):
        call(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in snapshot.items())


def test_dora_is_refused():
    model = _peft_mlp(use_dora=True)
    with pytest.raises(ValueError, match="variant"):
        prune_lora(model, 0.5)


class EmbedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 12)
        self.fc1 = nn.Linear(12, 5)

    def forward(self, ids):
        return self.fc1(self.emb(ids))


@pytest.mark.parametrize("mode", ["product", "factors"])
def test_embedding_layers(mode):
    torch.manual_seed(0)
    model = get_peft_model(EmbedMLP(), LoraConfig(r=3, target_modules=["emb", "fc1"],
                                                  init_lora_weights=False))
    emb = model.get_base_model().emb
    A, B = emb.lora_embedding_A["default"].detach().clone(), emb.lora_embedding_B["default"].detach().clone()
    scaling, W = emb.scaling["default"], emb.get_base_layer().weight.detach().clone()
    if mode == "product":
        delta = (B @ A).T * scaling  # peft stores the embedding update transposed
        expected = W + darex_ext.prune_(delta, 0.5, seed=tensor_seed(8, "emb"))
    else:
        A2 = darex_ext.prune_(A.clone(), 0.5, seed=tensor_seed(8, "emb.lora_A"))
        B2 = darex_ext.prune_(B.clone(), 0.5, seed=tensor_seed(8, "emb.lora_B"))
        expected = W + (B2 @ A2).T * scaling
    merged = prune_lora(model, 0.5, mode=mode, seed=8)
    assert isinstance(merged.emb, nn.Embedding)
    assert torch.equal(merged.emb.weight, expected)
