"""PEFT drop-ins against peft.utils.merge_utils: exact for magnitude, statistical for random."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("peft")
import peft.utils.merge_utils as mu  # noqa: E402

import darex_ext  # noqa: E402
import darex_ext.integrations.peft as dp  # noqa: E402
from conftest import randn  # noqa: E402
from merge_samples import distinct_values  # noqa: E402


def _tasks(n=3, shape=(64, 48), dtype=torch.float32):
    return [randn(*shape, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("density", [0.0, 0.013, 0.3, 0.5, 0.999])
@pytest.mark.parametrize("shape", [(1,), (37,), (64, 48), (3, 5, 7)])
def test_magnitude_pruning_is_exactly_peft(density, shape):
    t = randn(*shape)
    assert torch.equal(dp.magnitude_based_pruning(t, density), mu.magnitude_based_pruning(t, density))
    assert torch.equal(dp.prune(t, density, "magnitude"), mu.prune(t, density, "magnitude"))


def test_prune_edge_cases_match_peft():
    t = randn(10, 10)
    with pytest.warns(UserWarning):
        assert dp.prune(t, 1.0, "random") is t
    with pytest.raises(ValueError, match="Density"):
        dp.prune(t, -0.1, "magnitude")
    with pytest.raises(ValueError, match="Unknown method"):
        dp.prune(t, 0.5, "sideways")
    assert torch.equal(dp.prune(t, 0.0, "random", rescale=True), torch.zeros_like(t))


@pytest.mark.parametrize("method", ["magnitude_prune", "ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.3, 0.37, 0.999])
def test_magnitude_merges_equal_peft_bit_for_bit(method, dtype, density):
    # tie-free magnitudes: torch.topk keeps an unspecified one of equal |x|, darex the lower index
    gen = torch.Generator().manual_seed(5)
    tasks = [distinct_values((7, 13), dtype, gen) for _ in range(3)]
    for w in (torch.tensor([1.0, 0.5, -0.7]), torch.tensor([1.0, 0.5, -0.7], dtype=dtype)):
        ours = getattr(dp, method)(tasks, w, density)
        theirs = getattr(mu, method)(tasks, w, density)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    if method == "ties":
        assert torch.equal(dp.ties(tasks, w, density, "frequency"), mu.ties(tasks, w, density, "frequency"))


def _grads(fn, tasks, w):
    leaves = [t.detach().clone().requires_grad_(True) for t in tasks]
    wl = w.detach().clone().requires_grad_(True)
    out = fn(leaves, wl)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                [*leaves, wl])
    return out.detach(), grads


@pytest.mark.parametrize("method", ["magnitude_prune", "ties"])
def test_magnitude_merge_gradients_equal_pefts(method):
    tasks, w = _tasks(shape=(6, 9), dtype=torch.float64), torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    ours = _grads(lambda ts, wl: getattr(dp, method)(ts, wl, 0.4), tasks, w)
    theirs = _grads(lambda ts, wl: getattr(mu, method)(ts, wl, 0.4), tasks, w)
    assert torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    t = tasks[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: dp.magnitude_based_pruning(x, 0.4), (t,))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_merge_gradients_are_pefts_for_the_same_masks(method):
    # PEFT's own arithmetic on darex's pruned tensors (mask / density, the same seeds) is the
    # stock code given the masks; our merge must differentiate exactly like it
    tasks, w = _tasks(shape=(6, 9), dtype=torch.float64), torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    seeds = dp._seeds(11, 3)
    masks = [darex_ext.keep_mask(t, 0.6, seed=s).double() for t, s in zip(tasks, seeds)]

    def twin(ts, wl):
        pruned = torch.stack([t * m / 0.4 for t, m in zip(ts, masks)])
        weighted = pruned * wl.view(-1, 1, 1)
        if method == "dare_linear":
            return weighted.sum(0)
        return mu.disjoint_merge(weighted, mu.calculate_majority_sign_mask(pruned))

    ours = _grads(lambda ts, wl: getattr(dp, method)(ts, wl, 0.4, seed=11), tasks, w)
    theirs = _grads(twin, tasks, w)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-15, atol=1e-15)
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(getattr(dp, method)(tasks, w, 0.4, seed=11), ours[0], rtol=1e-15, atol=0)
    leaves = tuple(t.clone().requires_grad_(True) for t in tasks)
    assert torch.autograd.gradcheck(lambda *ts: getattr(dp, method)(list(ts), w, 0.4, seed=11), leaves)


def _binomial_ok(kept: int, n: int, density: float, sigmas: float = 6.0) -> bool:
    return abs(kept - n * density) <= sigmas * math.sqrt(n * density * (1 - density))


@pytest.mark.parametrize("density", [0.05, 0.5, 0.9])
@pytest.mark.parametrize("rescale", [True, False])
def test_random_pruning_matches_peft_statistically(density, rescale):
    x = randn(400, 500)
    ours, theirs = dp.random_pruning(x, density, rescale), mu.random_pruning(x, density, rescale)
    n = x.numel()
    for out in (ours, theirs):
        kept = out != 0
        assert _binomial_ok(int(kept.sum()), n, density)
        scale = 1.0 / density if rescale else 1.0
        torch.testing.assert_close(out[kept], x[kept] * scale, rtol=2e-7, atol=0)
    # different draws, same law: the kept counts agree within the binomial spread of both
    assert abs(int((ours != 0).sum()) - int((theirs != 0).sum())) <= 8 * math.sqrt(n * density * (1 - density))


def test_dare_merges_are_unbiased_and_reproducible():
    tasks, w = _tasks(shape=(16, 16)), torch.tensor([1.0, 0.5, 0.25])
    torch.manual_seed(7)
    a = dp.dare_linear(tasks, w, 0.3)
    torch.manual_seed(7)
    b = dp.dare_linear(tasks, w, 0.3)
    assert torch.equal(a, b)
    assert torch.equal(dp.dare_ties(tasks, w, 0.3, seed=5), dp.dare_ties(tasks, w, 0.3, seed=5))
    # E[dare_linear] = the weighted sum (task arithmetic); compare the mean over many seeds with PEFT's
    runs = 400
    ours = torch.stack([dp.dare_linear(tasks, w, 0.3, seed=s) for s in range(runs)]).mean(0)
    theirs = torch.stack([mu.dare_linear(tasks, w, 0.3) for _ in range(runs)]).mean(0)
    target = mu.task_arithmetic(tasks, w)
    # per-entry std of one run is |w x| sqrt((1-d)/d) summed over tasks; 6 sigma of the mean
    sd = torch.stack([(wi * t).abs() for wi, t in zip(w, tasks)]).pow(2).sum(0).sqrt() * math.sqrt(0.7 / 0.3)
    bound = 6 * sd / math.sqrt(runs) + 1e-6
    assert ((ours - target).abs() <= bound).all()
    assert ((theirs - target).abs() <= bound).all()


def test_install_routes_lora_weighted_adapters_through_darex(monkeypatch):
    from peft import LoraConfig, get_peft_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(24, 16)

        def forward(self, x):
            return self.lin(x)

    def merged_weights(install: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = get_peft_model(Tiny(), LoraConfig(r=4, target_modules=["lin"], init_lora_weights=False),
                               adapter_name="t1")
        model.add_adapter("t2", LoraConfig(r=4, target_modules=["lin"], init_lora_weights=False))
        if install:
            dp.install()
        try:
            model.add_weighted_adapter(["t1", "t2"], [1.0, 0.5], "m", combination_type="ties_svd", density=0.5)
        finally:
            if install:
                dp.uninstall()
        return {k: v.clone() for k, v in model.state_dict().items() if ".m." in k or k.endswith(".m.weight")}

    calls = []
    real_topk = dp.topk_mask
    monkeypatch.setattr(dp, "topk_mask", lambda *a, **k: calls.append(1) or real_topk(*a, **k))
    original = mu.ties
    plain = merged_weights(False)
    assert not calls
    ours = merged_weights(True)
    assert calls  # PEFT's merge really ran darex's magnitude selection
    assert mu.ties is original  # uninstall restored PEFT
    assert plain.keys() == ours.keys() and plain
    for k in plain:
        torch.testing.assert_close(ours[k], plain[k], rtol=1e-5, atol=1e-6)


def test_install_replaces_the_module_functions():
    dp.install()
    try:
        assert mu.dare_ties is dp.dare_ties and mu.prune is dp.prune
        import peft.tuners.lora.model as lm

        assert lm.dare_linear is dp.dare_linear
    finally:
        dp.uninstall()
    assert mu.dare_ties is not dp.dare_ties
