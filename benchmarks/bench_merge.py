#!/usr/bin/env python
"""darex's drop-ins against the stock code they replace, in the same run: mergekit's `sparsify`
per sparsification method and PEFT's `merge_utils` merges, on 3 task tensors.

    python benchmarks/bench_merge.py                         # 3 x 4096 x 4096 fp32, 2 threads
    python benchmarks/bench_merge.py --dtypes float32,bfloat16 --markdown >> benchmarks/RESULTS.md
    python benchmarks/bench_merge.py --quick                 # smoke test: 3 x 256 x 256, 1 repeat

Rows (stock | darex; one call = the whole job on all 3 task tensors):
  mergekit magnitude / random / magnitude_outliers / della_magprune: mergekit.sparsify.sparsify on
      each task tensor | darex_ext.integrations.mergekit.sparsify, same arguments. The rescale is
      the one mergekit's merge method of that sparsifier uses by default: none for magnitude (ties)
      and magnitude_outliers (breadcrumbs), l1 for random (dare_*) and della_magprune (della).
  peft ties / dare_ties / dare_linear / magnitude_prune: peft.utils.merge_utils.<name>(tasks,
      weights, density) | darex_ext.integrations.peft.<name>, same arguments.
Before timing, the deterministic rows are checked equal to the stock output on tie-free data and
the random rows for their kept fraction (exit 1 on a mismatch). Time: median of --repeat calls
(darex after one warmup call; stock without, it takes seconds). Extra peak: peak RSS above the
inputs during one call, in a child process (VmHWM reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch

import darex_ext
from darex_ext.apps.bench import cpu_model
from darex_ext.apps.bench_cases import DTYPES, BenchError
from darex_ext.apps.bench_memory import extra_peak_of, hwm_resettable

MiB = 1 << 20
SHAPE, QUICK_SHAPE = (4096, 4096), (256, 256)
TASKS, DENSITY, GAMMA, EPSILON = 3, 0.5, 0.01, 0.15
WEIGHTS = (1.0, 0.7, 0.4)
MERGEKIT = (("magnitude", None), ("random", "l1"), ("magnitude_outliers", None), ("della_magprune", "l1"))
PEFT = ("ties", "dare_ties", "dare_linear", "magnitude_prune")
TARGET = {"mergekit": 10.0, "peft": 5.0}  # speedup targets on 2 cores (README)
RANDOM = {"random", "della_magprune", "dare_ties", "dare_linear"}


def rows() -> list[tuple[str, str]]:
    return [("mergekit", m) for m, _ in MERGEKIT] + [("peft", m) for m in PEFT]


def make_tasks(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1234) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(TASKS)]


def bind(suite: str, method: str, side: str, tasks: list[torch.Tensor]) -> Callable[[], object]:
    """One call of the whole job: `side` is "stock" or "darex"."""
    if suite == "mergekit":
        norm = dict(MERGEKIT)[method]
        if side == "stock":
            import mergekit.sparsify as mk

            rescale = None if norm is None else mk.RescaleNorm(norm)
            return lambda: [mk.sparsify(t, density=DENSITY, method=mk.SparsificationMethod(method), gamma=GAMMA,
                                        epsilon=EPSILON, rescale_norm=rescale) for t in tasks]
        from darex_ext.integrations.mergekit import sparsify

        return lambda: [sparsify(t, density=DENSITY, method=method, gamma=GAMMA, epsilon=EPSILON, rescale_norm=norm,
                                 seed=i) for i, t in enumerate(tasks)]
    weights = torch.tensor(WEIGHTS, dtype=tasks[0].dtype)
    if side == "stock":
        import peft.utils.merge_utils as mu

        fn = getattr(mu, method)
        return lambda: fn(tasks, weights, DENSITY)
    import darex_ext.integrations.peft as dp

    fn = getattr(dp, method)
    if method in RANDOM:
        return lambda: fn(tasks, weights, DENSITY, seed=7)
    return lambda: fn(tasks, weights, DENSITY)


# ---------------------------------------------------------------------------------------------
# Correctness, before timing


def _tie_free(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Distinct magnitudes (distinct in bf16 too), random signs: every cut is unambiguous."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    mags = (torch.randperm(n, generator=g) + 1).double() / n  # n distinct values in (0, 1]
    if dtype == torch.bfloat16:
        mags = (torch.randperm(n, generator=g) + 0x3000).to(torch.int16).view(torch.bfloat16).double()
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return (mags * signs).reshape(shape).to(dtype)


def check(dtype: torch.dtype) -> list[str]:
    """darex against the stock code on 3 small tie-free task tensors; BenchError on a mismatch."""
    tasks = [_tie_free((48, 80), dtype, seed) for seed in range(TASKS)]
    notes = []
    for suite, method in rows():
        stock, ours = bind(suite, method, "stock", tasks)(), bind(suite, method, "darex", tasks)()
        stock, ours = (torch.stack(list(v)) if isinstance(v, list) else v for v in (stock, ours))
        what = f"{suite} {method} {str(dtype).replace('torch.', '')}"
        if ours.shape != stock.shape or ours.dtype != stock.dtype:
            raise BenchError(f"{what}: darex gives {tuple(ours.shape)} {ours.dtype}, stock {tuple(stock.shape)} "
                             f"{stock.dtype}")
        if method in RANDOM:
            if suite == "mergekit":  # kept fraction ~ density: binomial, 6 standard deviations
                n = ours.numel()
                kept = int((ours != 0).sum())
                if abs(kept - n * DENSITY) > 6 * (n * DENSITY * (1 - DENSITY)) ** 0.5:
                    raise BenchError(f"{what}: kept {kept} of {n} at density {DENSITY}")
            notes.append(f"{what}: random, kept fraction checked" if suite == "mergekit" else
                         f"{what}: random (a different mask than PEFT's), shape and dtype checked")
            continue
        exact = suite == "mergekit"  # PEFT sums in another order: equal to a few ulps of the dtype
        rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 1.6e-2
        same = torch.equal(ours, stock) if exact else torch.allclose(ours.double(), stock.double(), rtol=rtol,
                                                                       atol=rtol * 1e-2)
        if not same:
            raise BenchError(f"{what}: differs from the stock output")
        notes.append(f"{what}: {'identical to' if exact else f'equal (rtol {rtol:g}) to'} the stock output")
    return notes


# ---------------------------------------------------------------------------------------------
# Timing and memory


def time_call(call: Callable[[], object], repeat: int, warmup: bool) -> list[float]:
    if warmup:
        call()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        call()  # the result is freed inside the timed region, as a caller would free it
        times.append(time.perf_counter() - t0)
    return times


def memory_jobs(shape, dtypes, selected, threads: int) -> dict[str, int]:
    """Extra peak RSS of every (suite, method, side, dtype), keyed "suite/method/side/dtype"."""
    jobs = [f"{s}/{m}/{side}/{dt}" for dt in dtypes for s, m in selected for side in ("stock", "darex")]
    use_hwm = hwm_resettable()
    batches = [jobs] if use_hwm else [[j] for j in jobs]  # ru_maxrss cannot be reset: one child each
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # big buffers are fresh mmaps, unmapped when freed
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(darex_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    out: dict[str, int] = {}
    for batch in batches:
        request = {"jobs": batch, "shape": list(shape), "threads": threads, "use_hwm": use_hwm}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child"], input=json.dumps(request),
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"memory child process failed (exit {proc.returncode}): {last}")
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def _memory_child() -> int:
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    results = {}
    for job in request["jobs"]:
        suite, method, side, dt = job.split("/")
        bind(suite, method, side, make_tasks((64, 64), DTYPES[dt]))()  # first use maps code and threads
        tasks = make_tasks(tuple(request["shape"]), DTYPES[dt])
        gc.collect()
        results[job] = extra_peak_of(bind(suite, method, side, tasks), request["use_hwm"])
        del tasks
        gc.collect()
    print(json.dumps(results))
    return 0


# ---------------------------------------------------------------------------------------------
# Report


def header(args, shape) -> list[str]:
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("mergekit", "peft"))
    return [
        f"command: {' '.join(shlex.quote(a) for a in ['python', 'benchmarks/bench_merge.py', *args.argv])}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cpus), torch threads: {torch.get_num_threads()}",
        f"torch: {torch.__version__}, darex_ext: {darex_ext.__version__}, {versions}",
        f"inputs: {TASKS} task tensors of {shape[0]} x {shape[1]}; density {DENSITY}, gamma {GAMMA}, "
        f"epsilon {EPSILON}, PEFT weights {list(WEIGHTS)}",
        f"time: median of {args.repeat} calls (darex after 1 warmup); speedup = stock median / darex median",
        "extra peak: peak RSS above the inputs during one call, child process" if not args.no_memory else
        "extra peak: not measured (--no-memory)",
    ]


def table(results: list[dict], markdown: bool) -> list[str]:
    cols = ["suite", "method", "rescale", "dtype", "stock ms", "darex ms", "speedup", "target",
            "stock peak MiB", "darex peak MiB"]
    body = []
    for r in results:
        peak = lambda b: "-" if b is None else f"{b / MiB:.0f}"  # noqa: E731
        body.append([r["suite"], r["method"], r["rescale"], r["dtype"], f"{r['stock_s'] * 1e3:.1f}",
                     f"{r['darex_s'] * 1e3:.1f}", f"{r['speedup']:.1f}x",
                     f">= {r['target']:g}x " + ("met" if r["speedup"] >= r["target"] else "MISSED"),
                     peak(r["stock_peak"]), peak(r["darex_peak"])])
    if markdown:
        return ["| " + " | ".join(row) + " |" for row in [cols, ["---"] * len(cols), *body]]
    widths = [max(len(row[i]) for row in [cols, *body]) for i in range(len(cols))]
    return ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [cols, *body]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_merge.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32", help="comma-separated (default float32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the targets' setting)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="task tensors are size x size (default 4096)")
    parser.add_argument("--only", default="", help="comma-separated row filter, e.g. mergekit/random,peft/ties")
    parser.add_argument("--quick", action="store_true", help="smoke test: 256 x 256, 1 repeat")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.memory_child:
        return _memory_child()
    try:
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        for d in dtypes:
            if d not in DTYPES or DTYPES[d] == torch.float16:
                raise BenchError(f"--dtypes: {d!r} is not one of float32, bfloat16, float64")
        if args.repeat < 1:
            raise BenchError("--repeat must be >= 1")
        if args.quick:
            args.repeat = 1
        shape = QUICK_SHAPE if args.quick else SHAPE if args.size is None else (args.size, args.size)
        torch.set_num_threads(args.threads)
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        selected = [(s, m) for s, m in rows() if not only or f"{s}/{m}" in only]
        for dt in dtypes:
            for note in check(DTYPES[dt]):
                print("check:", note, file=sys.stderr)
        results = []
        for dt in dtypes:
            tasks = make_tasks(shape, DTYPES[dt])
            for suite, method in selected:
                stock = time_call(bind(suite, method, "stock", tasks), args.repeat, warmup=False)
                ours = time_call(bind(suite, method, "darex", tasks), args.repeat, warmup=True)
                r = {"suite": suite, "method": method, "dtype": dt, "stock_s": statistics.median(stock),
                     "darex_s": statistics.median(ours), "target": TARGET[suite], "stock_peak": None,
                     "darex_peak": None,
                     "rescale": (dict(MERGEKIT)[method] or "none") if suite == "mergekit" else
                     ("1/density" if method.startswith("dare") else "none")}
                r["speedup"] = r["stock_s"] / r["darex_s"]
                print(f"{suite} {method} {dt}: stock {r['stock_s'] * 1e3:.1f} ms, darex {r['darex_s'] * 1e3:.1f} ms",
                      file=sys.stderr)
                results.append(r)
            del tasks
            gc.collect()
        if not args.no_memory:
            peaks = memory_jobs(shape, dtypes, selected, args.threads)
            for r in results:
                for side in ("stock", "darex"):
                    r[f"{side}_peak"] = peaks.get(f"{r['suite']}/{r['method']}/{side}/{r['dtype']}")
    except BenchError as e:
        print(f"bench_merge.py: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(header(args, shape)))
    print()
    print("\n".join(table(results, args.markdown)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
