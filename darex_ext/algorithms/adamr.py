"""AdamR (DAREx-L2): Adam with a decoupled, Adam-scaled pull toward the pretrained weights.

Fine-tuning with it keeps the delta small and spread out, which is what lets DARE drop 99% of it
(DAREx, Deng et al. 2025). Per step t, for every parameter theta with a gradient g:

    m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2   (amsgrad: v_max = max(v_max, v))
    v_hat = v / (1 - beta2^t)      (amsgrad: v_max / (1 - beta2^t))
    s = sqrt(mean of v_hat over all elements of all parameters with a gradient), 1 if that is 0
    theta -= lr * lambda * (theta - theta_pre) / s      (l1: sign(theta - theta_pre) / s)
    theta -= lr / (1 - beta1^t) * m / (sqrt(v_hat) + eps)

with lambda = weight_decay. Dividing the pull by s puts it on the scale of Adam's normalized
steps, so lambda means the same whatever the gradients' magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from . import _args

__all__ = ["AdamR"]


class AdamR(torch.optim.Optimizer):
    """DAREx-L2 optimizer (the update is in the module docstring).

    Args:
        params: parameters or parameter groups, as for torch.optim.Adam.
        pretrained: tensors aligned with the parameters in order (all groups, in order), same
            shapes. Kept by reference when device and dtype already match, else converted once
            here; never copied per step.
        lr, betas, eps: as Adam.
        weight_decay: lambda, the strength of the pull toward `pretrained` (>= 0).
        l1: pull with sign(theta - theta_pre) (DAREx-L1) instead of theta - theta_pre.
        amsgrad: use the running maximum of v, as Adam's amsgrad.

    Implementation: multi-tensor (torch._foreach_*) over the parameters of each device and
    dtype; one host sync per step (s is a single number across all parameters). The state dict
    holds m, v (and v_max) and the step per parameter, and the hyper-parameters per group; the
    pretrained tensors are NOT in it: build the optimizer with them again, then
    ``load_state_dict``.
    """

    def __init__(self, params, pretrained: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-4,
                 l1: bool = False, amsgrad: bool = False):
        lr = _args.non_negative(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        for i, b in enumerate(betas):
            b = _args.number(b, f"betas[{i}]")
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        eps = _args.non_negative(eps, "eps")
        weight_decay = _args.non_negative(weight_decay, "weight_decay")
        for flag, name in ((l1, "l1"), (amsgrad, "amsgrad")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay,
                        l1=l1, amsgrad=amsgrad)
        super().__init__(params, defaults)
        if isinstance(pretrained, torch.Tensor):
            raise TypeError("pretrained must be a sequence of tensors aligned with params, not one tensor")
        pre = list(pretrained)
        flat = [p for g in self.param_groups for p in g["params"]]
        if len(pre) != len(flat):
            raise ValueError(f"pretrained has {len(pre)} tensors but there are {len(flat)} parameters")
        self._pretrained: dict[torch.Tensor, torch.Tensor] = {}
        for i, (p, t) in enumerate(zip(flat, pre)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"pretrained[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if t.shape != p.shape:
                raise ValueError(f"pretrained[{i}] has shape {tuple(t.shape)}, its parameter {tuple(p.shape)}")
            self._pretrained[p] = t.detach().to(device=p.device, dtype=p.dtype)

    def _buckets(self, group) -> dict[tuple, dict[str, list]]:
        # Parameters with a gradient, split by (device, dtype) for the foreach kernels.
        out: dict[tuple, dict[str, list]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamR does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            b = out.setdefault((p.device, p.dtype), {k: [] for k in ("p", "g", "m", "v", "vmax", "pre", "t")})
            b["p"].append(p)
            b["g"].append(p.grad)
            b["m"].append(state["exp_avg"])
            b["v"].append(state["exp_avg_sq"])
            if group["amsgrad"]:
                b["vmax"].append(state["max_exp_avg_sq"])
            pre = self._pretrained.get(p)
            if pre is None:
                raise ValueError("a parameter added after construction (add_param_group) has no pretrained "
                                 "tensor; build AdamR with all parameters and their pretrained values")
            b["pre"].append(pre)
            b["t"].append(state["step"])
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # (group, bucket, the v used for v_hat, per-tensor 1 - beta2^t)
        vhat_sums: list[torch.Tensor] = []
        count = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for b in self._buckets(group).values():
                torch._foreach_mul_(b["m"], beta1)
                torch._foreach_add_(b["m"], b["g"], alpha=1.0 - beta1)
                torch._foreach_mul_(b["v"], beta2)
                torch._foreach_addcmul_(b["v"], b["g"], b["g"], value=1.0 - beta2)
                v_used = b["v"]
                if group["amsgrad"]:
                    torch._foreach_maximum_(b["vmax"], b["v"])
                    v_used = b["vmax"]
                bc2 = [1.0 - beta2 ** t for t in b["t"]]
                # sum(v_hat) per tensor = ||v||_1 / (1 - beta2^t), v >= 0; one sum per bucket.
                norms = torch.stack(torch._foreach_norm(v_used, 1)).to(torch.float64)
                vhat_sums.append((norms / torch.tensor(bc2, dtype=torch.float64, device=norms.device)).sum())
                count += sum(p.numel() for p in b["p"])
                work.append((group, b, v_used, bc2))
        if not work:
            return loss
        mean_vhat = sum(float(x) for x in vhat_sums) / count if count else 0.0
        s = math.sqrt(mean_vhat) if mean_vhat > 0.0 else 1.0
        for group, b, v_used, bc2 in work:
            lr, eps, lam = group["lr"], group["eps"], group["weight_decay"]
            beta1 = group["betas"][0]
            pull = lr * lam / s
            if pull != 0.0:
                if group["l1"]:
                    # sign() needs the difference materialized: one temporary per step (L1 only).
                    direction = torch._foreach_sub(b["p"], b["pre"])
                    torch._foreach_sign_(direction)
                    torch._foreach_add_(b["p"], direction, alpha=-pull)
                else:
                    # theta + pull * (theta_pre - theta), without a temporary.
                    torch._foreach_lerp_(b["p"], b["pre"], pull)
            denom = torch._foreach_sqrt(v_used)
            torch._foreach_div_(denom, [math.sqrt(c) for c in bc2])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(b["p"], b["m"], denom, [-lr / (1.0 - beta1 ** t) for t in b["t"]])
        return loss
