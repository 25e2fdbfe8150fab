#!/usr/bin/env python
"""Exact magnitude top-k (radix select) against torch.topk, torch.kthvalue and mergekit's argsort.

Whole tensor: keep the k = round(0.01 n) and round(0.1 n) largest |x| of a 1-D tensor of n
elements (default 2**26 on CPU, 2**28 on CUDA), zero the rest. Per row: keep the top 1% / 10% |x|
of each row of a 4096 x 11008 matrix. Every method runs in the same process on the same data, and
darex is checked against the torch.topk result before anything is timed (exit 1 on a mismatch).
The ceiling is a copy of the same tensor on the same device (`x.copy_(src)`, device to device on
CUDA), timed in the same run: "% of copy" is the copy's time / this time.

    python benchmarks/bench_topk.py                  # CPU, 2**26 elements + 4096 x 11008, fp32 + bf16
    python benchmarks/bench_topk.py --quick          # smoke test: 2**20 elements + 512 x 1024
    python benchmarks/bench_topk.py --device cuda --markdown >> benchmarks/RESULTS.md
    python benchmarks/bench_topk.py --numel 4096 --matrix 16x256 --dtypes float32   # tiny

Methods (each does the whole job: select and zero the dropped entries of x):
  copy_ (ceiling)           x.copy_(src): one read and one write of the tensor, no selection
  darex.magnitude_prune_    in place; |x| computed on the fly, nothing materialized
  darex.topk_mask           selection only, on the signed x (no |x|): returns the bool mask
  torch.topk                topk(|x|.flatten(), k) (sorted=True, the default), bool mask, x.mul_(mask)
  torch.kthvalue            thr = kthvalue(|x|, n - k); x.mul_(|x| > thr)  (keeps < k on ties)
  argsort (mergekit)        mergekit.sparsify.magnitude: argsort(|x|.float() on CPU, descending)[:k],
                            a mask of x's dtype, returns x * mask (out of place)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch

import darex_ext
from darex_ext.apps.bench_cases import DTYPES, BenchError, Timings, dtype_name, itemsize
# Private helpers of _bench_memory (VmHWM reset and reads): reused as they are, wrapped below
# because its child process (_run_child/_child_main) only knows the prune_/dare methods.
from darex_ext.apps.bench_memory import cuda_extra_peak, extra_peak_of, hwm_resettable
from darex_ext.apps.bench import header_lines, resolve_device, time_method
from darex_ext.ops import count_from_rate

MiB = 1 << 20
KEEPS = (0.01, 0.1)  # fraction kept (k / n)
DEFAULT_DTYPES = ("float32", "bfloat16")
NUMEL = {"cpu": 1 << 26, "cuda": 1 << 28}
MATRIX = (4096, 11008)
QUICK_NUMEL, QUICK_MATRIX, QUICK_REPEAT = 1 << 20, (512, 1024), 2
SEED = 1234
# Targets of the exact top-k (whole-tensor darex.magnitude_prune_).
TARGET_VS_TOPK = {"cpu": 30.0, "cuda": 10.0}
TARGET_VS_KTHVALUE = {"cpu": 15.0}
TARGET_EXTRA_FRACTION, TARGET_EXTRA_CONST = 1 / 8, 4 * MiB

# Method ids; the baselines are the ratio columns, the copy the bandwidth ceiling.
DAREX_PRUNE, DAREX_MASK, TOPK, KTHVALUE, ARGSORT = "darex_prune", "darex_mask", "topk", "kthvalue", "argsort"
COPY = "copy"
BASELINES = (TOPK, KTHVALUE, ARGSORT)
METHODS = {"tensor": (COPY, DAREX_PRUNE, DAREX_MASK, TOPK, KTHVALUE, ARGSORT),
           "row": (COPY, DAREX_PRUNE, DAREX_MASK, TOPK, KTHVALUE)}
NAMES = {
    ("tensor", COPY): "copy_ (ceiling)",
    ("row", COPY): "copy_ (ceiling)",
    ("tensor", DAREX_PRUNE): "darex.magnitude_prune_",
    ("tensor", DAREX_MASK): "darex.topk_mask (signed x)",
    ("tensor", TOPK): "torch.topk + mask + mul_",
    ("tensor", KTHVALUE): "torch.kthvalue + mul_",
    ("tensor", ARGSORT): "argsort (mergekit)",
    ("row", DAREX_PRUNE): "darex.magnitude_prune_(scope=row)",
    ("row", DAREX_MASK): "darex.topk_mask(dim=1, signed x)",
    ("row", TOPK): "torch.topk(dim=1) + scatter_ + mul_",
    ("row", KTHVALUE): "torch.kthvalue(dim=1) + mul_",
}


@dataclasses.dataclass(frozen=True)
class Case:
    scope: str  # "tensor": one selection over all elements; "row": one per row
    dtype: str
    shape: tuple[int, ...]
    keep: float  # nominal fraction kept

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def slice_len(self) -> int:
        return self.numel if self.scope == "tensor" else self.shape[-1]

    @property
    def k(self) -> int:  # kept per slice
        return round(self.keep * self.slice_len)

    @property
    def p(self) -> float:  # drop rate for magnitude_prune_; keep = n - round(p n) == k, checked
        return (self.slice_len - self.k) / self.slice_len

    @property
    def tensor_bytes(self) -> int:
        return self.numel * itemsize(DTYPES[self.dtype])

    def label(self) -> str:
        if self.scope == "tensor":
            n = self.numel
            return f"tensor 2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"tensor {n}"
        return "row " + "x".join(map(str, self.shape))


@dataclasses.dataclass
class Result(Timings):
    case: Case
    method: str
    times_s: list[float]
    extra_peak_bytes: int | None = None
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)  # baseline time / this time
    copy_fraction: float | None = None  # the copy's best time / this best time, same case


class Workspace:
    """One input tensor of a case's shape and dtype; `x` is refilled from `src` before each call."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int = SEED):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.src = torch.randn(shape, dtype=dtype, device=device, generator=gen)  # never mutated
        self.x = self.src.clone()

    def refill(self) -> None:
        self.x.copy_(self.src)


