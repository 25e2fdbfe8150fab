"""Do two checkpoints fit together, and can this machine run the job? Checked from the headers
and the build alone, before anything is written."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from ..ops import _checks, cuda_built
from .checkpoint import Checkpoint

__all__ = ["CheckpointMismatch", "check_pair", "check_same_tensors", "check_device", "check_drop_rate", "check_q"]

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


def check_device(device) -> str:
    """`device` ("cpu", "cuda" or "cuda:N") as a string, if this build and machine can compute
    there; else ValueError naming --device, so a job fails before it creates anything (the
    kernels would otherwise refuse it halfway, with a temporary output on disk)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device (--device) must be a string, got {type(device).__name__}")
    device = str(device)
    index = device[len("cuda:"):] if device.startswith("cuda:") else None
    if device not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise ValueError(f"device (--device) must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return device
    if not cuda_built():
        raise ValueError(f"device (--device) {device!r} is not usable: this darex_ext build has no CUDA kernels "
                         "(darex_ext.cuda_built() is False); use --device cpu or install a CUDA build")
    if not torch.cuda.is_available():
        raise ValueError(f"device (--device) {device!r} is not usable: no CUDA device is available "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device (--device) {device!r} is not usable: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def check_drop_rate(p, name: str = "p") -> float:
    """A drop rate a job can use: a finite number in [0, 1). ValueError/TypeError naming `name`."""
    value = _checks.real(p, name)
    if not 0.0 <= value < 1.0:  # also rejects NaN and inf
        raise ValueError(f"{name} (the drop rate) must be a finite number in [0, 1), got {value}")
    return value


# A job's q meets tensors of every dtype, so it is held to the narrowest accumulation type
# (float32): the ops' rule (darex_ext.ops._checks.rescale_q) then accepts it for every tensor.
_Q_LO, _Q_HI = _checks.q_bounds(torch.empty(0, dtype=torch.float32))


def check_q(q, name: str = "q") -> float:
    """A rescale q a job can use: finite, > 0 and a normal float32 (so 1/q is finite for every
    tensor dtype). ValueError/TypeError naming `name`."""
    value = _checks.real(q, name)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if not _Q_LO <= value <= _Q_HI:
        raise ValueError(f"{name} must be in [{_Q_LO:.8g}, {_Q_HI:.8g}] (a normal float32, so 1/q is finite "
                         f"for every tensor dtype), got {value}")
    return value
