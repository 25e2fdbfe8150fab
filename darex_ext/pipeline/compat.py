"""Do two checkpoints fit together? Checked from the headers alone, before anything is written."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .checkpoint import Checkpoint

__all__ = ["CheckpointMismatch", "check_pair", "check_same_tensors"]

_SHOWN = 5
# Tensors with one row per token: a resized vocabulary shows up as a different row count here.
_VOCAB = re.compile(r"embed|lm_head|wte|word_embeddings|shared\.weight|output\.weight")


class CheckpointMismatch(ValueError):
    """The checkpoints do not have the same tensors (names, shapes or dtypes)."""


def _describe(name: str, a_label: str, a, b_label: str, b) -> str:
    if a.dtype != b.dtype:
        return f"{name}: dtype {a.dtype} in {a_label} but {b.dtype} in {b_label}"
    if len(a.shape) == len(b.shape) == 2 and a.shape[1:] == b.shape[1:] and _VOCAB.search(name):
        lo, hi = sorted((a.shape[0], b.shape[0]))
        return (f"{name}: vocabulary resized, {a.shape[0]} rows in {a_label} but {b.shape[0]} in "
                f"{b_label} (rows {lo}..{hi - 1} differ)")
    return f"{name}: shape {tuple(a.shape)} in {a_label} but {tuple(b.shape)} in {b_label}"


def _raise(problems: list[str], what: str) -> None:
    if not problems:
        return
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    raise CheckpointMismatch(f"{what}: " + "; ".join(problems[:_SHOWN]) + more)


def check_same_tensors(ref: Checkpoint, ref_label: str, other: Checkpoint, other_label: str,
                       names: Sequence[str]) -> None:
    """Every name in `names` exists in both with the same shape and dtype."""
    problems = []
    for name in names:
        if name not in ref:
            problems.append(f"{name}: missing from {ref_label}")
        elif name not in other:
            problems.append(f"{name}: missing from {other_label}")
        else:
            a, b = ref.infos[name], other.infos[name]
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(_describe(name, ref_label, a, other_label, b))
    _raise(problems, f"{ref_label} and {other_label} do not match")


def check_pair(base: Checkpoint, finetuned: Checkpoint, selected: Sequence[str]) -> list[str]:
    """Prune's check: every selected tensor exists in both with the same shape and dtype, and no
    tensor present in both differs in shape or dtype. Returns notes (tensors only in one side)."""
    problems = []
    selected_set = set(selected)
    for name in selected:
        if name not in base:
            problems.append(f"{name}: in the fine-tuned model but not in the base (exclude it, "
                            f"e.g. --exclude or --preset encoder for a task head)")
    for name, b in finetuned.infos.items():
        a = base.infos.get(name)
        if a is not None and (a.dtype != b.dtype or a.shape != b.shape):
            problems.append(_describe(name, "base", a, "fine-tuned", b))
    _raise(problems, "base and fine-tuned checkpoints do not match")
    notes = []
    only_ft = [n for n in finetuned.infos if n not in base and n not in selected_set]
    only_base = [n for n in base.infos if n not in finetuned]
    if only_ft:
        notes.append(f"{len(only_ft)} tensor(s) only in the fine-tuned model, copied as they are: "
                     + ", ".join(only_ft[:_SHOWN]) + (" ..." if len(only_ft) > _SHOWN else ""))
    if only_base:
        notes.append(f"{len(only_base)} tensor(s) only in the base model, ignored: "
                     + ", ".join(only_base[:_SHOWN]) + (" ..." if len(only_base) > _SHOWN else ""))
    return notes
