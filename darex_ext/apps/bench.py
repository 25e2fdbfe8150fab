"""`darex bench`: fused `prune_` and `dare` against the PyTorch way and a bandwidth ceiling.

Every method runs in the same process on the same data, so the ratios hold even on a noisy
machine. The ceiling is the cheapest op with the same memory traffic: in-place `mul_` for
`prune_` (read n, write n) and `add(out=)` for `dare` (read 2n, write n) on CPU; a
device-to-device `copy_` on CUDA. Before timing, the fused ops are checked bit for bit against
`darex_ext.reference` at both ends of the tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence

import torch

import darex_ext
from darex_ext import reference

from .bench_cases import (CEILING, DTYPES, OPS, SEED, TORCH, BenchError, Method, Timings, Workspace, bind,
                           dtype_name, itemsize, methods, traffic_bytes)
from .bench_memory import cpu_extra_peaks, cuda_extra_peak

__all__ = ["BenchError", "Row", "run", "format_table", "header_lines", "build_parser", "main"]

CHECK_NUMEL = 1 << 16  # elements compared with reference.py at each end of the tensor
QUICK_NUMEL, QUICK_REPEAT = 1 << 20, 2
MiB = 1 << 20


@dataclasses.dataclass
class Row(Timings):
    method: Method
    dtype: torch.dtype
    numel: int
    traffic_bytes: int  # logical bytes read + written by one call (same for all methods of an op)
    times_s: list[float]
    extra_peak_bytes: int | None = None
    speedup: float | None = None  # PyTorch way's time / this time, same op, dtype and p
    ceiling_fraction: float | None = None  # GB/s / ceiling's GB/s, same dtype

    @property
    def elems_per_s(self) -> float:
        return self.numel / self.best_s

    @property
    def bytes_per_s(self) -> float:
        return self.traffic_bytes / self.best_s

    @property
    def tensor_bytes(self) -> int:
        return self.numel * itemsize(self.dtype)


def time_method(call: Callable[[], object], reset: Callable[[], None], repeat: int,
                device: torch.device) -> list[float]:
    """Seconds per call: 1 warmup, then `repeat` timed calls, each on freshly reset input."""
    if device.type == "cuda":
        return _time_cuda(call, reset, repeat)
    reset()
    call()
    times = []
    for _ in range(repeat):
        reset()
        t0 = time.perf_counter()
        call()  # a returned tensor is freed inside the timed region, as a caller would free it
        times.append(time.perf_counter() - t0)
    return times


def _time_cuda(call: Callable[[], object], reset: Callable[[], None], repeat: int) -> list[float]:
    reset()
    call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        reset()
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def check_against_reference(ws: Workspace, p: float) -> None:
    """The fused ops must match reference.py bit for bit at both ends of the tensor."""
    n = ws.src.numel()
    k = min(CHECK_NUMEL, n)
    ws.refill()
    darex_ext.prune_(ws.x, p, seed=SEED)
    merged = darex_ext.dare(ws.src, ws.base, p, seed=SEED)
    for lo in sorted({0, n - k}):
        sl = slice(lo, lo + k)
        want = reference.prune(ws.src[sl].cpu(), p, seed=SEED, offset=lo)
        if not torch.equal(ws.x[sl].cpu(), want):
            raise BenchError(f"darex.prune_ differs from reference.prune ({ws.src.dtype}, p={p}, "
                             f"elements {lo}..{lo + k - 1})")
        want = reference.dare(ws.src[sl].cpu(), ws.base[sl].cpu(), p, seed=SEED, offset=lo)
        if not torch.equal(merged[sl].cpu(), want):
            raise BenchError(f"darex.dare differs from reference.dare ({ws.src.dtype}, p={p}, "
                             f"elements {lo}..{lo + k - 1})")
    ws.refill()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if darex_ext.cuda_built() and torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not darex_ext.cuda_built():
            raise BenchError("--device cuda: this darex_ext build has no CUDA kernels "
                             f"(build_info: {darex_ext.build_info()})")
        if not torch.cuda.is_available():
            raise BenchError("--device cuda: torch.cuda.is_available() is False")
    return torch.device(device)


def run(*, device: str = "cpu", numel: int = 1 << 26, dtypes: Sequence[str] = ("float32", "bfloat16"),
        ps: Sequence[float] = (0.9, 0.99), repeat: int = 5, threads: int | None = None,
        memory: bool = True, check: bool = True) -> list[Row]:
    """Time every method; returns rows in table order with ratios and extra peak filled in."""
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    rows: list[Row] = []
    for name in dtypes:
        dtype = DTYPES[name]
        ws = Workspace(numel, dtype, dev)
        if check:
            for p in ps:
                check_against_reference(ws, p)
        for m in methods(dev, ps):
            call, reset = bind(m, ws)
            row = Row(m, dtype, numel, traffic_bytes(m, numel, dtype), time_method(call, reset, repeat, dev))
            if memory and dev.type == "cuda":
                row.extra_peak_bytes = cuda_extra_peak(call, reset)
            rows.append(row)
        del ws
    if memory and dev.type == "cpu":
        peaks = cpu_extra_peaks([(r.method, r.dtype) for r in rows], numel, torch.get_num_threads())
        for r, peak in zip(rows, peaks):
            r.extra_peak_bytes = peak
    _fill_ratios(rows)
    return _table_order(rows)


def _fill_ratios(rows: list[Row]) -> None:
    ceilings = {(r.method.op, r.dtype): r for r in rows if r.method.role == CEILING}
    baselines = {(r.method.op, r.dtype, r.method.p): r for r in rows if r.method.role == TORCH}
    for r in rows:
        ceiling = ceilings.get((r.method.op, r.dtype))
        if ceiling is not None:
            r.ceiling_fraction = r.bytes_per_s / ceiling.bytes_per_s
        baseline = baselines.get((r.method.op, r.dtype, r.method.p))
        if baseline is not None:
            r.speedup = baseline.best_s / r.best_s


def _table_order(rows: list[Row]) -> list[Row]:
    # Rows are produced dtype-major (one workspace at a time); print them op-major.
    return sorted(rows, key=lambda r: OPS.index(r.method.op))  # stable: keeps dtype/p order


COLUMNS = ("op", "dtype", "p", "method", "best ms", "median ms", "G elem/s", "GB/s", "x vs torch",
           "% of ceiling", "extra peak MiB", "extra % of tensor")


def _cells(r: Row) -> list[str]:
    peak = r.extra_peak_bytes
    return [
        r.method.op,
        dtype_name(r.dtype),
        "-" if r.method.p is None else f"{r.method.p:g}",
        r.method.name + (" (ceiling)" if r.method.role == CEILING else ""),
        f"{r.best_s * 1e3:.2f}",
        f"{r.median_s * 1e3:.2f}",
        f"{r.elems_per_s / 1e9:.3f}",
        f"{r.bytes_per_s / 1e9:.1f}",
        "" if r.speedup is None else f"{r.speedup:.2f}x",
        "" if r.ceiling_fraction is None else f"{100 * r.ceiling_fraction:.0f}%",
        "n/a" if peak is None else f"{peak / MiB:.1f}",
        "n/a" if peak is None else f"{100 * peak / r.tensor_bytes:.0f}%",
    ]


def format_table(rows: list[Row], *, markdown: bool = False) -> str:
    body = [_cells(r) for r in rows]
    left = {0, 1, 3}  # text columns; numbers align right
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join(":---" if i in left else "---:" for i in range(len(COLUMNS))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(COLUMNS)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(COLUMNS), "  ".join("-" * w for w in widths)] + [fmt(c) for c in body])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def header_lines(*, device: torch.device, numel: int, repeat: int, command: str) -> list[str]:
    lines = [
        f"command: {command}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cpus), torch threads: {torch.get_num_threads()}",
        f"torch: {torch.__version__}, darex_ext: {darex_ext.__version__}, build_info: {darex_ext.build_info()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"gpu: {props.name} ({props.total_memory / 2**30:.0f} GiB), cuda: {torch.version.cuda}")
    ceiling = "device-to-device copy_" if device.type == "cuda" else "mul_(2.0) for prune_, add(out=) for dare"
    peak = ("torch.cuda.max_memory_allocated above the inputs" if device.type == "cuda"
            else "peak RSS above the inputs, in a child process")
    lines += [
        f"device: {device}, numel: {numel} (2^{numel.bit_length() - 1})" if numel & (numel - 1) == 0
        else f"device: {device}, numel: {numel}",
        f"timing: 1 warmup + best/median of {repeat}; rates from the best; input refilled before each call",
        f"x vs torch: PyTorch way's time / this time; % of ceiling: GB/s / GB/s of {ceiling} (same dtype)",
        f"extra peak: {peak}; % of one tensor of numel elements",
    ]
    return lines


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(s) for s in items]
    return parse


def _dtype_arg(text: str) -> str:
    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (choose from {', '.join(DTYPES)})")
    return dtype_name(DTYPES[text.lower()])


def _p_arg(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"p must be a number, got {text!r}") from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"p (the drop rate) must be in [0, 1), got {text}")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = None
    if "**" in text:  # accept 2**26 as well
        base, _, exp = text.partition("**")
        if base.strip().isdigit() and exp.strip().isdigit():
            value = int(base) ** int(exp)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser(prog: str | None = None, default_device: str = "cpu") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmark fused darex prune_/dare against the PyTorch way and a "
        "bandwidth ceiling measured in the same run.")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default=default_device,
                        help=f"auto: cuda if available and built, else cpu (default: {default_device})")
    parser.add_argument("--numel", type=_positive_int, default=None,
                        help=f"elements per tensor (default: 2**26; {QUICK_NUMEL} with --quick)")
    parser.add_argument("--dtypes", type=_csv(_dtype_arg), default=["float32", "bfloat16"],
                        help="comma-separated (default: float32,bfloat16)")
    parser.add_argument("--p", dest="ps", type=_csv(_p_arg), default=[0.9, 0.99],
                        help="comma-separated drop rates (default: 0.9,0.99)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help=f"timed calls per method after 1 warmup (default: 5; {QUICK_REPEAT} with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for RESULTS.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: numel 2**20, repeat 2")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip extra peak memory")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the spot check against darex_ext.reference")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, default_device: str = "cpu") -> int:
    """Parse `argv` (default sys.argv[1:]), run, print header and table. 0 ok, 1 failure, 2 usage."""
    args = build_parser(prog, default_device).parse_args(argv)
    numel = args.numel or (QUICK_NUMEL if args.quick else 1 << 26)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else 5)
    process_argv = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    command = shlex.join(process_argv)
    if argv is not None and argv and list(argv) != process_argv[-len(argv):]:
        command += f"  [bench args: {shlex.join(argv)}]"  # called from Python with other args
    try:
        device = resolve_device(args.device)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        rows = run(device=str(device), numel=numel, dtypes=args.dtypes, ps=args.ps, repeat=repeat,
                   threads=args.threads, memory=args.memory, check=args.check)
    except BenchError as exc:
        print(f"{prog or 'bench'}: error: {exc}", file=sys.stderr)
        return 1
    header = header_lines(device=device, numel=numel, repeat=repeat, command=command)
    if args.markdown:
        print("\n".join(f"- {line}" for line in header))
        print()
    else:
        print("\n".join(header))
    print(format_table(rows, markdown=args.markdown))
    return 0
