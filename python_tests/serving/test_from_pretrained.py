"""DeltaBank.from_pretrained on tiny transformers checkpoints: an activated delta equals
`darex apply` + load bit for bit (parameters) and in its outputs; deactivate gives the base back."""

from __future__ import annotations

import pytest
import torch

from darex_ext.pipeline import PruneConfig, apply_delta, prune_model
from darex_ext.serving import DeltaBank
from pipeline_models import bert_pair, llama_pair, load_all

INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(INT[t.element_size()])


def assert_state(model, state: dict[str, torch.Tensor]) -> None:
    live = model.state_dict()
    for k, v in state.items():
        assert torch.equal(bits(live[k]), bits(v)), f"{k} differs"


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def llama(request, tmp_path_factory):
    """A tiny Llama base, two fine-tunes, a delta per format (decoder preset: norms and
    embeddings go to dense.safetensors) and what `darex apply` builds from each."""
    root = tmp_path_factory.mktemp("llama")
    base, fts = llama_pair(str(root / "m"), dtype=request.param, n_finetuned=2)
    deltas, applied = {}, {}
    for i, fmt in enumerate(("seeded", "bitmask", "csr")):
        cfg = PruneConfig(method="dare" if i != 1 else "darex-q", p=0.9, q=0.2 if i == 1 else None, seed=i,
                          preset="decoder", format=fmt)
        d = root / f"delta-{fmt}"
        prune_model(base, fts[i % 2], d, cfg)
        assert (d / "dense.safetensors").exists()
        apply_delta(base, d, root / f"applied-{fmt}")
        deltas[fmt], applied[fmt] = str(d), str(root / f"applied-{fmt}")
    return base, deltas, applied


def test_llama_activated_equals_darex_apply(llama):
    from transformers import LlamaForCausalLM

    base, deltas, applied = llama
    bank = DeltaBank.from_pretrained(base, deltas)
    model = bank.model
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_out = model(ids).logits
    for _ in range(2):
        for fmt, path in applied.items():
            bank.switch(fmt)
            assert_state(model, load_all(path))
            ref = LlamaForCausalLM.from_pretrained(path, dtype="auto").eval()
            with torch.no_grad():
                assert torch.equal(model(ids).logits, ref(ids).logits)
    bank.deactivate()
    assert_state(model, base_state)
    assert_state(model, load_all(base))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_out)


def test_bert_head_from_the_dense_part(tmp_path):
    """The fine-tune has a classifier the base lacks: the bank loads the fine-tune's class and
    the head comes from dense.safetensors."""
    from transformers import BertForSequenceClassification

    base, ft = bert_pair(str(tmp_path / "m"))
    d = tmp_path / "delta"
    prune_model(base, ft, d, PruneConfig(method="dare", p=0.9, seed=1, preset="encoder", format="csr"))
    apply_delta(base, d, tmp_path / "applied")
    bank = DeltaBank.from_pretrained(base, {"ft": str(d)})
    model = bank.model
    assert isinstance(model, BertForSequenceClassification)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with bank.active("ft"):
        assert_state(model, load_all(str(tmp_path / "applied")))
        ref = BertForSequenceClassification.from_pretrained(str(tmp_path / "applied")).eval()
        ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(model(ids).logits, ref(ids).logits)
    assert_state(model, before)


def test_mismatched_model_is_refused(llama, tmp_path):
    """A delta for another architecture (different sizes) is refused and the model untouched."""
    base, deltas, _ = llama
    other, _fts = llama_pair(str(tmp_path / "other"), hidden=16, n_finetuned=0)
    with pytest.raises(ValueError, match="does not match the model"):
        DeltaBank.from_pretrained(other, {"x": deltas["seeded"]})