def bind(case: Case, method: str, ws: Workspace) -> Callable[[], object]:
    """The call that runs `method` once on ws.x (reset: ws.refill, untimed)."""
    x, k, p = ws.x, case.k, case.p
    if method == COPY:
        src = ws.src
        return lambda: x.copy_(src)
    if case.scope == "tensor":
        n = x.numel()
        if method == DAREX_PRUNE:
            return lambda: darex_ext.magnitude_prune_(x, p)
        if method == DAREX_MASK:
            return lambda: darex_ext.topk_mask(x, k)
        if method == TOPK:
            def topk_way():
                idx = torch.topk(x.abs().flatten(), k).indices
                mask = torch.zeros_like(x, dtype=torch.bool)
                mask.view(-1)[idx] = True
                return x.mul_(mask)
            return topk_way
        if method == KTHVALUE:
            def kthvalue_way():
                thr = torch.kthvalue(x.abs().flatten(), n - k).values
                return x.mul_(x.abs() > thr)
            return kthvalue_way
        if method == ARGSORT:
            def mergekit_way():  # mergekit/sparsify.py magnitude(), with our k
                mask = torch.zeros_like(x)
                w = x.abs().view(-1)
                if w.device.type == "cpu":
                    w = w.float()
                top = torch.argsort(w, descending=True)[:k]
                mask.view(-1)[top] = 1
                return x * mask
            return mergekit_way
    else:
        cols = x.shape[1]
        if method == DAREX_PRUNE:
            return lambda: darex_ext.magnitude_prune_(x, p, scope="row")
        if method == DAREX_MASK:
            return lambda: darex_ext.topk_mask(x, k, dim=1)
        if method == TOPK:
            def topk_rows():
                idx = torch.topk(x.abs(), k, dim=1).indices
                return x.mul_(torch.zeros_like(x, dtype=torch.bool).scatter_(1, idx, True))
            return topk_rows
        if method == KTHVALUE:
            def kthvalue_rows():
                thr = torch.kthvalue(x.abs(), cols - k, dim=1, keepdim=True).values
                return x.mul_(x.abs() > thr)
            return kthvalue_rows
    raise ValueError(f"no method {method!r} for scope {case.scope!r}")


# ---------------------------------------------------------------------------------------------
# Correctness check, before timing


