"""The mask spec of the random methods reaches every place a DARE mask is drawn: the prune, the
label-free q searches and learned q (whose q is trained for the very masks the prune uses)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from darex_ext import dare
from darex_ext.algorithms import dare_model, learn_layer_q, output_change_objective
from darex_ext.pipeline import PruneConfig
from darex_ext.seeds import tensor_seed


def _pair():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 8))
    ft = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 8))
    with torch.no_grad():
        for a, b in zip(ft.parameters(), base.parameters()):
            a.copy_(b + 0.01 * torch.randn_like(b))
    return ft, base


@pytest.mark.parametrize("spec", ["skip", "philox"])
def test_dare_model_uses_the_mask_spec(spec):
    ft, base = _pair()
    got = dare_model(ft, base, 0.99, seed=3, mask=spec)
    for (name, w), b, f in zip(got.named_parameters(), base.parameters(), ft.parameters()):
        want = dare(f.detach(), b.detach(), 0.99, seed=tensor_seed(3, name), mask=spec)
        assert torch.equal(w.detach(), want), name
    other = dare_model(ft, base, 0.99, seed=3, mask="philox" if spec == "skip" else "skip")
    assert not torch.equal(other[0].weight, got[0].weight)


def test_objective_and_learned_q_take_the_spec():
    ft, base = _pair()
    batches = [torch.randn(4, 40) for _ in range(6)]
    values = {spec: output_change_objective(ft, base, batches, 0.99, mask=spec, top_k=None)(0.01)
              for spec in ("skip", "philox")}
    assert values["skip"] != values["philox"]
    maps = {spec: learn_layer_q(ft, base, batches, 0.99, seed=1, mask=spec, max_steps=3, top_k=None)
            for spec in ("skip", "philox")}
    assert maps["skip"].coeffs and maps["skip"].coeffs != maps["philox"].coeffs
    with pytest.raises(ValueError, match="mask"):
        learn_layer_q(ft, base, batches, 0.99, mask="v3", max_steps=1)


def test_prune_config_refuses_an_unknown_spec():
    with pytest.raises(ValueError, match="--mask"):
        PruneConfig(mask="v3")
    assert PruneConfig().mask == "skip"


def test_learned_q_mode_passes_the_spec(monkeypatch):
    from darex_ext.algorithms import learned_q
    from darex_ext.pipeline import q_choice

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(learned_q, "learn_layer_q", fake)
    ft, base = _pair()
    with pytest.raises(RuntimeError, match="stop here"):
        q_choice.learned_table(ft, base, [torch.randn(2, 40)] * 5, 0.99, 0, ["0.weight"], [], mask="philox")
    assert seen["mask"] == "philox"
