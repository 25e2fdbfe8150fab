"""Autograd for darex::dare: linear in both inputs, so the backward regenerates the seeded mask
instead of saving it. d out/d finetuned = mask / q, d out/d base = 1 - mask / q."""

from __future__ import annotations

import torch


def _setup_context(ctx, inputs, output):
    _, _, p, seed, offset, q_rows, q = inputs
    ctx.args = (p, seed, offset, q_rows, q)


def _backward(ctx, grad):
    p, seed, offset, q_rows, q = ctx.args
    grad = grad.contiguous()
    # dare(g, 0) = 0 + (g - 0) / q on kept entries, 0 elsewhere: exactly prune(g).
    grad_ft = torch.ops.darex.dare(grad, torch.zeros_like(grad), p, seed, offset, q_rows, q)
    return grad_ft, grad - grad_ft, None, None, None, None, None


torch.library.register_autograd("darex::dare", _backward, setup_context=_setup_context)
