#!/usr/bin/env python
"""Sparse delta storage: encode, decode and add_to_ per format vs two ceilings measured in the
same run (the dense `base += delta` and a copy of the tensor), and bytes per parameter vs the
information bound.

    python benchmarks/bench_storage.py                  # 2**26 elements, fp32 + bf16, p = 0.9, 0.99
    python benchmarks/bench_storage.py --size 20        # smoke test
    python benchmarks/bench_storage.py --markdown >> benchmarks/RESULTS.md
    python benchmarks/bench_storage.py --device cuda --size 28 --markdown

Encode is compress_dare (seeded: fused drop + rescale + pack) or compress of the pruned tensor
(bitmask, csr); decode is to_dense(); add_to_ is the fused scatter-add into a base. "% of dense
add" is the dense add's time / this time, "% of copy" the time of `dst.copy_(src)` (device to
device on CUDA) / this time (same numel, dtype, device). The information bound is the kept
values plus the binary entropy of the mask (zero for seeded: the mask is a function of the
seed). Results are checked against prune_ before timing; the seeded file size is checked
against its target (<= 1.01 x the kept values + 4 KiB).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable

import torch

import darex_ext
from darex_ext.apps.bench import BenchError, header_lines, resolve_device, time_method
from darex_ext.storage import compress, compress_dare, information_bound_bytes, save

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
FORMATS = ("seeded", "bitmask", "csr")
SEED = 1234


def _noop() -> None:
    pass


def bench_dtype(dtype: torch.dtype, numel: int, cols: int, ps, repeat: int,
                device: torch.device = torch.device("cpu")) -> tuple[list[dict], dict]:
    def timed(fn: Callable[[], object]) -> list[float]:  # 1 warmup; CUDA: events on the stream
        return time_method(fn, _noop, repeat, device)

    gen = torch.Generator(device=device).manual_seed(SEED)
    shape = (numel // cols, cols) if numel >= cols and numel % cols == 0 else (numel,)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    base = torch.randn(shape, generator=gen, device=device).to(dtype)
    dense_delta = torch.randn(shape, generator=gen, device=device).to(dtype)
    copy_dst = torch.empty_like(x)
    # The ceilings are re-measured after every format and their best times over the whole run are
    # used: on a shared machine one early measurement can land in a slow spell and inflate every ratio.
    ceilings = {"times": lambda: base.add_(dense_delta), "copy_times": lambda: copy_dst.copy_(x)}
    dense = {key: timed(fn) for key, fn in ceilings.items()}
    rows = []
    for p in ps:
        pruned = darex_ext.prune_(x.clone(), p, seed=SEED)
        for fmt in FORMATS:
            if fmt == "seeded":
                encode = lambda: compress_dare(x, p, seed=SEED)  # noqa: E731
            else:
                encode = lambda fmt=fmt, pruned=pruned: compress(pruned, fmt)  # noqa: E731
            sd = encode()
            if not torch.equal(sd.to_dense(), pruned):
                raise BenchError(f"{fmt} to_dense differs from prune_ ({dtype}, p={p}, {device})")
            row = {"dtype": dtype, "p": p, "format": fmt, "numel": numel, "kept": sd.kept, "nbytes": sd.nbytes,
                   "encode": timed(encode), "decode": timed(sd.to_dense),
                   "add_to_": timed(lambda sd=sd: sd.add_to_(base))}
            row["bound"] = information_bound_bytes(numel, sd.kept, x.element_size(), seeded=fmt == "seeded")
            if fmt == "seeded":
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "d.safetensors")
                    save(path, {"model.layers.0.mlp.down_proj.weight": sd})
                    row["file_bytes"] = os.path.getsize(path)
            rows.append(row)
            for key, fn in ceilings.items():
                dense[key] += timed(fn)
        del pruned
    return rows, dense


def fmt_table(results, markdown: bool) -> str:
    cols = ["dtype", "p", "format", "op", "best ms", "median ms", "G elem/s", "% of dense add", "% of copy",
            "bytes/param", "bound bytes/param", "x bound"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join([":---"] * 4 + ["---:"] * (len(cols) - 4)) + "|"]
    else:
        lines += ["  ".join(f"{c:>14}" for c in cols)]
    for rows, dense in results:
        dense_best, copy_best = min(dense["times"]), min(dense["copy_times"])
        numel = rows[0]["numel"]
        dt = str(rows[0]["dtype"]).replace("torch.", "")

        def ceiling_row(op: str, times: list[float]) -> list[str]:
            best = min(times)
            return [dt, "-", "dense", op, f"{best * 1e3:.2f}", f"{statistics.median(times) * 1e3:.2f}",
                    f"{numel / best / 1e9:.3f}", f"{100 * dense_best / best:.0f}%",
                    f"{100 * copy_best / best:.0f}%", "", "", ""]

        cells = [ceiling_row("base += delta (ceiling)", dense["times"]),
                 ceiling_row("dst.copy_(src) (ceiling)", dense["copy_times"])]
        for r in rows:
            for op in ("encode", "decode", "add_to_"):
                best = min(r[op])
                bpp = r["nbytes"] / r["numel"]
                cells.append([dt, f"{r['p']:g}", r["format"], op, f"{best * 1e3:.2f}",
                              f"{statistics.median(r[op]) * 1e3:.2f}", f"{r['numel'] / best / 1e9:.3f}",
                              f"{100 * dense_best / best:.0f}%", f"{100 * copy_best / best:.0f}%", f"{bpp:.4f}",
                              f"{r['bound'] / r['numel']:.4f}", f"{r['nbytes'] / r['bound']:.3f}" if r["bound"] else "-"])
        for c in cells:
            lines.append("| " + " | ".join(c) + " |" if markdown else "  ".join(f"{v:>14}" for v in c))
    return "\n".join(lines)


def file_checks(results) -> list[str]:
    out = []
    for rows, _ in results:
        for r in rows:
            if "file_bytes" in r:
                values = r["kept"] * torch.empty((), dtype=r["dtype"]).element_size()
                limit = 1.01 * values + 4096
                ok = r["file_bytes"] <= limit
                out.append(f"seeded file {str(r['dtype']).replace('torch.', '')} p={r['p']:g}: {r['file_bytes']} bytes, "
                           f"kept values {values} bytes, limit 1.01x + 4 KiB = {limit:.0f}: {'OK' if ok else 'OVER'}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_storage.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--size", type=int, default=26, help="log2 of the number of elements (default 26)")
    ap.add_argument("--cols", type=int, default=4096, help="columns of the 2-D test tensor (default 4096)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--ps", default="0.9,0.99")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown section for RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    numel = 1 << args.size
    ps = [float(p) for p in args.ps.split(",")]
    try:
        device = resolve_device(args.device)
        results = [bench_dtype(DTYPES[d], numel, args.cols, ps, args.repeat, device)
                   for d in args.dtypes.split(",")]
    except BenchError as exc:
        print(f"bench_storage.py: error: {exc}", file=sys.stderr)
        return 1
    command = shlex.join(list(getattr(sys, "orig_argv", [sys.executable] + sys.argv)))
    # Machine facts as darex_ext.apps.bench prints them; its other lines describe the prune_ bench.
    facts = [ln for ln in header_lines(device=device, numel=numel, repeat=args.repeat, command=command)
             if ln.startswith(("command:", "date:", "cpu:", "torch:", "gpu:"))]
    copy = "device-to-device dst.copy_(src)" if device.type == "cuda" else "dst.copy_(src)"
    header = [f"- {ln}" for ln in facts] + [
        f"- device: {device}, numel: {numel} (2^{args.size}), shape: ({numel // args.cols}, {args.cols}); "
        f"timing: 1 warmup + best/median of {args.repeat}"
        + (", CUDA events" if device.type == "cuda" else ""),
        f"- ceilings: base += delta and {copy}, re-measured after every format, best over the run; "
        "% of X: X's best time / this best time",
    ]
    if args.markdown:
        where = f"CUDA, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
        print(f"## bench_storage: sparse delta formats ({where}), {datetime.date.today()}\n")
        print("\n".join(header) + "\n")
        print(fmt_table(results, True) + "\n")
        print("\n".join(f"- {line}" for line in file_checks(results)))
    else:
        print("\n".join(header))
        print(fmt_table(results, False))
        print("\n".join(file_checks(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
