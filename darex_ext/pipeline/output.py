"""Writing results atomically, from one or several workers.

`write_model` fills a model directory whose layout is fixed up front (see writer.py);
`write_delta` collects per-tensor sparse deltas (and tensors stored as they are) into
`delta.safetensors` / `dense.safetensors`. Both build everything in a hidden temporary sibling of
the output and rename it into place only after every worker finished: a failure or a kill leaves
no partial output under the requested name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .._atomic import atomic_dir
from . import _fault
from .workers import SoloGroup, assign
from .writer import FileSlots, Layout, OutEntry, OutFile, create_file, tensor_bytes

__all__ = ["write_model", "write_delta", "DELTA_FILE", "DENSE_FILE", "progress"]

DELTA_FILE = "delta.safetensors"
DENSE_FILE = "dense.safetensors"
_COPY_CHUNK = 64 << 20


def progress(items: Iterable, *, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="tensor", leave=False)


def _copy_side_files(src: str | None, files: Sequence[str], dst: str) -> None:
    for name in files:
        shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def my_share(names: Sequence[str], sizes: Sequence[int], group: SoloGroup) -> list[str]:
    """The names this rank computes, in the order the writers ask for them."""
    return [names[i] for i in assign(list(sizes), group.world)[group.rank]]


def write_model(group: SoloGroup, out: str, layout: Layout, compute: Callable[[str], torch.Tensor], *,
                side_dir: str | None = None, side_files: Sequence[str] = (), overwrite: bool = False,
                show_progress: bool = False, desc: str = "writing") -> dict[str, Any]:
    """Write every tensor of `layout` as `compute(name)` into a new model directory `out`."""
    names = [e.name for f in layout.files for e in f.entries]
    entries = layout.entries()
    mine = my_share(names, [entries[n].nbytes for n in names], group)
    with contextlib.ExitStack() as stack:
        def prepare() -> str | None:
            if group.rank != 0:
                return None
            tmp = stack.enter_context(atomic_dir(out, overwrite=overwrite))
            for f in layout.files:
                create_file(os.path.join(tmp, f.file), f)
            if layout.indexed:
                with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
                    fh.write(layout.index_json())
            _copy_side_files(side_dir, side_files, tmp)
            return tmp

        tmp = group.broadcast(group.phase(prepare))

        def work() -> None:
            # One write in flight while the next tensor is read and computed: pwrite and the
            # kernels release the GIL, so disk writes overlap the reads and the arithmetic.
            # Contract with `compute`: at most two of its results are alive at once (the one
            # being written and the one just computed), so it may reuse a buffer every other call.
            slots = FileSlots(tmp, layout)
            pending = None
            try:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="darex-writer") as writer:
                    for name in progress(mine, total=len(mine), desc=desc,
                                         enabled=show_progress and group.rank == 0):
                        result = compute(name)
                        if pending is not None:
                            pending.result()
                            _fault.tensor_written()
                        pending = writer.submit(slots.write, name, result)
                        del result
                    if pending is not None:
                        pending.result()
                        _fault.tensor_written()
            finally:
                slots.close(sync=group.world > 1)

        group.phase(work)
    return {"tensors": len(names), "bytes": sum(e.nbytes for e in entries.values()), "workers": group.world}


def _append(fd: int, t: torch.Tensor, pos: int) -> int:
    data = tensor_bytes(t)
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], pos + done)
    return len(data)


def write_delta(group: SoloGroup, out: str, names: Sequence[str], sizes: Sequence[int],
                compute: Callable[[str], tuple[str, Any]], *, metadata: dict[str, str],
                side_dir: str | None = None, side_files: Sequence[str] = (), overwrite: bool = False,
                show_progress: bool = False, desc: str = "compressing") -> dict[str, Any]:
    """Write a delta directory: `compute(name)` returns ("delta", SparseDelta), ("dense", tensor)
    to store the tensor as it is, or ("skip", None) when the base already holds it."""
    from .. import storage

    mine = my_share(names, sizes, group)
    order = {n: i for i, n in enumerate(names)}
    with contextlib.ExitStack() as stack:
        def prepare() -> str | None:
            if group.rank != 0:
                return None
            tmp = stack.enter_context(atomic_dir(out, overwrite=overwrite))
            _copy_side_files(side_dir, side_files, tmp)
            return tmp

        tmp = group.broadcast(group.phase(prepare))
        part_bin = os.path.join(tmp, f".dense-part-{group.rank}.bin")
        part_deltas = os.path.join(tmp, f".delta-part-{group.rank}.safetensors")

        def work() -> tuple[dict[str, Any], list[tuple[str, torch.dtype, tuple, int, int]]]:
            deltas: dict[str, Any] = {}
            dense: list[tuple[str, torch.dtype, tuple, int, int]] = []
            fd = os.open(part_bin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pos = 0
                for name in progress(mine, total=len(mine), desc=desc, enabled=show_progress and group.rank == 0):
                    kind, value = compute(name)
                    if kind == "delta":
                        deltas[name] = value
                    elif kind == "dense":
                        n = _append(fd, value, pos)
                        dense.append((name, value.dtype, tuple(value.shape), pos, n))
                        pos += n
                    _fault.tensor_written()
                os.fsync(fd)
            finally:
                os.close(fd)
            if group.world > 1:
                storage.save(part_deltas, deltas)
            return deltas, dense

        deltas, dense = group.phase(work)
        all_dense = group.gather(dense)

        def finish() -> dict[str, Any]:
            if group.rank != 0:
                return {}
            ordered: dict[str, Any] = {}
            with contextlib.ExitStack() as parts:
                if group.world == 1:
                    pool = [deltas]
                else:
                    pool = [parts.enter_context(storage.load(os.path.join(tmp, f".delta-part-{r}.safetensors")))
                            for r in range(group.world)]
                found = {n: src for src in pool for n in src}
                for n in sorted(found, key=order.__getitem__):
                    ordered[n] = found[n][n]
                storage.save(os.path.join(tmp, DELTA_FILE), ordered, metadata=metadata)
            records = sorted(((r, rec) for r, recs in enumerate(all_dense) for rec in recs),
                             key=lambda item: order[item[1][0]])
            if records:
                _gather_dense(tmp, records)
            for r in range(group.world):
                for part in (f".dense-part-{r}.bin", f".delta-part-{r}.safetensors"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(tmp, part))
            return {"deltas": len(ordered), "dense": len(records), "workers": group.world,
                    "bytes": os.path.getsize(os.path.join(tmp, DELTA_FILE))
                    + (os.path.getsize(os.path.join(tmp, DENSE_FILE)) if records else 0)}

        summary = group.phase(finish)
    return summary


def _gather_dense(tmp: str, records) -> None:
    f = OutFile(DENSE_FILE, [OutEntry(name, dtype, shape) for _, (name, dtype, shape, _, _) in records], {"format": "pt"})
    path = os.path.join(tmp, DENSE_FILE)
    create_file(path, f)
    slots = FileSlots(tmp, Layout([f], indexed=False))
    head = slots._slot  # name -> (file, absolute position, entry)
    fd = os.open(path, os.O_WRONLY)
    try:
        for rank, (name, _dtype, _shape, pos, n) in records:
            with open(os.path.join(tmp, f".dense-part-{rank}.bin"), "rb") as src:
                src.seek(pos)
                dst = head[name][1]
                left = n
                while left:
                    chunk = src.read(min(left, _COPY_CHUNK))
                    if not chunk:
                        raise RuntimeError(f"internal error: dense part of rank {rank} is truncated")
                    done = 0
                    while done < len(chunk):
                        done += os.pwrite(fd, chunk[done:], dst + done)
                    dst += len(chunk)
                    left -= len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    slots.close(sync=False)
