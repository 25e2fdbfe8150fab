"""Every darex kernel once, at a quick size: the program scripts/gpu_check.sh runs under
compute-sanitizer (memcheck for out-of-bounds and misaligned accesses, racecheck for shared-memory
races). Each dispatcher op runs on its shared samples (python_tests/op_samples.py), then on the
shapes that reach the CUDA-only paths: storage tiles of 1024 elements or columns with offsets,
per-row q with rows shorter than a group of 4, top-k on short and long rows, and refused storage
layouts. Results are not checked here (the tests do that); this only has to touch every line.

    python scripts/sanitizer_smoke.py [--device cuda|cpu] [--dtypes float32,bfloat16]

With --device cpu (the CI dry run) the same calls run on the CPU, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_tests"))  # op_samples and its conftest helpers

from op_samples import SAMPLE_COUNTS, samples  # noqa: E402

OPS = torch.ops.darex


def _on(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, copy=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_on(v, device) for v in x)
    return x


def every_sample(device: str) -> int:
    calls = 0
    for op in SAMPLE_COUNTS:
        fn = getattr(OPS, op).default
        for sample in samples(op, "cpu"):
            fn(*_on(sample.args, device))
            calls += 1
    return calls


def cuda_only_paths(device: str, dtypes) -> int:
    calls = 0
    for dtype in dtypes:
        for n, offset in ((1, 0), (1025, 3), (3 * 1024 + 5, 1021), (70_001, 6)):
            x = torch.randn(n, dtype=dtype, device=device)
            values = OPS.seeded_pack(x, 0.9, 1, offset, None, 0.1)
            OPS.keep_count(x, 0.9, 1, offset)
            OPS.seeded_scatter_(x.clone(), values, 0.9, 1, offset, 1.0, False)
            OPS.seeded_scatter_(x.clone(), values, 0.9, 1, offset, 0.5, True)
            calls += 4
        for row_len in (1, 3, 5, 1000):
            x = torch.randn(4000 // row_len + 1, row_len, dtype=dtype, device=device)
            q = torch.rand(x.shape[0], device=device,
                           dtype=torch.float64 if dtype == torch.float64 else torch.float32) + 0.1
            OPS.prune_(x.clone(), 0.7, 2, 1, q, 1.0)
            OPS.dare_out(x, x.clone(), 0.7, 2, 2, q, 1.0, torch.empty_like(x))
            OPS.seeded_pack(x, 0.7, 2, 3, q, 1.0)
            calls += 3
        for shape in ((3, 1), (5, 33), (2, 1023), (3, 1025), (1, 4097), (0, 4)):
            x = torch.randn(shape, dtype=dtype, device=device)
            x[x.abs() < 0.8] = 0
            values, bm, ro = OPS.bitmask_pack(x)
            OPS.bitmask_scatter_(x.clone(), values, bm, ro, 1.0, False)
            OPS.bitmask_scatter_(x.clone(), values, bm, ro, 2.0, True)
            crow, col, cvalues = OPS.csr_pack(x)
            OPS.csr_scatter_(x.clone(), crow, col, cvalues, 1.0, False)
            OPS.csr_scatter_(x.clone(), crow, col, cvalues, 2.0, True)
            calls += 6
        for rows, cols in ((300, 7), (100, 128), (40, 129), (3, 5000)):
            x = torch.randn(rows, cols, dtype=dtype, device=device)
            OPS.topk_mask(x.abs(), max(1, cols // 3), True, True)
            OPS.magnitude_prune_(x.clone(), max(1, cols // 3), True, None)
            calls += 2
    return calls


def refused_layouts(device: str) -> int:
    x = torch.randn(6, 1030, device=device)
    x[x.abs() < 1] = 0
    values, bm, ro = OPS.bitmask_pack(x)
    bad = bm.clone()
    bad[1, -1] |= 0x80
    crow, col, cvalues = OPS.csr_pack(x)
    wide = col.to(torch.int64)
    wide[-1] = 5000
    calls = 0
    for call in (lambda: OPS.bitmask_scatter_(x.clone(), values, bad, ro, 1.0, False),
                 lambda: OPS.bitmask_scatter_(x.clone(), values[:-1], bm, ro, 1.0, False),
                 lambda: OPS.csr_scatter_(x.clone(), crow, wide, cvalues, 1.0, False),
                 lambda: OPS.seeded_scatter_(x.clone(), values, 0.9, 1, 0, 1.0, False)):
        try:
            call()
        except ValueError:
            calls += 1
        else:
            raise SystemExit("a bad layout was accepted")
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtypes", default="float32,bfloat16,float16,float64",
                        help="dtypes of the CUDA-only paths (the samples cover all)")
    args = parser.parse_args(argv)
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    import darex_ext  # noqa: F401  (loads the ops)

    torch.manual_seed(0)
    calls = every_sample(args.device) + cuda_only_paths(args.device, dtypes) + refused_layouts(args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer smoke: {calls} kernel calls on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