def _check_selection(scores: torch.Tensor, mask: torch.Tensor, k: int, what: str,
                     lowest_index_ties: bool) -> torch.Tensor:
    """scores, mask: [slices, len]. Exactly k kept per slice, every kept score >= every dropped
    one, and (darex's rule) the ties taken at the cut are the lowest indices. Returns the tie set."""
    counts = mask.sum(1)
    if not bool((counts == k).all()):
        raise BenchError(f"{what}: kept {int(counts.min())}..{int(counts.max())} per slice, want {k}")
    s = scores.float()
    thr = torch.where(mask, s, float("inf")).amin(1, keepdim=True)
    dropped_max = torch.where(mask, float("-inf"), s).amax(1, keepdim=True)
    if bool((dropped_max > thr).any()):
        raise BenchError(f"{what}: a dropped score is larger than a kept one")
    tie = s == thr
    if lowest_index_ties:
        taken = (mask & tie).sum(1, keepdim=True)
        if not torch.equal(mask & tie, tie & (tie.cumsum(1) <= taken)):
            raise BenchError(f"{what}: ties at the cut are not taken lowest index first")
    return tie


def _compare(scores: torch.Tensor, darex_mask: torch.Tensor, torch_mask: torch.Tensor, k: int,
             what: str) -> str:
    tie = _check_selection(scores, darex_mask, k, what, True)
    _check_selection(scores, torch_mask, k, f"torch.topk reference for {what}", False)
    if not torch.equal(darex_mask & ~tie, torch_mask & ~tie):
        raise BenchError(f"{what}: the mask differs from torch.topk's outside the ties at the cut")
    extra_ties = int(tie.sum()) - tie.shape[0]  # elements at the cut beyond one per slice
    if torch.equal(darex_mask, torch_mask):
        return "identical mask" + ("" if extra_ties == 0 else f" ({extra_ties} extra ties at the cut)")
    if extra_ties == 0:  # distinct values at the cut: the masks must be identical
        raise BenchError(f"{what}: mask differs from torch.topk's although the cut has no ties")
    return f"same count, kept >= dropped; {extra_ties} extra ties at the cut, lowest index taken"


def check_case(case: Case, ws: Workspace) -> list[str]:
    """darex against torch.topk on the first call; raises BenchError on any mismatch."""
    keep = case.slice_len - count_from_rate(case.p, case.slice_len)
    if keep != case.k:
        raise BenchError(f"{case.label()}: p = {case.p!r} keeps {keep}, not k = {case.k}")
    src, k = ws.src, case.k
    rows = 1 if case.scope == "tensor" else src.shape[0]
    s2 = src.reshape(rows, -1)
    notes = []

    def topk_mask_of(scores2d: torch.Tensor) -> torch.Tensor:
        idx = torch.topk(scores2d, k, dim=1).indices
        return torch.zeros_like(scores2d, dtype=torch.bool).scatter_(1, idx, True)

    ws.refill()
    bind(case, DAREX_PRUNE, ws)()
    got = ws.x.reshape(rows, -1)
    kept = got != 0
    if not torch.equal(got, torch.where(kept, s2, torch.zeros_like(s2))):
        raise BenchError(f"{case.label()} {case.dtype}: magnitude_prune_ changed a kept value")
    a = s2.abs()
    what = f"{case.label()} {case.dtype} keep {case.keep:g}: darex.magnitude_prune_"
    notes.append(f"{what}: {_compare(a, kept, topk_mask_of(a), k, what)}")
    del got, kept, a

    what = f"{case.label()} {case.dtype} keep {case.keep:g}: darex.topk_mask"
    ws.refill()
    mask = bind(case, DAREX_MASK, ws)().reshape(rows, -1)
    notes.append(f"{what}: {_compare(s2, mask, topk_mask_of(s2), k, what)}")
    ws.refill()
    return notes


# ---------------------------------------------------------------------------------------------
# Timing


def slow_method(case: Case, method: str, device: torch.device) -> bool:
    """argsort of millions of elements on CPU takes seconds: timed once, no warmup."""
    return method == ARGSORT and device.type == "cpu"


def time_case(case: Case, method: str, ws: Workspace, repeat: int, device: torch.device) -> list[float]:
    call = bind(case, method, ws)
    if not slow_method(case, method, device):
        return time_method(call, ws.refill, repeat, device)
    ws.refill()
    t0 = time.perf_counter()
    call()
    return [time.perf_counter() - t0]


