#!/usr/bin/env python
"""Switching one loaded base between 8 sparse fine-tunes (darex_ext.serving.DeltaBank) vs loading
the fine-tuned checkpoint from disk and vs adding a dense delta.

    python benchmarks/bench_swap.py                         # 1e9 params, bf16, p = 0.99 and 0.9
    python benchmarks/bench_swap.py --params 1e7 --repeat 1 # smoke test
    python benchmarks/bench_swap.py --formats seeded --index regenerate   # positions at every switch
    python benchmarks/bench_swap.py --device cuda --markdown

The model is a synthetic Llama-shaped stack (hidden h, GQA k/v of h/8, MLP 2.75 h, vocab 16 h,
untied lm_head), its layer count chosen so the parameters come to --params; the base is random
bf16. Fine-tune i's delta per tensor is small noise (a slice of one random pool at a per-tensor
offset) pruned by the library: seeded = compress_dare, bitmask / csr = compress(prune_(...)),
each tensor with its own seed (darex_ext.seeds.tensor_seed), so every fine-tune has its own masks.

Measured (median over --repeat rounds through all 8 fine-tunes):
- switch: ``bank.switch(next)``, i.e. deactivate the active fine-tune (write its saved base
  values back) and activate the next (save the base values and add, one pass per tensor);
- load: ``safetensors.torch.load_file`` of a fine-tuned checkpoint of the same layout (written
  once, then read once so the page cache is warm) plus ``model.load_state_dict`` (the copy into
  the live parameters);
- dense add: ``p.add_(d)`` over every parameter with a dense delta held in memory (one pass;
  undoing it would need another);
- memory: ``bank.memory()`` with the 8 deltas added and one active: (deltas + saved values) / base.
"lines touched": the fraction of the model's 64-byte cache lines one delta's kept entries fall
in (what a CPU must read and write, whatever the kept bytes); the scattered-lines ceiling is a
read-modify-write of that fraction of every parameter's lines, twice (old delta out, new in),
evenly spaced: the least a switch can cost on this machine, timed in the same run. On CUDA also: the switch's logical bytes (index, values, saved values, the parameter entries
read and written) over its time, as a fraction of a device-to-device copy_ measured in the run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import shlex
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

import darex_ext
from darex_ext.apps.bench import cpu_model
from darex_ext.ops import prune_
from darex_ext.seeds import tensor_seed
from darex_ext.serving import DeltaBank
from darex_ext.storage import compress, compress_dare

FORMATS = ("seeded", "bitmask", "csr")
N_FT = 8
TARGET_LOAD, TARGET_DENSE, TARGET_MEM = 50.0, 10.0, 8 * 0.025


def llama_shapes(params: float) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a Llama-like model with about `params` parameters."""
    h = max(64, int(round(math.sqrt(params / 263.0) / 64)) * 64)
    kv, ffn, vocab = max(8, h // 8), int(2.75 * h) // 64 * 64 or 64, 16 * h
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * ffn + 2 * h
    layers = max(1, int(round((params - 2 * vocab * h - h) / per_layer)))
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                   (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                   (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                   (p + "mlp.gate_proj.weight", (ffn, h)), (p + "mlp.up_proj.weight", (ffn, h)),
                   (p + "mlp.down_proj.weight", (h, ffn))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    return shapes


def build_model(shapes, dtype, device) -> nn.Module:
    root = nn.Module()
    gen = torch.Generator(device=device).manual_seed(0)
    for name, shape in shapes:
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        t = torch.empty(shape, dtype=dtype, device=device)
        for chunk in t.view(-1).split(1 << 24):  # bounded fp32 temporaries
            chunk.copy_(torch.randn(chunk.numel(), generator=gen, device=device) * 0.02)
        mod.register_parameter(leaf, nn.Parameter(t, requires_grad=False))
    return root.eval()


class NoisePool:
    """Random small values; tensor views at per-(fine-tune, tensor) offsets stand in for
    fine-tune - base without drawing a billion random numbers per fine-tune."""

    def __init__(self, largest: int, dtype, device):
        gen = torch.Generator(device=device).manual_seed(1)
        self.size = largest + (1 << 20)
        self.pool = (torch.randn(self.size, generator=gen, device=device) * 1e-3).to(dtype)

    def delta(self, ft: int, name: str, shape) -> torch.Tensor:
        n = math.prod(shape)
        off = tensor_seed(ft, name) % (self.size - n + 1)
        return self.pool[off:off + n].view(shape)


def make_deltas(shapes, pool: NoisePool, ft: int, formats, p: float) -> dict[str, dict]:
    """{format: {tensor: SparseDelta}} of fine-tune `ft`; bitmask and csr share one prune_."""
    out = {fmt: {} for fmt in formats}
    for name, shape in shapes:
        d, seed = pool.delta(ft, name, shape), tensor_seed(1000 + ft, name)
        if "seeded" in out:
            out["seeded"][name] = compress_dare(d, p, seed=seed)
        if "bitmask" in out or "csr" in out:
            pruned = prune_(d.clone(), p, seed=seed)
            for fmt in ("bitmask", "csr"):
                if fmt in out:
                    out[fmt][name] = compress(pruned, format=fmt)
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench_load(model: nn.Module, device, workdir: str, repeat: int) -> list[float]:
    from safetensors.torch import load_file, save_file

    path = os.path.join(workdir, "finetuned.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
    with open(path, "rb") as fh:  # warm the page cache
        while fh.read(64 << 20):
            pass
    times = []
    try:
        for _ in range(repeat + 1):
            def load():
                state = load_file(path, device=str(device))
                model.load_state_dict(state)
                del state
            times.append(timed(load, device))
            gc.collect()
    finally:
        os.unlink(path)
    return times[1:]


def bench_dense_add(model: nn.Module, shapes, pool: NoisePool, device, repeat: int) -> list[float]:
    params = dict(model.named_parameters())
    dense = {name: pool.delta(0, name, shape).clone() for name, shape in shapes}
    times = []
    with torch.no_grad():
        for _ in range(repeat + 1):
            times.append(timed(lambda: [params[n].add_(d) for n, d in dense.items()], device))
    del dense
    gc.collect()
    return times[1:]


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    best = min(timed(lambda: y.copy_(x), device) for _ in range(5))
    return 2 * nbytes / best


def switch_bytes(bank: DeltaBank, name: str) -> int:
    """Logical bytes one switch into `name` moves: index read, values read, base read, saved
    write, parameter write (one positions_add_ pass); the deactivate after it reads the index and
    the saved values and writes the parameter again (positions_put_)."""
    total = 0
    for e in bank._deltas[name].entries:
        if e.dense is not None:
            total += 4 * e.dense.numel() * e.dense.element_size()
            continue
        k, s = e.kept, e.dtype.itemsize
        idx = e.index.nbytes or e.nbytes - k * s
        total += 2 * idx + 6 * k * s
    return total


def build_banks(model, shapes, pool, formats, p, index) -> tuple[dict[str, DeltaBank], float]:
    t0 = time.perf_counter()
    banks = {fmt: DeltaBank(model, index=index) for fmt in formats}
    for i in range(N_FT):
        for fmt, delta in make_deltas(shapes, pool, i, formats, p).items():
            banks[fmt].add(f"ft{i}", delta)
    return banks, time.perf_counter() - t0


def lines_touched(bank: DeltaBank, name: str, line: int = 64) -> float:
    """Expected fraction of the model's 64-byte cache lines holding a kept entry of one delta:
    1 - (1 - density)^(entries per line); a random mask at p = 0.99 in bf16 touches 27.5%."""
    hit = total = 0.0
    for e in bank._deltas[name].entries:
        n = math.prod(e.shape)
        lines = n * e.dtype.itemsize / line
        density = 1.0 if e.dense is not None else e.kept / max(1, n)
        hit += lines * (1 - (1 - density) ** (line / e.dtype.itemsize))
        total += lines
    return hit / total if total else 0.0


def lines_ceiling(model: nn.Module, fraction: float, device, repeat: int) -> float:
    """Seconds for the least a switch must move: the old delta's lines and the new one's, each a
    read-modify-write of `fraction` of every parameter's 64-byte lines. Timed as evenly spaced
    lines (which the hardware prefetches, so random kept lines cannot be faster); mul_(1.0)
    leaves the values as they are."""
    views = []
    for prm in model.parameters():
        flat = prm.detach().view(-1)
        per_line = max(1, 64 // flat.element_size())
        stride = max(per_line, int(per_line / max(fraction, 1e-9)))
        views.append(flat[::stride])
    with torch.no_grad():
        return min(timed(lambda: [v.mul_(1.0) for _ in range(2) for v in views], device) for _ in range(repeat + 1))


def bench_bank(bank: DeltaBank, fmt, p, device, repeat) -> dict:
    names = bank.names
    switches, acts, deacts = [], [], []
    bank.switch(names[-1])  # warm-up
    for _ in range(repeat):
        for n in names:
            switches.append(timed(lambda: bank.switch(n), device))
    for n in names[: max(2, min(N_FT, repeat * 2))]:
        deacts.append(timed(bank.deactivate, device))
        acts.append(timed(lambda: bank.activate(n), device))
    mem = bank.memory()
    moved = switch_bytes(bank, names[0])
    bank.deactivate()
    frac = lines_touched(bank, names[0])
    return {"format": fmt, "p": p, "index": bank.index, "switch": switches, "activate": acts, "deactivate": deacts,
            "memory": mem, "bytes_moved": moved, "lines": frac,
            "lines_ceiling": lines_ceiling(bank.model, frac, device, repeat)}


def fmt_table(rows, load_s, dense_s, bw, markdown: bool) -> list[str]:
    head = ["format", "index", "p", "switch ms (median)", "min ms", "activate ms", "deactivate ms",
            "x vs load", "x vs dense add", "deltas % of base (8)", "+ active %", "per delta %"]
    head.append("lines touched % (est.)")
    if bw:
        head += ["GB/s moved", "% of copy_"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    else:
        lines.append("  ".join(head))
    for r in rows:
        med = statistics.median(r["switch"])
        base = r["memory"]["base"]
        cells = [r["format"], r["index"], f"{r['p']:g}", f"{med * 1e3:.1f}", f"{min(r['switch']) * 1e3:.1f}",
                 f"{statistics.median(r['activate']) * 1e3:.1f}", f"{statistics.median(r['deactivate']) * 1e3:.1f}",
                 f"{load_s / med:.1f}x", f"{dense_s / med:.1f}x",
                 f"{100 * r['memory']['deltas_total'] / base:.2f}%", f"{100 * r['memory']['active'] / base:.2f}%",
                 f"{100 * r['memory']['deltas_total'] / base / N_FT:.2f}%"]
        cells.append(f"{100 * r['lines']:.1f}%")
        if bw:
            gbs = r["bytes_moved"] / med
            cells += [f"{gbs / 1e9:.1f}", f"{100 * gbs / bw:.0f}%"]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_swap.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=1e9, help="model size in parameters (default 1e9)")
    ap.add_argument("--formats", default="seeded,bitmask,csr", help="comma list of seeded, bitmask, csr")
    ap.add_argument("--ps", default="0.99,0.9", help="drop rates (default 0.99,0.9)")
    ap.add_argument("--index", choices=("auto", "regenerate"), default="auto", help="DeltaBank(index=...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2, help="rounds through the 8 fine-tunes (default 2)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="where the checkpoint for the load baseline goes")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        ap.error(f"--formats: unknown {bad}; choose from {FORMATS}")
    ps = [float(x) for x in args.ps.split(",")]
    if args.params < 1e4 or args.repeat < 1:
        ap.error("--params must be >= 1e4 and --repeat >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and darex_ext.cuda_built()):
        ap.error("--device cuda: no CUDA device or no CUDA kernels in this build")
    t_start = time.perf_counter()
    shapes = llama_shapes(args.params)
    n_params = sum(math.prod(s) for _, s in shapes)
    model = build_model(shapes, torch.bfloat16, device)
    pool = NoisePool(max(math.prod(s) for _, s in shapes), torch.bfloat16, device)
    workdir = args.workdir or tempfile.gettempdir()
    load_s = statistics.median(bench_load(model, device, workdir, args.repeat))
    dense_s = statistics.median(bench_dense_add(model, shapes, pool, device, args.repeat))
    bw = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for p in ps:
        for fmt in formats:  # one bank at a time: at p = 0.9 eight deltas are 1.3-2.2x the base
            banks, build_s = build_banks(model, shapes, pool, [fmt], p, args.index)
            print(f"  [{fmt} p={p:g}: built {N_FT} deltas in {build_s:.1f} s]", file=sys.stderr, flush=True)
            rows.append(bench_bank(banks[fmt], fmt, p, device, args.repeat))
            del banks
            gc.collect()

    h = shapes[1][1][0] if len(shapes) > 1 else 0
    out = [
        f"command: python benchmarks/bench_swap.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cpus), torch threads: {torch.get_num_threads()}",
        f"torch: {torch.__version__}, darex_ext: {darex_ext.__version__}, device: {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"model: {n_params / 1e9:.3f} B params bf16 ({n_params * 2 / 2**30:.2f} GiB), {len(shapes)} tensors, "
        f"hidden {h}; {N_FT} fine-tunes per row",
        f"load checkpoint (safetensors load_file + load_state_dict, warm page cache): {load_s * 1e3:.0f} ms; "
        f"dense delta add (one pass): {dense_s * 1e3:.0f} ms"
        + (f"; copy_ bandwidth {bw / 1e9:.0f} GB/s" if bw else ""),
        "",
    ]
    out += fmt_table(rows, load_s, dense_s, bw, args.markdown)
    out.append("")
    for r in rows:
        if r["p"] != 0.99:
            continue
        med = statistics.median(r["switch"])
        mem = (r["memory"]["deltas_total"] + r["memory"]["active"]) / r["memory"]["base"]
        checks = [("vs load", load_s / med, TARGET_LOAD, ">="), ("vs dense add", dense_s / med, TARGET_DENSE, ">="),
                  ("memory over base", mem, TARGET_MEM, "<=")]
        parts = []
        for what, got, want, op in checks:
            ok = got >= want if op == ">=" else got <= want
            shown = f"{got:.1f}x" if op == ">=" else f"{100 * got:.1f}%"
            wanted = f"{want:g}x" if op == ">=" else f"{100 * want:g}%"
            parts.append(f"{what} {shown} ({op} {wanted}: {'met' if ok else 'MISSED'})")
        out.append(f"targets, {r['format']} ({r['index']}) p = 0.99: " + "; ".join(parts))
        c = r["lines_ceiling"]
        out.append(f"  scattered-lines ceiling (RMW of the {100 * r['lines']:.1f}% of lines the old and the new delta "
                   f"touch, evenly spaced): {c * 1e3:.1f} ms, so at most {load_s / c:.1f}x vs load and "
                   f"{dense_s / c:.1f}x vs dense add on this machine; the switch is at {100 * c / med:.0f}% of it")
    out.append(f"total bench time {time.perf_counter() - t_start:.0f} s")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
