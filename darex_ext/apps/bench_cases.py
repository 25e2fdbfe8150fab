"""What `darex bench` runs: the methods (fused op, PyTorch way, ceiling) bound to shared inputs.

Shared by the timing process and the child process that measures peak memory, so both run
exactly the same code.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence

import torch

import darex_ext

__all__ = ["Timings", "BenchError", "Method", "Workspace", "methods", "bind", "traffic_bytes", "DTYPES",
           "OPS", "FUSED", "TORCH", "CEILING", "SEED", "dtype_name", "itemsize"]

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}
OPS = ("prune_", "dare")
FUSED, TORCH, CEILING = "fused", "torch", "ceiling"
SEED = 1234


class Timings:
    """best_s / median_s of a result's `times_s` (seconds of each timed call)."""

    times_s: list[float]

    @property
    def best_s(self) -> float:
        return min(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


class BenchError(RuntimeError):
    """An expected failure (no CUDA, wrong results, child crashed): one line, exit code 1."""


@dataclasses.dataclass(frozen=True)
class Method:
    op: str  # "prune_" | "dare": the op whose traffic it matches
    name: str  # printed in the table
    role: str  # FUSED | TORCH | CEILING
    p: float | None  # None for ceilings (they do not depend on p)


def methods(device: torch.device, ps: Sequence[float]) -> list[Method]:
    """Table order: per op, the ceiling, then for each p the fused op(s) and the PyTorch way."""
    cuda = device.type == "cuda"
    out: list[Method] = []
    for op in OPS:
        ceiling = "copy_" if cuda else ("mul_(2.0)" if op == "prune_" else "add(out=)")
        out.append(Method(op, ceiling, CEILING, None))
        for p in ps:
            if op == "prune_":
                out.append(Method(op, "darex.prune_", FUSED, p))
            else:
                out.append(Method(op, "darex.dare", FUSED, p))
                out.append(Method(op, "darex.dare(out=)", FUSED, p))
            out.append(Method(op, "torch", TORCH, p))
    return out


class Workspace:
    """Inputs of one dtype, allocated and touched once; shared by every method."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, seed: int = SEED):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.src = torch.randn(numel, dtype=dtype, device=device, generator=gen)  # never mutated
        self.base = torch.randn(numel, dtype=dtype, device=device, generator=gen)
        self.x = torch.empty_like(self.src)  # in-place target, refilled from src before each call
        self.out = torch.empty_like(self.src)
        self.x.copy_(self.src)
        self.out.zero_()

    def refill(self) -> None:
        self.x.copy_(self.src)


def _noop() -> None:
    pass


def bind(m: Method, ws: Workspace) -> tuple[Callable[[], object], Callable[[], None]]:
    """(call, reset): `call` runs the method once; `reset` restores its input, untimed."""
    x, ft, base, out = ws.x, ws.src, ws.base, ws.out
    if m.role == CEILING:
        if m.name == "copy_":
            return (lambda: out.copy_(ft)), _noop
        if m.name == "mul_(2.0)":
            return (lambda: x.mul_(2.0)), ws.refill
        return (lambda: torch.add(ft, base, out=out)), _noop
    p = m.p
    assert p is not None
    keep = 1.0 - p
    if m.op == "prune_":
        if m.role == FUSED:
            return (lambda: darex_ext.prune_(x, p, seed=SEED)), ws.refill
        return (lambda: x.mul_(torch.bernoulli(torch.full_like(x, keep))).div_(keep)), ws.refill
    if m.role == FUSED:
        if m.name == "darex.dare(out=)":
            return (lambda: darex_ext.dare(ft, base, p, seed=SEED, out=out)), _noop
        return (lambda: darex_ext.dare(ft, base, p, seed=SEED)), _noop
    return (lambda: base + (ft - base) * torch.bernoulli(torch.full_like(ft, keep)) / keep), _noop


def traffic_bytes(m: Method, numel: int, dtype: torch.dtype) -> int:
    """Bytes one call must move: a copy's own traffic, else the op's (prune_ 2n, dare 3n)."""
    tensors = 2 if (m.op == "prune_" or m.name == "copy_") else 3
    return tensors * numel * itemsize(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "", 1)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
