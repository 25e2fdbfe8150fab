"""Streaming: `darex prune` holds a few tensors at a time, never the model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a large pytest process would
# report the parent's size.
_CHILD = """
import sys
import safetensors.torch, darex_ext.pipeline, darex_ext.storage, darex_ext.algorithms.merge
from darex_ext.apps import cli

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

ready = hwm_kib()
assert cli.main(sys.argv[1:]) == 0
print(ready, hwm_kib())
"""


def _peak_growth_mib(argv: list[str]) -> float:
    done = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = (int(v) for v in done.stdout.split()[-2:])
    return (after - before) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for VmHWM")
def test_prune_and_merge_memory_is_a_few_tensors_not_the_model(tmp_path):
    # 48 tensors of 4 MiB (192 MiB per model): holding the model would cost 2-3x that
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(48)]
    base = {n: torch.randn(1024, 1024, generator=g) for n in names}
    for d in ("base", "ft", "ft2"):
        os.makedirs(tmp_path / d)
        state = base if d == "base" else {n: t + 0.01 for n, t in base.items()}
        save_file(state, str(tmp_path / d / "model.safetensors"), metadata={"format": "pt"})
    del base
    tensor_mib = 4.0
    for argv in (["prune", str(tmp_path / "base"), str(tmp_path / "ft"), "-o", str(tmp_path / "o1"), "-p", "0.9",
                  "--quiet"],
                 ["prune", str(tmp_path / "base"), str(tmp_path / "ft"), "-o", str(tmp_path / "o2"), "-p", "0.9",
                  "--format", "bitmask", "--method", "magnitude", "--quiet"],
                 ["merge", str(tmp_path / "base"), str(tmp_path / "ft"), str(tmp_path / "ft2"), "-o",
                  str(tmp_path / "o3"), "--method", "dare-ties", "-p", "0.9", "--quiet"]):
        growth = _peak_growth_mib(argv)
        print(argv[0], argv[-2:], f"{growth:.1f} MiB")
        # a handful of live tensors (inputs, delta, fp32 copies for merging) plus allocator slack
        assert growth < 12 * tensor_mib + 16, (argv[0], growth)
