#!/usr/bin/env python
"""End-to-end `darex prune` on a synthetic Llama-shaped checkpoint, against the disk read ceiling.

The script writes a base and a fine-tuned checkpoint (sharded safetensors + index + config.json,
random weights, fine-tuned = base + small noise), then, in the same run:

  read ceiling   read every byte of both checkpoints (sequential 16 MiB reads) in a child process
  write ceiling  write one model's worth of (non-constant) bytes with 16 MiB pwrites + fsync, in a
                 child process: a dense output must also be written, and on some disks writing is
                 far slower than reading, so each step is also shown against read + writing its output
  darex prune    `darex prune BASE FT -o OUT --format dense -p 0.99` (and, with --formats, the
                 delta formats), each in a fresh child process, timed from after its imports
                 (interpreter start and `import torch` are a constant few seconds)

Before each measured step the checkpoint files are evicted from the page cache
(posix_fadvise DONTNEED after fsync), so both read from disk; --warm keeps the cache instead.
Reported: wall time, the fraction of the read ceiling (read-ceiling time / prune time; target
>= 0.70), peak RSS of the prune process against 3x the largest tensor + 1 GiB (target: below).

    python benchmarks/bench_pipeline.py                       # ~1B parameters, bf16 (needs ~8 GB disk)
    python benchmarks/bench_pipeline.py --params 5e7          # a quick validation run
    python benchmarks/bench_pipeline.py --markdown >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

GiB = 1 << 30
CHUNK = 16 << 20


def llama_shape(params: float) -> dict:
    """A Llama-like config with about `params` parameters (GQA 4:1, SwiGLU, untied lm_head)."""
    hidden = 2048 if params >= 5e8 else 1024 if params >= 1e8 else 512
    vocab = 32000 if params >= 1e8 else 8192
    inter = int(round(2.75 * hidden / 64)) * 64
    kv = hidden // 4
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden - hidden) / per_layer))
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers, "vocab_size": vocab,
            "num_attention_heads": hidden // 64, "num_key_value_heads": kv // 64}


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_key_value_heads"] * 64
    out = [("model.embed_tokens.weight", (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_checkpoints(root: str, cfg: dict, dtype: torch.dtype, shard_bytes: int, seed: int) -> tuple[str, str, int]:
    """Write base/ and finetuned/ as sharded HF directories, one tensor in memory at a time."""
    from safetensors.torch import save_file

    shapes = tensor_shapes(cfg)
    elsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        n = elsize
        for s in shape:
            n *= s
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    total = len(shards)
    dirs = []
    for kind in ("base", "finetuned"):
        d = os.path.join(root, kind)
        os.makedirs(d, exist_ok=True)
        weight_map = {}
        for k, shard in enumerate(shards):
            file = f"model-{k + 1:05d}-of-{total:05d}.safetensors"
            tensors = {}
            for name, shape in shard:
                g = torch.Generator().manual_seed(hash((seed, name)) & 0x7FFFFFFF)
                t = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
                if kind == "finetuned":
                    g2 = torch.Generator().manual_seed(hash((seed + 1, name)) & 0x7FFFFFFF)
                    t.add_(torch.randn(shape, generator=g2, dtype=torch.float32), alpha=5e-4)
                tensors[name] = t.to(dtype)
                weight_map[name] = file
            save_file(tensors, os.path.join(d, file), metadata={"format": "pt"})
            del tensors
        total_size = sum(elsize * torch.Size(s).numel() for _, s in shapes)
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": str(dtype)[6:],
                       "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "tie_word_embeddings": False, **cfg},
                      f, indent=2)
        dirs.append(d)
    largest = max(elsize * torch.Size(s).numel() for _, s in shapes)
    return dirs[0], dirs[1], largest


def _weight_files(*dirs: str) -> list[str]:
    return [os.path.join(d, f) for d in dirs for f in sorted(os.listdir(d)) if f.endswith(".safetensors")]


def evict(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_READER = """
import os, sys, time
t = time.perf_counter(); n = 0
buf = bytearray(16 << 20)
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += k
print(n, time.perf_counter() - t)
"""


_WRITER = """
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
buf = bytearray(os.urandom(1 << 20)) * 16
t = time.perf_counter()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
pos = 0
while pos < n:
    buf[0] = (buf[0] + 1) % 256  # distinct blocks: no storage layer may dedupe them
    k = os.pwrite(fd, memoryview(buf)[: min(len(buf), n - pos)], pos)
    pos += k
os.fsync(fd)
os.close(fd)
print(n, time.perf_counter() - t)
"""


# Runs `darex ARGS` after the imports, so the time is the command's own (interpreter start and
# `import torch` are a constant few seconds, not part of streaming a checkpoint); prints that
# time and the peak RSS: VmHWM of this process (ru_maxrss would carry over the benchmark's own
# size across exec) and, with --workers, the largest worker's ru_maxrss.
_PRUNER = """
import resource, sys, time
import safetensors.torch, darex_ext.pipeline, darex_ext.storage
from darex_ext.apps import cli

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024

