"""Per-channel input statistics of Linear layers over calibration batches, via forward hooks.

The mean input per channel feeds analytic q (DAREx Algorithm 3); the squared L2 norm per
channel (its square root) is WANDA's activation norm (``darex_ext.wanda_prune_``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InputStats", "collect_input_stats", "call_model"]


@dataclass
class InputStats:
    """Streaming statistics of one module's input, per channel (the last dimension), float32.

    Attributes:
        count: tokens seen (every leading position of every call counts once).
        mean: signed mean of the input per channel [channels].
        sq_norm: sum over tokens of x^2 per channel [channels] (WANDA's ||X_j||_2^2).
    """

    count: int
    mean: torch.Tensor
    sq_norm: torch.Tensor

    @property
    def l2_norm(self) -> torch.Tensor:
        """||X_j||_2 per channel: the act_norm that ``wanda_prune_`` takes."""
        return self.sq_norm.sqrt()

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        n = flat.shape[0]
        if n == 0:
            return
        total = self.count + n
        # Running mean as mean += (batch mean - mean) * n / total: no float32 sum that grows with
        # the number of tokens, so late batches are not rounded away.
        self.mean += (flat.mean(dim=0) - self.mean) * (n / total)
        self.sq_norm += flat.square().sum(dim=0)
        self.count = total


def call_model(model: nn.Module, batch):
    """model(**batch) for a mapping, model(*batch) for a tuple or list, else model(batch)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _targets(model: nn.Module, modules) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    if modules is None:
        return {n: m for n, m in named.items() if isinstance(m, nn.Linear)}
    if isinstance(modules, Mapping):
        chosen = dict(modules)
    elif isinstance(modules, (str, nn.Module)) or not isinstance(modules, Iterable):
        raise TypeError("modules must be None, a mapping name -> module, or an iterable of module names")
    else:
        chosen = {}
        for name in modules:
            if not isinstance(name, str):
                raise TypeError(f"modules must hold module names (str), got {type(name).__name__}")
            if name not in named:
                raise ValueError(f"model has no module named {name!r}")
            chosen[name] = named[name]
    for name, m in chosen.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"modules[{name!r}] must be an nn.Module, got {type(m).__name__}")
    return chosen


def collect_input_stats(model: nn.Module, batches: Iterable, modules=None) -> dict[str, InputStats]:
    """Run `model` over `batches` and record every chosen module's input statistics.

    Args:
        model: any nn.Module. It runs in eval mode under torch.no_grad(); its training flag is
            restored afterwards.
        batches: iterable of inputs, each passed as in :func:`call_model`.
        modules: None (every nn.Linear), an iterable of module names, or a mapping name -> module.

    Returns:
        module name -> :class:`InputStats` (float32, on the device of the module's input).
        Modules that never ran are left out. Inputs of any leading shape ([tokens, in],
        [batch, seq, in], ...) are flattened to tokens x channels. The hooks are removed even
        if a forward raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    targets = _targets(model, modules)
    stats: dict[str, InputStats] = {}

    def hook_for(name: str):
        def hook(_module, inputs, _output):
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            x = inputs[0]
            if x.dim() == 0 or not x.is_floating_point():
                return
            s = stats.get(name)
            if s is None:
                zeros = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
                s = stats[name] = InputStats(0, zeros, zeros.clone())
            if x.shape[-1] != s.mean.shape[0]:
                raise ValueError(f"module {name!r} saw inputs of {x.shape[-1]} and {s.mean.shape[0]} channels")
            s.update(x)
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in targets.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats
