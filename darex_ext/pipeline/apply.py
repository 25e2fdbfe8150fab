"""`darex apply`: rebuild a model from a base checkpoint and a delta directory.

The delta's metadata records the fine-tuned model's layout (shards, names, order), so the
rebuilt directory has the same files as `darex prune --format dense` would have written, byte
for byte: per tensor, `base.add_(delta)` for a stored delta, the stored tensor for one kept as
it was, or the base tensor where the fine-tune did not change it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from .. import storage
from ._malloc import fixed_mmap_threshold
from .checkpoint import Checkpoint
from .compat import CheckpointMismatch, check_device
from ..io.safetensors import read_header
from ..storage.errors import FormatError
from .output import DELTA_FILE, DENSE_FILE, DENSE_KEY, write_model
from .workers import run_workers
from .writer import Layout

__all__ = ["apply_delta", "delta_paths"]


def delta_paths(path: str) -> tuple[str, str | None, str | None]:
    """(delta.safetensors, dense.safetensors or None, directory for side files or None).

    A delta is a directory (`darex prune --format ...` output). Its delta.safetensors given as a
    file means that directory. Any other file is accepted only when its metadata says that
    nothing was stored beside it: a delta file without its dense.safetensors would silently give
    the base's values for the tensors kept there.
    """
    if os.path.isfile(path) and os.path.basename(path) == DELTA_FILE:
        path = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        delta = os.path.join(path, DELTA_FILE)
        if not os.path.isfile(delta):
            raise FileNotFoundError(f"{path}: no {DELTA_FILE} (is it a darex delta directory?)")
        dense = os.path.join(path, DENSE_FILE)
        return delta, (dense if os.path.isfile(dense) else None), path
    if os.path.isfile(path):
        stored = _dense_names(path)
        if stored is None or stored:
            what = f"{len(stored)} tensors stored in its {DENSE_FILE}" if stored else "no record of its dense tensors"
            raise ValueError(f"{path}: a delta file apart from its directory ({what}); pass the delta directory")
        return path, None, None
    raise FileNotFoundError(f"{path}: no such file or directory")


def _dense_names(delta_file: str) -> list[str] | None:
    """The tensors the delta file says are in dense.safetensors; None for files written before
    darex recorded them."""
    _infos, meta = read_header(delta_file)
    text = meta.get(DENSE_KEY)
    if text is None:
        return None
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FormatError(f"{delta_file}: malformed {DENSE_KEY} metadata")
    return names


def _side_files(directory: str | None) -> list[str]:
    if directory is None:
        return []
    return sorted(e for e in os.listdir(directory) if os.path.isfile(os.path.join(directory, e))
                  and not e.startswith(".") and e not in (DELTA_FILE, DENSE_FILE))


def _check(base: Checkpoint, layout: Layout, stored: set[str]) -> None:
    problems = []
    for name, e in layout.entries().items():
        if name in stored:
            continue
        info = base.infos.get(name)
        if info is None:
            problems.append(f"{name}: missing from the base")
        elif info.dtype != e.dtype or info.shape != e.shape:
            problems.append(f"{name}: {info.dtype}{tuple(info.shape)} in the base but "
                            f"{e.dtype}{tuple(e.shape)} in the delta")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointMismatch("the base does not match the delta: " + "; ".join(problems[:5]) + more)


def _open(base: str, delta: str):
    delta_file, dense_file, side_dir = delta_paths(delta)
    deltas = storage.load(delta_file)
    try:
        return _check_delta(base, delta_file, dense_file, side_dir, deltas)
    except BaseException:
        deltas.close()
        raise


def _check_delta(base: str, delta_file: str, dense_file: str | None, side_dir: str | None, deltas):
    layout_json = (deltas.metadata or {}).get("darex.layout")
    if not layout_json:
        raise ValueError(f"{delta_file}: no darex.layout metadata (not written by darex prune)")
    layout = Layout.from_json(layout_json)
    dense = Checkpoint(dense_file) if dense_file else None
    b = Checkpoint(base)
    stored = set(dense.infos) if dense else set()
    recorded = _dense_names(delta_file)
    if recorded is not None and set(recorded) != stored:
        missing = sorted(set(recorded) - stored)
        raise FormatError(f"{dense_file or os.path.join(os.path.dirname(delta_file), DENSE_FILE)}: "
                          + (f"missing {len(missing)} tensors the delta file records (e.g. {missing[0]!r})"
                             if missing else "holds tensors the delta file does not record"))
    entries = layout.entries()
    unknown = [n for n in list(deltas) + sorted(stored) if n not in entries]
    if unknown:
        raise FormatError(f"{delta_file}: tensors not in its layout: {unknown[:5]}")
    for name in sorted(stored):
        info, e = dense.infos[name], entries[name]
        if (info.dtype, info.shape) != (e.dtype, e.shape):
            raise FormatError(f"{dense_file}: {name} is {info.dtype}{info.shape}, the layout says {e.dtype}{e.shape}")
    _check(b, layout, stored)
    for name in deltas:
        e, d = entries[name], deltas[name]
        if tuple(d.shape) != e.shape or d.dtype != e.dtype:
            raise FormatError(f"{name}: delta is {d.dtype}{tuple(d.shape)}, layout says {e.dtype}{e.shape}")
    return b, deltas, dense, layout, side_dir


def _job(group, base: str, delta: str, out: str, device: str, overwrite: bool, show_progress: bool) -> dict[str, Any]:
    fixed_mmap_threshold()
    start = time.perf_counter()
    b, deltas, dense, layout, side_dir = _open(base, delta)
    dev = torch.device(device)

    def compute(name: str) -> torch.Tensor:
        if dense is not None and name in dense:
            return dense.get(name)
        t = b.get(name)
        if name in deltas:
            # The scatter-add runs where --device says; CPU and CUDA kernels give the same bits.
            t = deltas[name].to(dev).add_to_(t.to(dev)).cpu()
        return t

    try:
        summary = write_model(group, out, layout, compute, side_dir=side_dir, side_files=_side_files(side_dir),
                              overwrite=overwrite, show_progress=show_progress, desc="applying")
    finally:
        deltas.close()
    summary["seconds"] = time.perf_counter() - start
    return summary


def apply_delta(base: str | os.PathLike, delta: str | os.PathLike, out: str | os.PathLike, *,
                workers: int = 1, device: str = "cpu", overwrite: bool = False,
                show_progress: bool = False) -> dict[str, Any]:
    """Write base + delta as a model directory `out` (layout of the model the delta came from).
    `device` ("cpu", "cuda", "cuda:N") is where the deltas are added onto the base tensors."""
    base, delta, out = os.fspath(base), os.fspath(delta), os.fspath(out)
    device = check_device(device)
    _b, deltas, _dense, _layout, _side = _open(base, delta)  # fail before any worker starts
    deltas.close()
    return run_workers(_job, (base, delta, out, device, overwrite, show_progress), workers=workers, device=device,
                       output=(out, overwrite))