t = time.perf_counter()
rc = cli.main(sys.argv[1:])
dt = time.perf_counter() - t
print("BENCH", dt, max(hwm(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(rc)
"""


def run_child(argv: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a child process; exits on failure."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"bench_pipeline: {' '.join(argv[:4])} ... failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1e9, help="model size in parameters (default 1e9)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--shard-gb", type=float, default=2.0, help="shard size in GB (default 2)")
    ap.add_argument("-p", type=float, default=0.99)
    ap.add_argument("--method", default="dare")
    ap.add_argument("--formats", nargs="+", default=["dense"], choices=("dense", "seeded", "bitmask", "csr"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--warm", action="store_true", help="do not evict the page cache before each step")
    ap.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    cfg = llama_shape(args.params)
    root = args.workdir or tempfile.mkdtemp(prefix="darex-bench-pipeline-")
    os.makedirs(root, exist_ok=True)
    try:
        t0 = time.perf_counter()
        base, ft, largest = write_checkpoints(root, cfg, dtype, int(args.shard_gb * 1e9), seed=0)
        files = _weight_files(base, ft)
        model_bytes = sum(os.path.getsize(f) for f in files) // 2
        n_params = sum(torch.Size(s).numel() for _, s in tensor_shapes(cfg))
        print(f"# synthetic Llama: {n_params / 1e9:.3f}B parameters ({cfg['num_hidden_layers']} layers, hidden "
              f"{cfg['hidden_size']}), {args.dtype}, {len(files) // 2} shard(s) per model, "
              f"{model_bytes / GiB:.2f} GiB per model; written in {time.perf_counter() - t0:.1f} s", flush=True)

        if not args.warm:
            evict(files)
        _, out = run_child([sys.executable, "-c", _READER, *files])
        nbytes, read_s = out.split()
        read_s = float(read_s)
        scratch = os.path.join(root, "write-ceiling.bin")
        _, out = run_child([sys.executable, "-c", _WRITER, scratch, str(model_bytes)])
        os.unlink(scratch)
        write_s = float(out.split()[1])
        rows = []
        limit = 3 * largest + GiB
        for fmt in args.formats:
            out_dir = os.path.join(root, f"out-{fmt}")
            shutil.rmtree(out_dir, ignore_errors=True)
            if not args.warm:
                evict(files)
            cmd = [sys.executable, "-c", _PRUNER, "prune", base, ft, "-o", out_dir, "--format", fmt, "-p",
                   str(args.p), "--method", args.method, "--workers", str(args.workers), "--quiet"]
            _, stdout = run_child(cmd)
            line = [ln for ln in stdout.splitlines() if ln.startswith("BENCH ")][-1].split()
            wall, peak = float(line[1]), int(line[2])
            written = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
            rows.append((fmt, wall, peak, written))
            shutil.rmtree(out_dir, ignore_errors=True)

        gbps = 2 * model_bytes / read_s / 1e9
        wbps = model_bytes / write_s / 1e9
        lines = [f"read ceiling: both checkpoints ({2 * model_bytes / GiB:.2f} GiB) in {read_s:.2f} s = {gbps:.2f} GB/s"
                 + (" (page cache warm)" if args.warm else " (page cache evicted)"),
                 f"write ceiling: {model_bytes / GiB:.2f} GiB written + fsync in {write_s:.2f} s = {wbps:.2f} GB/s",
                 "",
                 "| step | s | of read ceiling | of read + write ceiling | peak RSS | limit 3x largest + 1 GiB | written |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                 f"| read both checkpoints | {read_s:.2f} | 1.00 | | | | |"]
        ok = True
        for fmt, wall, peak, written in rows:
            frac = read_s / wall
            peak_s = f"{peak / GiB:.2f} GiB" if peak > 0 else "n/a"
            ok &= frac >= 0.70 and 0 < peak < limit
            io_frac = (read_s + written / (wbps * 1e9)) / wall
            lines.append(f"| darex prune --format {fmt} -p {args.p} (workers {args.workers}) | {wall:.2f} | {frac:.2f} | "
                         f"{io_frac:.2f} | {peak_s} | {limit / GiB:.2f} GiB | {written / GiB:.3f} GiB |")
        lines.append("")
        lines.append(f"targets (>= 0.70 of the read ceiling, peak < 3x largest tensor ({largest / 2**20:.0f} MiB) + 1 GiB): "
                     + ("met" if ok else "NOT met"))
        if args.markdown:
            print(f"\n### bench_pipeline: {n_params / 1e9:.2f}B-parameter synthetic Llama, {args.dtype}, "
                  f"{os.cpu_count()} CPUs\n")
        print("\n".join(lines))
        return 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
