"""Several workers over one job with torch.distributed: who does which tensor, and lock-step
phases so that one worker's failure stops every worker cleanly (no hang, nothing renamed).

Runs under `torchrun` (RANK/WORLD_SIZE/MASTER_ADDR in the environment; several machines need a
shared output filesystem) or spawns local processes for `--workers N`. Control messages only go
through the process group; tensors are read and written by each worker itself.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Group", "SoloGroup", "assign", "run_workers", "from_environment", "WorkerFailed"]


class WorkerFailed(RuntimeError):
    """Raised on every worker when another worker failed in the same phase."""


class SoloGroup:
    rank = 0
    world = 1
    # The directory a parent process prepared for the output: the workers fill it and the
    # parent publishes it after every worker succeeded. None: rank 0 publishes itself.
    staging: str | None = None

    def phase(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


class Group(SoloGroup):
    """A torch.distributed process group used for control: broadcasts and failure agreement."""

    def __init__(self, device: torch.device, staging: str | None = None):
        import torch.distributed as dist

        self.staging = staging
        self._dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        # NCCL can only reduce CUDA tensors; gloo reduces CPU ones.
        self._dev = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def phase(self, fn: Callable[[], Any]) -> Any:
        """Run fn on every worker; if any raised, every worker raises (the failing one its own)."""
        error: BaseException | None = None
        result = None
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001  (re-raised below after the others know)
            error = exc
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=self._dev)
        self._dist.all_reduce(flag, op=self._dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if int(flag.item()):
            raise WorkerFailed("another worker failed (see its message)")
        return result

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0, device=self._dev)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out


def assign(sizes: Sequence[int], world: int) -> list[list[int]]:
    """Balance items (by byte size) over `world` workers; deterministic, largest first."""
    loads = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        w = min(range(world), key=lambda r: (loads[r], r))
        out[w].append(i)
        loads[w] += sizes[i]
    for items in out:
        items.sort()
    return out


def from_environment() -> bool:
    """True when launched by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when its parent dies (Linux), so no orphan writes after a kill."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _entry(rank: int, world: int, init_file: str, device: str, fn: Callable, args: tuple, results,
           parent: int, staging: str | None) -> None:
    import torch.distributed as dist

    _die_with_parent(parent)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if device.startswith("cuda"):
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(_backend(device), init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dev = torch.device(device if not device.startswith("cuda") else f"cuda:{torch.cuda.current_device()}")
        group = Group(dev, staging)
        value = fn(group, *args)
        group.phase(lambda: None)  # no rank leaves while another still talks to it
        if rank == 0:
            results.put(("ok", value))
    except BaseException as exc:
        if rank == 0:
            results.put(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def run_workers(fn: Callable[..., Any], args: tuple, *, workers: int, device: str = "cpu",
                output: tuple[str, bool] | None = None) -> Any:
    """Run fn(group, *args) on every worker; return rank 0's result.

    Under torchrun the current process is one worker; otherwise `workers` local processes are
    spawned (fn and args must be picklable). workers == 1 runs in-process without a group.
    `output` = (path, overwrite): with spawned workers this process reserves the output, the
    workers write into `group.staging`, and only this process publishes it, after every worker
    succeeded; an error, a dead worker or an interrupt publishes nothing.
    """
    if from_environment():
        return _run_torchrun(fn, args, device)
    if workers <= 1:
        return fn(SoloGroup(), *args)
    if output is None:
        return _spawn(fn, args, workers, device, None)
    from ..io.atomic import publish_dir, staging_dir

    path, overwrite = os.path.abspath(output[0]), output[1]
    with staging_dir(path, overwrite=overwrite) as tmp:
        result = _spawn(fn, args, workers, device, tmp)
        publish_dir(tmp, path, overwrite=overwrite)
    return result


def _run_torchrun(fn: Callable[..., Any], args: tuple, device: str) -> Any:
    import torch.distributed as dist

    dev = torch.device(device)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(_backend(device))
    try:
        group = Group(dev)
        result = fn(group, *args)
        # No rank leaves while another still talks to it (gloo aborts on a closed peer).
        group.phase(lambda: None)
        return result
    finally:
        if owned:
            dist.destroy_process_group()


def _spawn(fn: Callable[..., Any], args: tuple, workers: int, device: str, staging: str | None) -> Any:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    outcome = None
    with tempfile.TemporaryDirectory(prefix="darex-rdzv-") as rdzv:
        init_file = os.path.join(rdzv, "init")
        procs = [ctx.Process(target=_entry, args=(r, workers, init_file, device, fn, args, results, os.getpid(),
                                                  staging))
                 for r in range(workers)]
        for proc in procs:
            proc.start()
        try:
            # Read while they run: a result larger than a pipe buffer would otherwise block rank 0.
            while outcome is None and any(p.is_alive() for p in procs):
                try:
                    outcome = results.get(timeout=0.2)
                except queue.Empty:
                    pass
            if outcome is None:
                with contextlib.suppress(queue.Empty):
                    outcome = results.get(timeout=1.0)
        except BaseException:
            for proc in procs:  # interrupted: no worker may go on writing
                proc.kill()
            raise
        finally:
            for proc in procs:
                proc.join()
    status, value = outcome if outcome is not None else ("error", "worker 0 died without a result")
    if status != "ok":
        raise RuntimeError(value)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"a worker exited with code {bad[0]}")
    return value
