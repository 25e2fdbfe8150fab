"""Writing results atomically, from one or several workers.

`write_model` fills a model directory whose layout is fixed up front (see writer.py);
`write_delta` collects per-tensor sparse deltas (and tensors stored as they are) into
`delta.safetensors` / `dense.safetensors`. Both build everything in a hidden temporary sibling of
the output and rename it into place only after every worker finished: a failure or a kill leaves
no partial output under the requested name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..io.atomic import atomic_dir
from ..io.safetensors import pwrite_all, tensor_bytes
from . import _fault
from .workers import SoloGroup, assign
from .writer import FileSlots, Layout, OutEntry, OutFile, create_file, verify_files

__all__ = ["write_model", "write_delta", "DELTA_FILE", "DENSE_FILE", "DENSE_KEY", "progress"]

DELTA_FILE = "delta.safetensors"
DENSE_FILE = "dense.safetensors"
DENSE_KEY = "darex.dense"  # delta-file metadata: JSON list of the tensors in DENSE_FILE
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
            tmp = group.staging or stack.enter_context(atomic_dir(out, overwrite=overwrite))
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
        # Nothing is published unless every file reads back as planned.
        group.phase(lambda: verify_files(tmp, layout) if group.rank == 0 else None)
    return {"tensors": len(names), "bytes": sum(e.nbytes for e in entries.values()), "workers": group.world}


def _append(fd: int, t: torch.Tensor, pos: int) -> int:
    return pwrite_all(fd, tensor_bytes(t), pos)


def write_delta(group: SoloGroup, out: str, names: Sequence[str], sizes: Sequence[int],
                compute: Callable[[str], tuple[str, Any]], *, metadata: dict[str, str],
                side_dir: str | None = None, side_files: Sequence[str] = (), overwrite: bool = False,
                show_progress: bool = False, desc: str = "compressing", record_dense: bool = False) -> dict[str, Any]:
    """Write a delta directory: `compute(name)` returns ("delta", SparseDelta), ("dense", tensor)
    to store the tensor as it is, or ("skip", None) when the base already holds it.

    record_dense: add to the delta file's metadata (DENSE_KEY) the names of the tensors stored
    in dense.safetensors, so `apply` can refuse a delta file separated from them instead of
    silently taking the base's values for them.

    Each result is appended to this rank's part file as soon as it is computed and then dropped,
    so memory holds one tensor, never the whole compressed model (at p = 0.9 in bf16 a bitmask
    delta is 16% of the model). Rank 0 then writes the final files from the parts: the header
    records travel between ranks, the bytes are copied from disk.
    """
    from ..storage.files import delta_record, write_file

    mine = my_share(names, sizes, group)
    order = {n: i for i, n in enumerate(names)}
    with contextlib.ExitStack() as stack:
        def prepare() -> str | None:
            if group.rank != 0:
                return None
            tmp = group.staging or stack.enter_context(atomic_dir(out, overwrite=overwrite))
            _copy_side_files(side_dir, side_files, tmp)
            return tmp

        tmp = group.broadcast(group.phase(prepare))
        part_bin = os.path.join(tmp, f".part-{group.rank}.bin")

        def work() -> tuple[list, list]:
            # (record, {file key: (position, bytes)}) per delta; (name, dtype, shape, position,
            # bytes) per tensor stored as it is. Positions are in this rank's part file.
            deltas: list = []
            dense: list[tuple[str, torch.dtype, tuple, int, int]] = []
            fd = os.open(part_bin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pos = 0
                for name in progress(mine, total=len(mine), desc=desc, enabled=show_progress and group.rank == 0):
                    kind, value = compute(name)
                    if kind == "delta":
                        record, tensors = delta_record(name, value)
                        where = {}
                        for key, t in tensors.items():
                            n = _append(fd, t, pos)
                            where[key] = (pos, n)
                            pos += n
                        deltas.append((record, where))
                        del tensors
                    elif kind == "dense":
                        n = _append(fd, value, pos)
                        dense.append((name, value.dtype, tuple(value.shape), pos, n))
                        pos += n
                    del value
                    _fault.tensor_written()
                os.fsync(fd)
            finally:
                os.close(fd)
            return deltas, dense

        deltas, dense = group.phase(work)
        all_deltas = group.gather(deltas)
        all_dense = group.gather(dense)

        def finish() -> dict[str, Any]:
            if group.rank != 0:
                return {}
            found = sorted(((r, rec, where) for r, recs in enumerate(all_deltas) for rec, where in recs),
                           key=lambda item: order[item[1].name])
            source = {key: (r, pos, n) for r, _rec, where in found for key, (pos, n) in where.items()}
            records = sorted(((r, rec) for r, recs in enumerate(all_dense) for rec in recs),
                             key=lambda item: order[item[1][0]])
            meta = dict(metadata)
            if record_dense:
                meta[DENSE_KEY] = json.dumps([rec[0] for _r, rec in records])
            with _PartReader(tmp) as parts:
                write_file(os.path.join(tmp, DELTA_FILE), [rec for _r, rec, _w in found], meta,
                           lambda key: parts.chunks(*source[key]))
            if records:
                _gather_dense(tmp, records)
            for r in range(group.world):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(tmp, f".part-{r}.bin"))
            return {"deltas": len(found), "dense": len(records), "workers": group.world,
                    "bytes": os.path.getsize(os.path.join(tmp, DELTA_FILE))
                    + (os.path.getsize(os.path.join(tmp, DENSE_FILE)) if records else 0)}

        summary = group.phase(finish)
    return summary


class _PartReader:
    """Reads byte ranges of the ranks' part files in bounded chunks."""

    def __init__(self, tmp: str):
        self._tmp = tmp
        self._files: dict[int, Any] = {}

    def chunks(self, rank: int, pos: int, n: int):
        f = self._files.get(rank)
        if f is None:
            f = self._files[rank] = open(os.path.join(self._tmp, f".part-{rank}.bin"), "rb")
        f.seek(pos)
        left = n
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise RuntimeError(f"internal error: the part file of rank {rank} is truncated")
            left -= len(chunk)
            yield chunk

    def __enter__(self) -> "_PartReader":
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()


def _gather_dense(tmp: str, records) -> None:
    f = OutFile(DENSE_FILE, [OutEntry(name, dtype, shape) for _, (name, dtype, shape, _, _) in records], {"format": "pt"})
    path = os.path.join(tmp, DENSE_FILE)
    create_file(path, f)
    slots = FileSlots(tmp, Layout([f], indexed=False))
    head = slots._slot  # name -> (file, absolute position, entry)
    fd = os.open(path, os.O_WRONLY)
    try:
        with _PartReader(tmp) as parts:
            for rank, (name, _dtype, _shape, pos, n) in records:
                dst = head[name][1]
                for chunk in parts.chunks(rank, pos, n):
                    dst += pwrite_all(fd, chunk, dst)
        os.fsync(fd)
    finally:
        os.close(fd)
    slots.close(sync=False)