def cases_for(numel: int, matrix: tuple[int, int], dtypes: Sequence[str]) -> list[Case]:
    out = []
    for scope, shape in (("tensor", (numel,)), ("row", matrix)):
        for dt in dtypes:
            for keep in KEEPS:
                out.append(Case(scope, dt, tuple(shape), keep))
    return out


def run(*, device: torch.device, numel: int, matrix: tuple[int, int], dtypes: Sequence[str],
        repeat: int, memory: bool, log: Callable[[str], None]) -> tuple[list[Result], list[str]]:
    cases = cases_for(numel, matrix, dtypes)
    results: list[Result] = []
    notes: list[str] = []
    groups: dict[tuple[str, str, tuple[int, ...]], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.scope, c.dtype, c.shape), []).append(c)
    for (scope, dt, shape), group in groups.items():
        ws = Workspace(shape, DTYPES[dt], device)
        for case in group:
            notes += check_case(case, ws)
            log(f"checked {case.label()} {dt} keep {case.keep:g}; timing")
            for m in METHODS[scope]:
                r = Result(case, m, time_case(case, m, ws, repeat, device))
                if memory and device.type == "cuda":
                    call = bind(case, m, ws)
                    r.extra_peak_bytes = cuda_extra_peak(call, ws.refill)
                results.append(r)
                log(f"  {NAMES[scope, m]}: best {r.best_s * 1e3:.1f} ms")
                gc.collect()
        del ws
        gc.collect()
    if memory and device.type == "cpu":
        log("measuring extra peak memory in a child process")
        peaks = cpu_extra_peaks([(r.case, r.method) for r in results], torch.get_num_threads())
        for r, peak in zip(results, peaks):
            r.extra_peak_bytes = peak
    _fill_ratios(results)
    return results, notes


def _fill_ratios(results: list[Result]) -> None:
    base = {(r.case, r.method): r for r in results if r.method in BASELINES}
    copies = {r.case: r for r in results if r.method == COPY}
    for r in results:
        if r.case in copies:
            r.copy_fraction = copies[r.case].best_s / r.best_s
        if r.method == COPY:
            continue
        for b in BASELINES:
            ref = base.get((r.case, b))
            if ref is not None:
                r.ratios[b] = ref.best_s / r.best_s


# ---------------------------------------------------------------------------------------------
# Extra peak memory on CPU: a child process like darex_ext.apps.bench_memory.s, for these methods


def cpu_extra_peaks(jobs: list[tuple[Case, str]], threads: int) -> list[int]:
    specs = [{"key": str(i), "case": dataclasses.asdict(c), "method": m} for i, (c, m) in enumerate(jobs)]
    use_hwm = hwm_resettable()
    batches = [specs] if use_hwm else [[s] for s in specs]
    peaks: dict[str, int] = {}
    for batch in batches:
        if batch:
            peaks.update(_run_child(batch, threads, use_hwm))
    return [peaks[s["key"]] for s in specs]


