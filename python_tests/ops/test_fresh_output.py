"""New outputs of 32 MiB or more (keep_mask, dare, topk_mask, magnitude_rank_mask,
SparseDelta.to_dense, the bitmask and CSR packs' values) are advised to use transparent huge pages on Linux, smaller ones are not,
DAREX_HUGE_PAGES=0 turns it off, and the values never depend on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                                reason="needs Linux with transparent huge pages (madvise, /proc/self/smaps)")

# Runs in a child: DAREX_HUGE_PAGES is read once per process. Prints, per op, whether the memory
# 4 MiB into the output (past the unadvised head below the first 2 MiB boundary) has the "hg"
# (MADV_HUGEPAGE) flag in /proc/self/smaps, and a digest of the values.
CHILD = textwrap.dedent("""
    import hashlib, json, re, sys, torch, darex_ext
    from darex_ext import ops, storage
    from darex_ext.ops.rank_mask import magnitude_rank_mask

    def advised(t):
        addr = t.data_ptr() + min(4 << 20, t.nbytes - 1)
        for block in re.split(r"\\n(?=[0-9a-f]+-[0-9a-f]+ )", open("/proc/self/smaps").read()):
            lo, hi = (int(x, 16) for x in block.split()[0].split("-"))
            if lo <= addr < hi:
                return any(line.startswith("VmFlags") and " hg" in line for line in block.splitlines())
        raise AssertionError("no mapping holds the tensor")

    def digest(t):
        return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()

    n = int(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    ft = torch.randn(n, generator=g)
    base = torch.randn(n, generator=g)
    outs = {
        "keep_mask": darex_ext.keep_mask((4 * n,), 0.99, seed=3),  # bool: 4 bytes per fp32 element
        "dare": darex_ext.dare(ft, base, 0.9, seed=3),
        "topk_mask": darex_ext.topk_mask(ft.repeat(4), n // 100),  # a bool mask of 4n elements
        "rank_mask": magnitude_rank_mask(ft.repeat(4).view(1024, -1), 0.8, 0.95, seed=3),
        "to_dense": storage.compress_dare(ft, 0.9, seed=3).to_dense(),  # allocated in Python
        "bitmask_values": ops.bitmask_pack(ft)[0],  # randn has no zeros: n values
        "csr_values": ops.csr_pack(ft)[2],
        "csr_columns": ops.csr_pack(ft)[1],  # one row of n columns: 4-byte indices
    }
    print(json.dumps({name: [advised(t), digest(t)] for name, t in outs.items()}))
""")


def child(numel: int, huge_pages: str | None) -> dict:
    env = dict(os.environ)
    env.pop("DAREX_HUGE_PAGES", None)
    if huge_pages is not None:
        env["DAREX_HUGE_PAGES"] = huge_pages
    done = subprocess.run([sys.executable, "-c", CHILD, str(numel)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_large_outputs_are_advised_and_the_switch_turns_it_off():
    numel = 1 << 23  # 32 MiB of fp32 and of the 4x-long bool mask: the smallest advised size
    on, off = child(numel, None), child(numel, "0")
    for name in on:
        assert on[name][0], f"{name}: a {numel * 4 >> 20} MiB output was not advised"
        assert not off[name][0], f"{name}: advised under DAREX_HUGE_PAGES=0"
        assert on[name][1] == off[name][1], f"{name}: the values depend on the advice"


def test_small_outputs_are_not_advised():
    small = child((1 << 23) - 1024, None)  # just under 32 MiB each
    assert not any(advised for advised, _ in small.values())
