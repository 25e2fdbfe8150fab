"""Which tensors a model-level command prunes: presets that follow the papers, plus regexes.

selected = preset(names) ∩ (matches any --include, when given) − (matches any --exclude).
Only floating-point tensors are ever selected; everything else is copied unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

__all__ = ["PRESETS", "preset_matches", "select_names", "compile_patterns"]

# Task heads that a fine-tune adds on top of an encoder (BERT/RoBERTa/DistilBERT/Llama-for-
# classification names); the DARE paper prunes everything else.
_HEAD = re.compile(r"(^|\.)(pre_classifier|classifier|qa_outputs|score)(\.|$)")
# Decoder LMs: only the transformer blocks' attention and MLP parameters; embeddings, norms and
# lm_head stay as fine-tuned (norm weights inside attention, e.g. Qwen3's q_norm, too).
_BLOCK = re.compile(r"(^|\.)(mlp|self_attn)\.")
_NORM = re.compile(r"norm", re.IGNORECASE)

PRESETS = ("all", "encoder", "decoder")


def preset_matches(preset: str, name: str) -> bool:
    if preset == "all":
        return True
    if preset == "encoder":
        return _HEAD.search(name) is None
    if preset == "decoder":
        return _BLOCK.search(name) is not None and _NORM.search(name) is None
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


def compile_patterns(patterns: Iterable[str] | None, what: str) -> list[re.Pattern]:
    out = []
    for pattern in patterns or ():
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{what} regex {pattern!r} is invalid: {exc}") from None
    return out


def select_names(names: Sequence[str], dtypes: dict[str, torch.dtype], *, preset: str = "all",
                 include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> list[str]:
    """The names (in the given order) that a prune/merge transforms."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    inc = compile_patterns(include, "--include")
    exc = compile_patterns(exclude, "--exclude")
    out = []
    for name in names:
        if not dtypes[name].is_floating_point or not preset_matches(preset, name):
            continue
        if inc and not any(p.search(name) for p in inc):
            continue
        if any(p.search(name) for p in exc):
            continue
        out.append(name)
    return out