def _run_child(specs: list[dict], threads: int, use_hwm: bool) -> dict[str, int]:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # as _bench_memory: big buffers are fresh mmaps
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(darex_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    request = {"jobs": specs, "threads": threads, "use_hwm": use_hwm}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child"],
                          input=json.dumps(request), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"memory child process failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _small_case(case: Case) -> Case:
    shape = (4096,) if case.scope == "tensor" else (4, 1024)
    return dataclasses.replace(case, shape=shape)


def _child_main() -> int:
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    use_hwm = request["use_hwm"]
    cpu = torch.device("cpu")
    jobs = []
    for job in request["jobs"]:
        c = job["case"]
        jobs.append((job["key"], Case(c["scope"], c["dtype"], tuple(c["shape"]), c["keep"]), job["method"]))
    results: dict[str, int] = {}
    for key, case, method in jobs:
        small = _small_case(case)
        ws = Workspace(small.shape, DTYPES[small.dtype], cpu)
        ws.refill()
        bind(small, method, ws)()  # first use of a code path maps pages and starts threads
        ws = None
        gc.collect()
        ws = Workspace(case.shape, DTYPES[case.dtype], cpu)
        call = bind(case, method, ws)
        ws.refill()
        extra = extra_peak_of(call, use_hwm)
        del call
        ws = None
        gc.collect()
        results[key] = extra
    print(json.dumps(results))
    return 0


# ---------------------------------------------------------------------------------------------
# Output

COLUMNS = ("case", "dtype", "keep", "k", "method", "best ms", "median ms", "calls", "x vs topk",
           "x vs kthvalue", "x vs argsort", "% of copy", "extra peak MiB", "extra / tensor")
LEFT = {0, 1, 4}


def _cells(r: Result) -> list[str]:
    peak = r.extra_peak_bytes
    return [
        r.case.label(), dtype_name(DTYPES[r.case.dtype]), f"{100 * r.case.keep:g}%", str(r.case.k),
        NAMES[r.case.scope, r.method], f"{r.best_s * 1e3:.2f}", f"{r.median_s * 1e3:.2f}", str(len(r.times_s)),
        *("" if b not in r.ratios else f"{r.ratios[b]:.2f}x" for b in BASELINES),
        "" if r.copy_fraction is None else f"{100 * r.copy_fraction:.1f}%",
        "n/a" if peak is None else f"{peak / MiB:.1f}",
        "n/a" if peak is None else f"{peak / r.case.tensor_bytes:.3f}",
    ]


def format_table(results: list[Result], *, markdown: bool = False) -> str:
    body = [_cells(r) for r in results]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join(":---" if i in LEFT else "---:" for i in range(len(COLUMNS))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(COLUMNS)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in LEFT else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(COLUMNS), "  ".join("-" * w for w in widths)] + [fmt(c) for c in body])


def _header(device: torch.device, numel: int, matrix: tuple[int, int], repeat: int, command: str) -> list[str]:
    # Machine facts from darex_ext.apps.bench.header_lines; its other lines describe the prune_ bench.
    facts = [ln for ln in header_lines(device=device, numel=numel, repeat=repeat, command=command)
             if ln.startswith(("command:", "date:", "cpu:", "torch:", "gpu:"))]
    n = f"{numel} (2^{numel.bit_length() - 1})" if numel & (numel - 1) == 0 else str(numel)
    peak = ("torch.cuda.max_memory_allocated above the inputs" if device.type == "cuda"
            else "peak RSS (VmHWM) above the inputs, one call, in a child process")
    copy = "a device-to-device x.copy_(src)" if device.type == "cuda" else "x.copy_(src)"
    return facts + [
        f"device: {device}; whole tensor: 1-D, numel {n}; per row: {matrix[0]} x {matrix[1]}; k = round(keep * n) per slice",
        f"timing: 1 warmup + best/median of {repeat}, input refilled (untimed) before each call; "
        "ratios from the best times, same case",
        f"x vs B: B's best time / this best time; % of copy: {copy}'s best time / this best time",
        f"extra peak: {peak}; extra / tensor: over the input's bytes",
    ]


