#!/usr/bin/env python
"""Mask spec v2 ("skip") against spec v1 ("philox"), the PyTorch way and write ceilings, in one run.

The targets of spec v2 (docs/mask_spec.md "Version 2"), each measured against its own ceiling on
the same tensor in the same process:

- `prune_` vs the write ceiling: the faster of `zero_()` and `mul_(c)`;
- `dare(out=base)` vs `base.add_(delta)`;
- seeded `SparseDelta.add_to_` vs a dense `base.add_(dense)`;
- `keep_mask` vs a new filled bool tensor of the same size, and the same on huge pages;
- `dare(out=base)` and `add_to_` also against the scattered-lines ceiling: a read-modify-write of
  as many cache lines as hold a kept element, evenly spaced (the least any kept-only op moves);
- and every fused op with mask="philox" (spec v1) for comparison.

Each target ratio is the median, over --rounds rounds, of the ratio within a round, where a round
times the ceiling and the op back to back: the shared VMs this runs on drift by up to 1.6x within
minutes, so a ceiling timed once at the start and an op timed a minute later give a ratio of the
drift, not of the op. The best times over all rounds are printed too.

`prune_` at p = 0.99 is also set against the walk (`keep_count`: the gap search alone, which
writes nothing) plus `mul_(2.0)` (a read-modify-write of every line, which an in-place fill of the
zeros between kept elements also is): the time of the two done one after the other.

    python benchmarks/bench_mask_v2.py                       # 2**26 elements, fp32 + bf16, p = 0.99, 0.5
    python benchmarks/bench_mask_v2.py --numel 1048576 --repeat 2 --rounds 2   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

import darex_ext
from darex_ext import storage
from darex_ext.apps.bench import cpu_model
from darex_ext.ops import keep_count
from darex_ext.ops.huge_pages import HUGE_PAGE, advise_huge_pages, huge_pages_on

SEED = 1234


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(call, reset, repeat: int, device: torch.device) -> float:
    call()  # warm up (page faults, thread pool, kernel load)
    best = float("inf")
    for _ in range(repeat):
        reset()
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def new_filled_on_huge_pages(numel: int, device: torch.device) -> torch.Tensor | None:
    """torch.ones(numel, bool) on memory advised to use huge pages before the fill, as darex_ext's
    new outputs of 32 MiB or more are: the like-for-like ceiling of keep_mask. None where the
    advice cannot be given (not Linux, not the CPU, DAREX_HUGE_PAGES=0)."""
    if device.type != "cpu":
        return None
    t = torch.empty(numel, dtype=torch.bool)
    return t.fill_(True) if numel < HUGE_PAGE or advise_huge_pages(t) else None


def paired(ceiling, op, reset, repeat: int, rounds: int, device: torch.device) -> tuple[float, float, float]:
    """(best ceiling, best op, median over rounds of ceiling / op), each round timing both."""
    ceil_t, op_t, ratios = [], [], []
    for _ in range(rounds):
        c = best_time(ceiling, reset, repeat, device)
        o = best_time(op, reset, repeat, device)
        ceil_t.append(c)
        op_t.append(o)
        ratios.append(c / o)
    return min(ceil_t), min(op_t), statistics.median(ratios)


def thread_speedup(repeat: int) -> float:
    """How much faster the compute-bound walk (keep_count of 2^24 at p = 0.99) runs on all threads."""
    like = torch.empty(1 << 24)
    threads = torch.get_num_threads()
    walk = lambda: keep_count(like, 0.99, seed=SEED, mask="skip")  # noqa: E731
    all_threads = best_time(walk, lambda: None, 3 * repeat, torch.device("cpu"))
    torch.set_num_threads(1)
    try:
        one = best_time(walk, lambda: None, 3 * repeat, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return one / all_threads


def run(numel: int, dtypes: list[torch.dtype], ps: list[float], repeat: int, rounds: int,
        device: torch.device) -> list[tuple]:
    rows = []
    g = torch.Generator().manual_seed(SEED)
    for dtype in dtypes:
        src = torch.randn(numel, generator=g).to(dtype).to(device)
        base = torch.randn(numel, generator=g).to(dtype).to(device)
        x = src.clone()
        mask_out = torch.empty(numel, dtype=torch.bool, device=device)
        nop = lambda: None  # noqa: E731
        refill = lambda: x.copy_(src)  # noqa: E731
        zero = best_time(lambda: x.zero_(), refill, repeat, device)
        mul = best_time(lambda: x.mul_(2.0), refill, repeat, device)
        add = best_time(lambda: base.add_(src), nop, repeat, device)
        fill = best_time(lambda: mask_out.fill_(True), nop, repeat, device)
        # keep_mask and to_dense return new tensors: their ceilings allocate too (first-touch
        # page faults are most of a fresh tensor's cost on this VM). keep_mask's output, like
        # every new darex_ext output of 32 MiB or more, is advised to use huge pages, so it is
        # also set against a new mask filled on huge pages.
        new_fill = best_time(lambda: torch.ones(numel, dtype=torch.bool, device=device), nop, repeat, device)
        new_fill_huge = (best_time(lambda: new_filled_on_huge_pages(numel, device), nop, repeat, device)
                         if device.type == "cpu" and huge_pages_on() else None)
        new_zeros = best_time(lambda: torch.zeros(numel, dtype=dtype, device=device), nop, repeat, device)
        name = str(dtype).replace("torch.", "")
        rows += [(name, "-", "ceiling: zero_()", zero, None), (name, "-", "ceiling: mul_(2.0)", mul, None),
                 (name, "-", "ceiling: base.add_(delta)", add, None), (name, "-", "ceiling: bool fill_", fill, None),
                 (name, "-", "ceiling: torch.ones(bool), new", new_fill, None),
                 *([(name, "-", "ceiling: the same on huge pages", new_fill_huge, None)] if new_fill_huge else []),
                 (name, "-", "ceiling: torch.zeros, new", new_zeros, None)]
        for p in ps:
            keep = 1.0 - p
            # The scattered-lines ceiling: an op that touches only the kept elements must still
            # move every 64-byte line holding one (1% of bf16 elements sit in 27.5% of the lines).
            # Timed here: the same number of lines, evenly spaced (a pattern the hardware
            # prefetches, so it is a bound the random lines cannot beat), read-modify-written.
            per_line = max(1, 64 // x.element_size())
            kept_at = darex_ext.keep_mask((numel,), p, seed=SEED, device=device).nonzero().view(-1)
            lines = max(1, torch.unique_consecutive(torch.div(kept_at, per_line, rounding_mode="floor")).numel())
            stride = max(per_line, numel // lines)
            base_l, src_l = base[::stride][:lines], src[::stride][:lines]
            rmw_lines = best_time(lambda: base_l.add_(1.0), nop, repeat, device)
            rmw2_lines = best_time(lambda: base_l.add_(src_l), nop, repeat, device)
            rows += [(name, p, f"ceiling: RMW of the {lines} kept lines ({lines / (numel / per_line):.1%}), strided",
                      rmw_lines, None),
                     (name, p, "ceiling: the same, plus a read of as many lines of a second tensor", rmw2_lines, None)]
            walk = best_time(lambda: keep_count(x, p, seed=SEED, mask="skip"), nop, repeat, device)
            rows.append((name, p, "reference: the walk alone (keep_count mask=skip)", walk, None))
            write_op = (lambda: x.zero_()) if zero <= mul else (lambda: x.mul_(2.0))
            for mask in ("skip", "philox"):
                prune = lambda: darex_ext.prune_(x, p, seed=SEED, mask=mask)  # noqa: E731
                _, t, r = paired(write_op, prune, refill, repeat, rounds, device)
                _, _, r_walk = paired(lambda: (keep_count(x, p, seed=SEED, mask=mask), x.mul_(2.0)), prune, refill, repeat,
                                      rounds, device)
                rows.append((name, p, f"prune_ mask={mask}", t,
                             f"{r:.2f} of write ceiling; {r_walk:.2f} of walk + mul_"))
                dare = lambda: darex_ext.dare(src, base, p, seed=SEED, out=base, mask=mask)  # noqa: E731
                _, t, r = paired(lambda: base.add_(src), dare, nop, repeat, rounds, device)
                _, _, r_lines = paired(lambda: base_l.add_(src_l), dare, nop, repeat, rounds, device)
                rows.append((name, p, f"dare(out=base) mask={mask}", t,
                             f"{r:.2f}x base.add_; {r_lines:.2f} of the lines ceiling"))
                new_mask = lambda: torch.ones(numel, dtype=torch.bool, device=device)  # noqa: E731
                keep_mask = lambda: darex_ext.keep_mask(mask_out, p, seed=SEED, mask=mask)  # noqa: E731
                _, t, r = paired(new_mask, keep_mask, nop, repeat, rounds, device)
                ratio = f"{r:.2f} of a new filled mask"
                if new_fill_huge is not None:
                    _, _, r_huge = paired(lambda: new_filled_on_huge_pages(numel, device), keep_mask, nop, repeat,
                                          rounds, device)
                    ratio += f"; {r_huge:.2f} of one on huge pages"
                rows.append((name, p, f"keep_mask mask={mask}", t, ratio))
                sd = storage.compress_dare(src, p, seed=SEED, mask=mask)
                _, t, r = paired(lambda: base.add_(src), lambda: sd.add_to_(base), nop, repeat, rounds, device)
                _, _, r_lines = paired(lambda: base_l.add_(1.0), lambda: sd.add_to_(base), nop, repeat, rounds, device)
                rows.append((name, p, f"seeded add_to_ mask={mask}", t,
                             f"{r:.2f}x dense add; {r_lines:.2f} of the lines ceiling"))
                t = best_time(lambda: sd.to_dense(), nop, repeat, device)
                rows.append((name, p, f"seeded to_dense mask={mask}", t, f"{new_zeros / t:.2f} of a new zeroed tensor"))
            t = best_time(lambda: x.mul_(torch.bernoulli(torch.full_like(x, keep))).div_(keep), refill, repeat, device)
            rows.append((name, p, "torch prune (bernoulli mul_ div_)", t, None))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_mask_v2.py", description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 26)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--p", default="0.99,0.5")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target ratio (median)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    ps = [float(v) for v in args.p.split(",")]
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cpus), torch threads: {torch.get_num_threads()}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, numel {args.numel}, best of {args.repeat}, "
          f"ratios: median of {args.rounds} interleaved rounds")
    print(f"command: python benchmarks/bench_mask_v2.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    if device.type == "cpu":
        print(f"walk speed-up on {torch.get_num_threads()} threads over 1: {thread_speedup(args.repeat):.2f}x "
              "(compute-bound; well under the thread count when the VM's vCPUs share physical cores)")
    print()
    print("| dtype | p | method | best ms | ratio |")
    print("| --- | --- | --- | ---: | --- |")
    if device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(device)}")
    for dtype, p, method, t, ratio in run(args.numel, dtypes, ps, args.repeat, args.rounds, device):
        print(f"| {dtype} | {p} | {method} | {t * 1e3:.2f} | {ratio or ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
