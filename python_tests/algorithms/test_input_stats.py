"""collect_input_stats: streaming per-channel mean and squared norm, hooks always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from darex_ext.algorithms import collect_input_stats


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def _recorded_inputs(net, batches):
    seen = {"a": [], "b": []}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].reshape(-1, i[0].shape[-1])))
             for n in seen]
    with torch.no_grad():
        net.eval()
        for x in batches:
            net(x)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).double() for n, v in seen.items()}


def test_mean_and_sq_norm_match_direct_computation():
    torch.manual_seed(0)
    net = Net().train()
    batches = [torch.randn(4, 6, 5) + 0.7, torch.randn(3, 5) - 0.2, torch.randn(2, 1, 2, 5) * 3]  # any leading shape
    stats = collect_input_stats(net, batches)
    assert set(stats) == {"a", "b"}
    assert net.training  # restored
    direct = _recorded_inputs(net, batches)
    for name, x in direct.items():
        s = stats[name]
        assert s.count == x.shape[0]
        assert s.mean.dtype == s.sq_norm.dtype == torch.float32
        assert torch.allclose(s.mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
        assert torch.allclose(s.sq_norm.double(), x.square().sum(0), rtol=1e-5)
        assert torch.allclose(s.l2_norm.double(), x.square().sum(0).sqrt(), rtol=1e-5)


def test_streaming_mean_stays_accurate_over_many_batches():
    lin = nn.Linear(3, 1)
    batches = [torch.full((1000, 3), 1000.0) + torch.arange(3.0)] * 50 + [torch.zeros(10, 3)]
    s = collect_input_stats(lin, batches)[""]
    total = 50 * 1000 + 10
    expected = (torch.tensor([1000.0, 1001.0, 1002.0]) * 50000 / total)
    assert torch.allclose(s.mean, expected, rtol=1e-6)


def test_modules_by_name_and_mapping():
    net = Net()
    x = [torch.randn(2, 5)]
    assert set(collect_input_stats(net, x, modules=["b"])) == {"b"}
    assert set(collect_input_stats(net, x, modules={"first": net.a})) == {"first"}
    with pytest.raises(ValueError, match="no module named"):
        collect_input_stats(net, x, modules=["zzz"])
    with pytest.raises(TypeError):
        collect_input_stats(net, x, modules="a")
    with pytest.raises(TypeError, match="model"):
        collect_input_stats(lambda t: t, x)


def test_hooks_removed_even_on_error():
    net = Net()

    def batches():
        yield torch.randn(2, 5)
        yield torch.randn(2, 4)  # wrong width: the forward raises

    with pytest.raises(RuntimeError):
        collect_input_stats(net, batches())
    assert not net.a._forward_hooks and not net.b._forward_hooks
    assert net.training


def test_dict_and_tuple_batches():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, scale=1.0):
            return self.lin(x * scale)

    m = Two()
    s1 = collect_input_stats(m, [{"x": torch.ones(3, 2), "scale": 2.0}])["lin"]
    s2 = collect_input_stats(m, [(torch.ones(3, 2), 2.0)])["lin"]
    assert torch.equal(s1.mean, torch.full((2,), 2.0)) and torch.equal(s1.mean, s2.mean)