def _footer(results: list[Result], device: torch.device) -> list[str]:
    lines = ["notes:"]
    if any(slow_method(r.case, r.method, device) for r in results):
        lines.append("- argsort (mergekit) on CPU: timed once (calls = 1), no warmup, as it takes seconds")
    lines += [
        "- copy_ (ceiling): x.copy_(src) of the same tensor, the least traffic any method can have "
        "(one read, one write); it selects nothing",
        "- torch.topk: default sorted=True, bool mask by index_put (scatter_ per row), then x.mul_(mask)",
        "- torch.kthvalue: native dtype (CPU kthvalue takes bf16); keeps |x| > thr, so fewer than k where |x| ties at the cut (bf16)",
        "- argsort (mergekit): as mergekit.sparsify.magnitude: |x| cast to float32 on CPU, mask in x's dtype, "
        "out-of-place x * mask (its result is freed inside the timed call)",
        "- darex.topk_mask: selection on signed x, returns a bool mask (its n bytes count as extra peak); "
        "darex.magnitude_prune_ does the same job as the baselines, in place",
    ]
    lines.append("targets (whole tensor, darex.magnitude_prune_):")
    dev = device.type
    for r in results:
        if r.case.scope != "tensor" or r.method != DAREX_PRUNE:
            continue
        parts = []
        if dev in TARGET_VS_TOPK and TOPK in r.ratios:
            t = TARGET_VS_TOPK[dev]
            parts.append(f"vs topk {r.ratios[TOPK]:.1f}x (>= {t:g}x: {'met' if r.ratios[TOPK] >= t else 'NOT met'})")
        if dev in TARGET_VS_KTHVALUE and KTHVALUE in r.ratios:
            t = TARGET_VS_KTHVALUE[dev]
            parts.append(f"vs kthvalue {r.ratios[KTHVALUE]:.1f}x (>= {t:g}x: "
                         f"{'met' if r.ratios[KTHVALUE] >= t else 'NOT met'})")
        if r.extra_peak_bytes is not None:
            limit = TARGET_EXTRA_FRACTION * r.case.tensor_bytes + TARGET_EXTRA_CONST
            parts.append(f"extra {r.extra_peak_bytes / MiB:.1f} MiB (<= tensor/8 + {TARGET_EXTRA_CONST // MiB} MiB "
                         f"= {limit / MiB:.1f} MiB: {'met' if r.extra_peak_bytes <= limit else 'NOT met'})")
        lines.append(f"- {r.case.label()} {r.case.dtype} keep {100 * r.case.keep:g}%: " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------------------------------------
# CLI


def _positive_int(text: str) -> int:
    base, power, exp = text.partition("**")  # 2**28 as well as 268435456
    try:
        value = int(base, 0) ** int(exp) if power else int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _matrix_arg(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    try:
        shape = (int(rows), int(cols))
    except ValueError:
        shape = (0, 0)
    if not sep or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 4096x11008, got {text!r}")
    return shape


def _dtypes_arg(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in DTYPES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {bad or text!r} (choose from {', '.join(DTYPES)})")
    return [dtype_name(DTYPES[n]) for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_topk.py", description="Exact magnitude top-k (darex) against torch.topk, "
        "torch.kthvalue and mergekit's argsort, whole tensor and per row, in one run.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: numel 2**20, a {QUICK_MATRIX[0]} x {QUICK_MATRIX[1]} matrix, repeat 2")
    parser.add_argument("--numel", type=_positive_int, default=None,
                        help="elements of the whole-tensor case (default: 2**26 on cpu, 2**28 on cuda; "
                        "2**20 with --quick)")
    parser.add_argument("--matrix", type=_matrix_arg, default=None,
                        help=f"ROWSxCOLS of the per-row case (default: {MATRIX[0]}x{MATRIX[1]}; "
                        f"{QUICK_MATRIX[0]}x{QUICK_MATRIX[1]} with --quick)")
    parser.add_argument("--dtypes", type=_dtypes_arg, default=list(DEFAULT_DTYPES),
                        help="comma-separated (default: float32,bfloat16)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for RESULTS.md)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help=f"timed calls per method after 1 warmup (default 5; {QUICK_REPEAT} with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip extra peak memory")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), check, time, print header, table and notes.
    0 ok, 1 failure (mismatch, no CUDA, child crashed), 2 usage."""
    args = build_parser().parse_args(argv)
    if args.memory_child:
        return _child_main()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    numel = args.numel or (QUICK_NUMEL if args.quick else NUMEL[args.device])
    matrix = args.matrix or (QUICK_MATRIX if args.quick else MATRIX)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else 5)
    process_argv = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    command = shlex.join(process_argv)
    if argv is not None and argv and list(argv) != process_argv[-len(argv):]:
        command += f"  [bench args: {shlex.join(argv)}]"

    def log(msg: str) -> None:
        print(f"[bench_topk] {msg}", file=sys.stderr, flush=True)

    try:
        device = resolve_device(args.device)
        results, notes = run(device=device, numel=numel, matrix=matrix, dtypes=args.dtypes,
                             repeat=repeat, memory=args.memory, log=log)
    except BenchError as exc:
        print(f"bench_topk.py: error: {exc}", file=sys.stderr)
        return 1
    header = _header(device, numel, matrix, repeat, command)
    footer = _footer(results, device) + ["checks (darex vs torch.topk, first call):"] + [f"- {n}" for n in notes]
    bullet = "- " if args.markdown else ""
    print("\n".join(bullet + ln for ln in header))
    print()
    print(format_table(results, markdown=args.markdown))
    print()
    print("\n".join(footer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
