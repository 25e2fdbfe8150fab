"""Which tensors a model-level command prunes: presets that follow the papers, plus regexes.

selected = preset(names) ∩ (matches any --include, when given) − (matches any --exclude).
Only floating-point tensors are ever selected; everything else is copied unchanged. A floating
tensor the kernels cannot compute on (float8 and other narrow floats) is refused, naming it,
rather than silently copied: the caller asked for it to be pruned (or merged), so leaving it
alone needs an explicit --exclude.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from ..ops._checks import VALUE_DTYPES

__all__ = ["PRESETS", "PRUNABLE_DTYPES", "preset_matches", "select_names", "compile_patterns"]

PRUNABLE_DTYPES = VALUE_DTYPES
_SHOWN = 5

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
    out, unsupported = [], []
    for name in names:
        if not dtypes[name].is_floating_point or not preset_matches(preset, name):
            continue
        if inc and not any(p.search(name) for p in inc):
            continue
        if any(p.search(name) for p in exc):
            continue
        (out if dtypes[name] in PRUNABLE_DTYPES else unsupported).append(name)
    if unsupported:
        _refuse(unsupported, dtypes)
    return out


def _refuse(names: list[str], dtypes: dict[str, torch.dtype]) -> None:
    kinds = sorted({str(dtypes[n]).replace("torch.", "") for n in names})
    shown = ", ".join(f"{n} ({str(dtypes[n]).replace('torch.', '')})" for n in names[:_SHOWN])
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    hint = ("--exclude '^(" + "|".join(re.escape(n) for n in names) + ")$'") if len(names) <= _SHOWN \
        else "--exclude REGEX (or --include / --preset)"
    raise ValueError(f"{len(names)} selected tensor(s) have a dtype the kernels cannot compute on "
                     f"({', '.join(kinds)}; supported: float32, float64, float16, bfloat16): {shown}{more}; "
                     f"to copy them as they are, exclude them, e.g. {hint}")
