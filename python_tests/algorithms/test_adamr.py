"""AdamR against a step-by-step plain-PyTorch implementation of the DAREx-L2 update."""

from __future__ import annotations

import io
import math

import pytest
import torch

from darex_ext.algorithms import AdamR


def plain_adamr(params, pretrained, grads_per_step, groups, l1, amsgrad):
    """The update written out per tensor, one step at a time. groups: per-param (lr, lam)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    theta = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    t = [0] * len(params)
    for grads in grads_per_step:
        live = [i for i, g in enumerate(grads) if g is not None]
        vhat = {}
        for i in live:
            g = grads[i]
            t[i] += 1
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            vmax[i] = torch.maximum(vmax[i], v[i])
            vhat[i] = (vmax[i] if amsgrad else v[i]) / (1 - beta2 ** t[i])
        total = sum(float(vhat[i].sum()) for i in live)
        count = sum(vhat[i].numel() for i in live)
        s = math.sqrt(total / count) if total > 0 else 1.0
        for i in live:
            lr, lam = groups[i]
            diff = theta[i] - pretrained[i]
            theta[i] = theta[i] - lr * lam * (torch.sign(diff) if l1 else diff) / s
            theta[i] = theta[i] - lr / (1 - beta1 ** t[i]) * m[i] / (torch.sqrt(vhat[i]) + eps)
    return theta


@pytest.mark.parametrize("l1", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_plain_implementation(l1, amsgrad):
    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2, 2), (4,)]
    pre = [torch.randn(s, dtype=torch.float64) for s in shapes]
    params = [(p + 0.3 * torch.randn_like(p)).requires_grad_() for p in pre]
    start = [p.detach().clone() for p in params]
    groups = [(1e-2, 0.5), (1e-2, 0.5), (3e-2, 2.0), (3e-2, 2.0)]
    opt = AdamR([{"params": params[:2]}, {"params": params[2:], "lr": 3e-2, "weight_decay": 2.0}], pre,
                lr=1e-2, weight_decay=0.5, l1=l1, amsgrad=amsgrad)
    steps = []
    for k in range(6):
        grads = [torch.randn(s, dtype=torch.float64) * (1 + k) for s in shapes]
        if k in (2, 4):
            grads[3] = None  # a parameter without a gradient this step: skipped, not in s
        steps.append(grads)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    expected = plain_adamr(start, pre, steps, groups, l1, amsgrad)
    for got, want in zip(params, expected):
        assert torch.allclose(got.detach(), want, rtol=1e-12, atol=1e-12)
    assert opt.state[params[3]]["step"] == 4 and opt.state[params[0]]["step"] == 6


def test_pull_goes_to_pretrained_and_zero_grads_give_s_one():
    pre = [torch.zeros(3, dtype=torch.float64)]
    p = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = AdamR([p], pre, lr=0.1, weight_decay=1.0)
    p.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()  # v_hat = 0 everywhere: s = 1, the Adam step is 0
    assert torch.allclose(p.detach(), torch.tensor([0.9, -1.8, 0.0], dtype=torch.float64))
    opt_l1 = AdamR([p], pre, lr=0.1, weight_decay=1.0, l1=True)
    p.grad = torch.zeros(3, dtype=torch.float64)
    opt_l1.step()
    assert torch.allclose(p.detach(), torch.tensor([0.8, -1.7, 0.0], dtype=torch.float64))


def test_state_dict_round_trip():
    torch.manual_seed(1)
    pre = [torch.randn(4, 3), torch.randn(3)]
    a = [(t + 0.1).requires_grad_() for t in pre]
    b = [x.detach().clone().requires_grad_() for x in a]
    grads = [[torch.randn_like(t) for t in pre] for _ in range(5)]
    opt_a = AdamR(a, pre, lr=1e-2, amsgrad=True)
    for g in grads:
        for p, gg in zip(a, g):
            p.grad = gg
        opt_a.step()
    opt_b = AdamR(b, pre, lr=1e-2, amsgrad=True)
    for g in grads[:3]:
        for p, gg in zip(b, g):
            p.grad = gg
        opt_b.step()
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    state = opt_b.state_dict()
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}  # no pretrained
    buf.seek(0)
    opt_c = AdamR(b, pre, lr=5.0, amsgrad=True)  # hyper-parameters come back from the state dict
    opt_c.load_state_dict(torch.load(buf, weights_only=True))
    for g in grads[3:]:
        for p, gg in zip(b, g):
            p.grad = gg
        opt_c.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_used_in_a_training_loop():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    pre = [p.detach().clone() for p in model.parameters()]
    opt = AdamR(model.parameters(), pre, lr=1e-2, weight_decay=1.0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_bad_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="pretrained has 2"):
        AdamR(p, [torch.zeros(2), torch.zeros(2)])
    with pytest.raises(ValueError, match="shape"):
        AdamR(p, [torch.zeros(3)])
    with pytest.raises(TypeError, match="pretrained"):
        AdamR(p, torch.zeros(2))
    with pytest.raises(TypeError, match=r"pretrained\[0\]"):
        AdamR(p, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="lr"):
        AdamR(p, [torch.zeros(2)], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamR(p, [torch.zeros(2)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        AdamR(p, [torch.zeros(2)], weight_decay=-0.1)
    with pytest.raises(TypeError, match="l1"):
        AdamR(p, [torch.zeros(2)], l1=1)
    opt = AdamR(p, [torch.zeros(2)])
    extra = torch.zeros(3, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    extra.grad = torch.ones(3)
    with pytest.raises(ValueError, match="no pretrained"):
        opt.step()
