"""Learned per-layer q (DAREx ``perlayer_opt.py`` with ``BinaryDiff``): one trained rescale per Linear.

Each selected nn.Linear of the fine-tuned model is pruned with darex's seeded DARE mask and
rescaled by its own q = |coeff| + (1 - p). Only the coefficients train, against the fine-tuned
model's own outputs (label-free), so unlabeled batches are enough. The q's come back as a map
that ``dare_model`` applies like any other q map, giving the model the training evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, islice
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from ..ops import _checks, keep_mask
from ..seeds import tensor_seed
from . import _args
from .analytic_q import AnalyticQMap
from .input_stats import call_model
from .q_search import _last_hidden

__all__ = ["LearnedQMap", "LearnedQStep", "learn_layer_q"]


class LearnedQStep(NamedTuple):
    """One training step: its index (0-based), the training batch's loss, and the mean loss
    over the validation batches when the step was validated (else None)."""

    step: int
    train_loss: float
    val_loss: float | None


class LearnedQMap(AnalyticQMap):
    """parameter name -> learned q (a float), as ``dare_model`` takes it.

    Attributes (besides :class:`AnalyticQMap`'s ``sources``, ``layer_q`` and ``fill``, which
    stays None):
        sources: "learned" for a Linear weight, "learned bias" for its bias (the same q).
        layer_q: Linear module name -> its q = |coeff| + (1 - p).
        coeffs: Linear module name -> the returned coefficient itself.
        history: every training step as :class:`LearnedQStep`.
        best_step: the step whose coefficients were returned.
        best_val_loss: their validation loss (None without validation batches).
        stopped_early: whether early stopping ended the run.
    """

    def __init__(self):
        super().__init__()
        self.coeffs: dict[str, float] = {}
        self.history: list[LearnedQStep] = []
        self.best_step: int | None = None
        self.best_val_loss: float | None = None
        self.stopped_early = False


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # The dare kernel's accumulation type (csrc/common/dare_math.h, acc_of).
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class _Pruned:
    """One pruned tensor, ready to be rebuilt for any q exactly as the ``dare`` kernel writes it."""

    name: str
    keep: torch.Tensor      # darex's seeded DARE mask of this name
    base: torch.Tensor      # in the fine-tuned dtype: the bits a dropped entry keeps
    base_acc: torch.Tensor  # the same in the accumulation type
    delta: torch.Tensor     # finetuned - base in the accumulation type

    def value(self, q: torch.Tensor) -> torch.Tensor:
        # dare_value: base + (ft - base) * (1/q) in the accumulation type, one rounding to the
        # dtype; 1/q is one division of q rounded to that type. Dropped entries are base itself.
        inv_q = torch.reciprocal(q.to(self.delta.device, self.delta.dtype))
        kept = (self.base_acc + self.delta * inv_q).to(self.base.dtype)
        return torch.where(self.keep, kept, self.base)


@dataclass
class _Layer:
    module: str
    weight: _Pruned
    bias: _Pruned | None


def _layers(finetuned: nn.Module, base: nn.Module, p: float, seed: int,
            include: Callable[[str], bool] | None, mask_spec: str) -> list[_Layer]:
    # Names come from named_parameters() (tied tensors once, under their first name), as in
    # dare_model, so a tied Linear weight is trained and pruned under one name only.
    ft_params = dict(finetuned.named_parameters())
    base_params = dict(base.named_parameters())

    def pruned(name: str) -> _Pruned | None:
        ft, other = ft_params.get(name), base_params.get(name)
        if ft is None or other is None or other.shape != ft.shape or not ft.is_floating_point():
            return None
        if include is not None and not include(name):
            return None
        with torch.no_grad():
            ft = ft.detach()
            b = other.detach().to(ft.device, ft.dtype)
            acc = _acc_dtype(ft.dtype)
            b_acc = b.to(acc)
            mask = keep_mask(ft, p, seed=tensor_seed(seed, name), mask=mask_spec)
            return _Pruned(name, mask, b, b_acc, ft.to(acc) - b_acc)

    layers = []
    for module_name, module in finetuned.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = pruned(prefix + "weight")
        if weight is None:
            continue
        bias = pruned(prefix + "bias") if module.bias is not None else None
        layers.append(_Layer(module_name, weight, bias))
    return layers


def _target(out, top_k: int | None):
    """What the loss compares against, kept small: the fine-tuned logits' top-k (indices and
    values) for outputs with ``logits``, else the last hidden state."""
    logits = getattr(out, "logits", None)
    if logits is not None and top_k is not None:
        values, idx = logits.detach().float().topk(min(top_k, logits.shape[-1]), dim=-1)
        return idx, values
    return None, _last_hidden(out).detach().float()


def _loss(out, target) -> torch.Tensor:
    # The arithmetic of q_search.output_change (its _compare), so validation losses equal
    # output_change of the dare_model the q's give.
    idx, ref = target
    if idx is not None:
        return (ref - out.logits.float().gather(-1, idx)).square().mean()
    return (ref - _last_hidden(out).float()).abs().mean()


def _batches_arg(batches, name: str) -> Iterator:
    if isinstance(batches, (torch.Tensor, Mapping, str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(f"{name} must be an iterable of batches (e.g. a list), got {type(batches).__name__}")
    it = iter(batches)
    first = next(it, _EMPTY)
    if first is _EMPTY:
        raise ValueError(f"{name} must hold at least one batch")
    return chain((first,), it)


_EMPTY = object()


def learn_layer_q(finetuned: nn.Module, base: nn.Module, batches: Iterable, p: float, *,
                  val_batches: Iterable | None = None, seed: int = 0, lr: float = 1e-2, t_max: int = 200,
                  weight_decay: float = 0.01, eval_every: int = 10, patience: int = 5,
                  max_steps: int | None = None, top_k: int | None = 5, init: float = 1e-4,
                  include: Callable[[str], bool] | None = None, mask: str = "skip") -> LearnedQMap:
    """Learn one q per Linear by gradient descent (vengdeng/DAREx ``perlayer_opt.py``,
    ``utils/resserve.py`` ``BinaryDiff``).

    Every nn.Linear whose weight both models share (same name and shape; ``include(name)``
    narrows it) gets one float32 coefficient, initially `init`; its weight becomes
    ``W_base + drop(W_ft - W_base) / q`` with ``q = |coeff| + (1 - p)`` and the mask of
    ``dare_model(..., seed=seed)`` (``keep_mask`` with ``tensor_seed(seed, name)``). Everything
    else keeps its fine-tuned value. The loss is label-free: the MSE of the logits at the
    fine-tuned model's top-`top_k` tokens for outputs with ``logits``, else (encoders, or
    ``top_k=None``) the mean absolute change of the last hidden state, over every position
    (padding included, as published). Only the coefficients train: AdamW (`lr`,
    `weight_decay`, default betas), ``CosineAnnealingLR(T_max=t_max)`` stepped every batch, one
    pass over `batches` (at most `max_steps`). After step s with ``s % eval_every == 0`` the
    mean loss over `val_batches` is measured; after `patience` validations in a row that are
    worse than the best (a tie counts as an improvement, a NaN does not), training stops.

    Neither model is modified or copied: the pruned forward is ``torch.func.functional_call``
    on `finetuned` (in eval mode for the run, its mode restored after) with rebuilt Linear
    tensors, and the reference forward is `finetuned` itself under no_grad. Memory: per pruned
    tensor its mask, base and delta.

    Deliberate deviations from the published script:

    - The validation loss is the mean over all validation batches (the script keeps the last
      batch's loss only), and the best validated coefficients are returned (the script saves
      them but goes on with the last ones). A run whose last step was not validated is
      validated once more at its end, so the final coefficients compete too.
    - Biases: the script keeps the fine-tuned bias unpruned. Here a Linear's bias, when both
      models share it and `include` admits it, is pruned and rescaled with its layer's q during
      training, and the map gives it that q, so ``dare_model`` prunes it the same way.
    - The pruned weight is formed densely with the ``dare`` kernel's arithmetic (float32, or
      float64 for float64 tensors; one rounding to the dtype) and the masks are darex's seeded
      masks, so ``dare_model(finetuned, base, p, q_map, seed=seed, include=q_map.__contains__)``
      rebuilds, bit for bit, the model whose losses were measured. ``include`` matters when
      other tensors are shared (embeddings, norms, heads): they stay fine-tuned here, as
      published, while ``dare_model`` without ``include`` would prune them with 1 - p (and warn).
    - Every shared Linear is trained, not only those under "mlp" / "self_attn" (pass
      ``include=lambda n: "mlp" in n or "self_attn" in n`` for the published selection).
    - Without `val_batches` there is no validation and no early stopping; the last
      coefficients are returned.

    Args:
        finetuned, base: the same architecture, on any device (each pruned tensor stays on its
            fine-tuned device; the coefficients live on the first one's).
        batches: iterable of training inputs, each passed as in ``call_model`` (a mapping ->
            model(**batch), a tuple -> model(*batch), else model(batch)), on the model's device.
            Consumed once.
        p: drop rate in (0, 1).
        val_batches: inputs for validation and early stopping (re-used every validation), or None.
        seed: the mask seed (an int), the same as ``dare_model``'s.
        lr, weight_decay: AdamW's; lr > 0, weight_decay >= 0.
        t_max: the cosine schedule's period in steps, >= 1.
        eval_every: validate after steps 0, eval_every, 2 * eval_every, ...; >= 1.
        patience: worse validations in a row that stop the run, >= 1.
        max_steps: at most this many training steps (None: all of `batches`).
        top_k: k of the logit MSE (>= 1), or None to compare last hidden states.
        init: the coefficients' initial value (the published 1e-4).
        include: optional predicate on parameter names.
        mask: the mask spec, "skip" (version 2, default) or "philox" (version 1), the same as
            ``dare_model``'s.

    Returns:
        :class:`LearnedQMap`: parameter name -> q for every trained weight and bias, with
        ``layer_q``, ``coeffs``, ``history``, ``best_step``, ``best_val_loss`` and ``stopped_early``.

    Raises:
        TypeError / ValueError naming the argument; ValueError when no Linear weight is shared.
    """
    for model, name in ((finetuned, "finetuned"), (base, "base")):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    p = _args.open_unit(p, "p")
    if isinstance(seed, torch.Generator):
        raise TypeError("seed must be an int (a generator would give dare_model other masks)")
    tensor_seed(seed, "")  # validates the seed
    lr = _args.positive(lr, "lr")
    weight_decay = _args.non_negative(weight_decay, "weight_decay")
    t_max = _args.count(t_max, "t_max", 1)
    eval_every = _args.count(eval_every, "eval_every", 1)
    patience = _args.count(patience, "patience", 1)
    if max_steps is not None:
        max_steps = _args.count(max_steps, "max_steps", 1)
    if top_k is not None:
        top_k = _args.count(top_k, "top_k", 1)
    init = _args.number(init, "init")
    if include is not None and not callable(include):
        raise TypeError(f"include must be callable or None, got {type(include).__name__}")
    train_iter = _batches_arg(batches, "batches")
    val = None if val_batches is None else list(_batches_arg(val_batches, "val_batches"))

    _checks.mask_spec(mask)
    layers = _layers(finetuned, base, p, seed, include, mask)
    if not layers:
        raise ValueError("finetuned and base share no nn.Linear weight of the same name and shape"
                         + ("" if include is None else " that include() admits"))

    device = layers[0].weight.base.device
    coeffs = torch.full((len(layers),), init, dtype=torch.float32, device=device, requires_grad=True)
    rate = torch.tensor(1.0 - p, dtype=torch.float32, device=device)
    frozen = {n: t.detach() for n, t in finetuned.named_parameters()}

    def pruned_params(c: torch.Tensor) -> dict[str, torch.Tensor]:
        q = c.abs() + rate
        params = dict(frozen)
        for i, layer in enumerate(layers):
            for piece in (layer.weight, layer.bias):
                if piece is not None:
                    params[piece.name] = piece.value(q[i])
        return params

    def pruned_forward(params):
        return lambda *args, **kwargs: functional_call(finetuned, params, args, kwargs)

    optimizer = torch.optim.AdamW([coeffs], lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    result = LearnedQMap()
    best = coeffs.detach().clone()
    best_loss: float | None = None
    worse = 0

    was_training = finetuned.training
    finetuned.eval()
    try:
        with torch.no_grad():
            val_targets = None if val is None else [_target(call_model(finetuned, b), top_k) for b in val]

        def validate() -> float:
            with torch.no_grad():
                forward = pruned_forward(pruned_params(coeffs.detach()))
                total = 0.0
                for b, target in zip(val, val_targets):
                    total += float(_loss(call_model(forward, b), target))
            return total / len(val)

        def record(loss: float) -> bool:
            """Early stopping on one validation; True when the run should stop."""
            nonlocal best, best_loss, worse
            step = result.history[-1].step
            result.history[-1] = result.history[-1]._replace(val_loss=loss)
            # A tie is an improvement, as published; a NaN is not (the published `score < best` takes it).
            if best_loss is None or math.isnan(best_loss) or loss <= best_loss:
                best, best_loss, worse = coeffs.detach().clone(), loss, 0
                result.best_step, result.best_val_loss = step, loss
                return False
            worse += 1
            return worse >= patience

        with torch.enable_grad():
            for step, batch in enumerate(islice(train_iter, max_steps)):
                with torch.no_grad():
                    target = _target(call_model(finetuned, batch), top_k)
                optimizer.zero_grad(set_to_none=True)
                loss = _loss(call_model(pruned_forward(pruned_params(coeffs)), batch), target)
                loss.backward()
                optimizer.step()
                scheduler.step()
                result.history.append(LearnedQStep(step, float(loss.detach()), None))
                if val is not None and step % eval_every == 0 and record(validate()):
                    result.stopped_early = True
                    break
        if val is None:
            best, result.best_step = coeffs.detach().clone(), result.history[-1].step
        elif not result.stopped_early and result.history[-1].val_loss is None:
            record(validate())
    finally:
        finetuned.train(was_training)

    q = best.abs() + rate
    for i, layer in enumerate(layers):
        value = float(q[i])
        result.layer_q[layer.module] = value
        result.coeffs[layer.module] = float(best[i])
        result.put(layer.weight.name, value, "learned")
        if layer.bias is not None:
            result.put(layer.bias.name, value, "learned bias")
    return result
