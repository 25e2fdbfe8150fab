"""Extra peak memory of one call of a bench method, above what its inputs already hold.

CUDA: the caching allocator's peak counter. CPU: a fresh child process that allocates the
inputs, resets the peak RSS (Linux: /proc/self/clear_refs), runs the call once and reads VmHWM.
Where clear_refs is unavailable each method gets its own child and ru_maxrss is read instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable

import torch

import darex_ext

from .bench_cases import DTYPES, BenchError, Method, Workspace, bind

__all__ = ["cuda_extra_peak", "cpu_extra_peaks", "hwm_resettable"]


def cuda_extra_peak(call: Callable[[], object], reset: Callable[[], None]) -> int:
    reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return max(peak, 0)


def cpu_extra_peaks(jobs: list[tuple[Method, torch.dtype]], numel: int, threads: int) -> list[int]:
    """Extra peak bytes of each (method, dtype) on CPU tensors of `numel` elements."""
    specs = [{"key": str(i), "dtype": str(dtype).replace("torch.", "", 1),
              "method": dataclasses.asdict(m)} for i, (m, dtype) in enumerate(jobs)]
    use_hwm = hwm_resettable()
    batches = [specs] if use_hwm else [[s] for s in specs]
    peaks: dict[str, int] = {}
    for batch in batches:
        if batch:
            peaks.update(_run_child(batch, numel, threads, use_hwm))
    return [peaks[s["key"]] for s in specs]


def hwm_resettable() -> bool:
    """True where /proc/self/clear_refs resets the peak RSS (Linux >= 4.0; not every sandbox)."""
    try:
        _reset_hwm()
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 64
    except OSError:
        return False


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def extra_peak_of(call, use_hwm: bool) -> int:
    """Bytes of peak RSS that one `call()` adds above the current RSS (its result freed after)."""
    if use_hwm:
        _reset_hwm()
        before = _status_kib("VmRSS") * 1024
    else:
        before = _maxrss_bytes()
    result = call()
    after = _status_kib("VmHWM") * 1024 if use_hwm else _maxrss_bytes()
    del result
    return max(after - before, 0)


def _run_child(specs: list[dict], numel: int, threads: int, use_hwm: bool) -> dict[str, int]:
    env = dict(os.environ)
    # A fixed mmap threshold stops glibc from raising it as big blocks are freed: every large
    # buffer is then a fresh mmap that counts in RSS and is unmapped, not cached, when freed.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(darex_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    request = {"jobs": specs, "numel": numel, "threads": threads, "use_hwm": use_hwm}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, darex_ext.apps.bench_memory as m; sys.exit(m._child_main())"],
        input=json.dumps(request), capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"memory child process failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main() -> int:
    """Child side of _run_child: request on stdin, {key: extra bytes} as one JSON line on stdout."""
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    use_hwm, numel = request["use_hwm"], request["numel"]
    cpu = torch.device("cpu")
    by_dtype: dict[str, list[dict]] = {}
    for job in request["jobs"]:
        by_dtype.setdefault(job["dtype"], []).append(job)
    results: dict[str, int] = {}
    for name, jobs in by_dtype.items():
        small, ws = Workspace(4096, DTYPES[name], cpu), Workspace(numel, DTYPES[name], cpu)
        for job in jobs:
            m = Method(**job["method"])
            call, reset = bind(m, small)
            reset()
            call()  # first use of a code path maps pages and starts threads: not the op's cost
            call, reset = bind(m, ws)
            reset()
            results[job["key"]] = extra_peak_of(call, use_hwm)
        del small, ws
    print(json.dumps(results))
    return 0
