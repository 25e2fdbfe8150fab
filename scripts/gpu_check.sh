#!/usr/bin/env bash
# The GPU job: build darex_ext for Hopper (sm_90 only), run every CUDA test, then time the
# kernels at 2^28 elements against a device-to-device copy measured in the same run.
#
# Any session that finds a GPU lent (the device tool's `status`) runs this first, as one call:
#     run(command="bash scripts/gpu_check.sh", timeout_s=540)
# The files it leaves in $OUT come back with the reply (the tool brings back at most 8):
#     log               everything printed below (the script tees itself into it)
#     build.log         the full pip / nvcc output of the build
#     bench_prune.md    fused prune_/dare vs the PyTorch way and the copy_ ceiling (header + table)
#     bench_storage.md  sparse delta encode/decode/add_to_ vs the dense add and the copy ceilings
#     bench_topk.md     magnitude top-k vs torch.topk / kthvalue / argsort and the copy ceiling
#     bench_swap.md     DeltaBank switch latency vs a dense delta add and a checkpoint load
#     sanitizer.log     compute-sanitizer memcheck and racecheck over scripts/sanitizer_smoke.py
#     summary.md        one row per step: status, seconds, note (also printed last)
# Exit status: 0 when every step passed, else 1. A failed test does not stop the benchmarks:
# device time is scarce, so one call gathers everything it can.
#
# Here, with no GPU, the same harness runs with the CUDA parts left out:
#     bash scripts/with_env.sh bash scripts/gpu_check.sh --cpu-dry-run
# It builds nothing (the installed CPU build is used), only collects the CUDA test selection, runs
# each benchmark tiny on the CPU, prints the exact command lines of the GPU job, writes the same
# files (to a temp dir when OUT is unset) and exits 0. python_tests/apps/test_gpu_check.py runs it
# in CI, so this script cannot rot before a GPU is ever lent.
#
# The device machine (an H200, see /work/.library/device/KINDS.md) has no internet and its own
# python3 with torch 2.11 cu130, pytest, pytest-xdist, hypothesis, transformers and peft, but not
# mergekit: nothing is installed there but this checkout (pip --no-index --no-deps), never through
# scripts/with_env.sh, and a test module that imports a missing package is left out by name.
#
# Time: the whole job stays inside GPU_CHECK_BUDGET_S (default 480 s, under the call's 540). Each
# step runs under `timeout` for its own cap or what is left, whichever is less, keeping a reserve
# for the steps after it where it can, and is skipped under 20 s. Steps run in order of importance:
# env, build (~2-4 min), tests, sanitizer, then bench_prune, bench_storage, bench_topk, bench_swap.
# Environment: OUT (output folder), GPU_CHECK_PYTHON (default python3), GPU_CHECK_BUDGET_S,
# GPU_CHECK_PRETEND_MISSING (packages to treat as missing, to test the leaving out).
set -uo pipefail  # no -e: every step records its own status and the job goes on

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

mode=gpu
case "${1:-}" in
  "") ;;
  --cpu-dry-run) mode=dry ;;
  -h | --help) usage; exit 0 ;;
  *) printf 'gpu_check.sh: unknown argument %q (use --cpu-dry-run or nothing; --help)\n' "$1" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$OUT" || exit 1
export OUT PYTHONUNBUFFERED=1
PY="${GPU_CHECK_PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET_S:-480}"
deadline=$((SECONDS + budget))
MIN_STEP_S=20
N=$((1 << 28))  # elements per benchmark tensor: 1 GiB in fp32, several times the H200's 60 MB L2

# ---- the GPU job's command lines (printed, not run, by the dry run) --------------------------

# The system gcc/g++, not the compiler the interpreter was built with: on the H200 image Python's
# sysconfig names /opt/gcc, whose g++ links a .so that does not share the system libstdc++ that
# torch uses, and then every C++ exception a darex op throws (a TORCH_CHECK on a bad argument)
# crashes Python with a segfault. Found and fixed on the first GPU run, 2026-11-29.
toolchain=()
if command -v gcc >/dev/null && command -v g++ >/dev/null; then
  toolchain=(CC=gcc CXX=g++ "LDSHARED=gcc -shared" "LDCXXSHARED=g++ -shared")
fi
build_cmd=(env "${toolchain[@]}" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 DAREX_FORCE_CUDA=1
           "$PY" -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check
           -v -e .)
# Every CUDA test: in ops/ and storage/ everything but the [cpu] parametrizations that CI runs
# already (so the CPU == CUDA comparisons and the HAS_CUDA-gated tests are in), elsewhere every
# test whose id names cuda, and the int64-indexing test past 2^31 elements on the GPU.
tests_ops=(python_tests/ops python_tests/storage -k "cuda or not cpu")
tests_rest=(python_tests --ignore=python_tests/ops --ignore=python_tests/storage -k cuda)
tests_large=(python_tests/ops/test_large_tensors.py --runslow -k cuda)
# Every kernel once at a quick size under compute-sanitizer, our kernels only (all of them live
# in namespace darex::cuda, so their mangled names hold "darex"); torch's are not ours to check.
sanitizer_smoke=("$PY" scripts/sanitizer_smoke.py --device cuda --dtypes float32,bfloat16)
sanitizer_tools=(memcheck racecheck)
sanitizer_opts=(--error-exitcode 1 --print-limit 20 --kernel-name kns=darex)
bench_prune=("$PY" benchmarks/bench_prune.py --device cuda --numel "$N" --dtypes float32,bfloat16 --markdown)
bench_storage=("$PY" benchmarks/bench_storage.py --device cuda --size 28 --dtypes float32,bfloat16 --markdown)
# repeat 3: torch.kthvalue on one 2^28 slice runs in a single block and takes the longest.
bench_topk=("$PY" benchmarks/bench_topk.py --device cuda --numel "$N" --dtypes float32,bfloat16
            --repeat 3 --markdown)
# 0.2 B parameters (bf16, 8 fine-tunes at p = 0.99): enough to measure bandwidth, short enough for
# the last step's minute.
bench_swap=("$PY" benchmarks/bench_swap.py --device cuda --params 2e8 --ps 0.99 --repeat 2 --markdown)

# The dry run's stand-ins: the same scripts, tiny and on the CPU.
dry_bench_prune=("$PY" benchmarks/bench_prune.py --device cpu --numel 4096 --dtypes float32,bfloat16
                 --repeat 1 --no-memory --markdown)
dry_bench_storage=("$PY" benchmarks/bench_storage.py --device cpu --size 14 --dtypes float32,bfloat16
                   --repeat 1 --markdown)
dry_bench_topk=("$PY" benchmarks/bench_topk.py --device cpu --numel 4096 --matrix 16x256
                --dtypes float32,bfloat16 --repeat 1 --no-memory --markdown)
dry_bench_swap=("$PY" benchmarks/bench_swap.py --device cpu --params 2e5 --ps 0.99 --repeat 1 --markdown)

# ---- step bookkeeping ------------------------------------------------------------------------

summary_rows=()
failed=0
dry_hint="hint: the dry run needs torch and a built darex_ext in $PY; run it in the CPU venv:
  bash scripts/with_env.sh bash scripts/gpu_check.sh --cpu-dry-run"
step_deadline=0

# within CMD...: run CMD under `timeout` for what is left of the current step.
within() {
  local left=$((step_deadline - SECONDS))
  if ((left <= 0)); then
    echo "no time left in this step for: $*"
    return 124
  fi
  timeout -k 10 "$left" "$@"
}

# step NAME CAP RESERVE FUNCTION: run FUNCTION for at most CAP seconds, leaving RESERVE seconds
# of the budget to the steps after it when that still gives this one MIN_STEP_S (steps run in
# order of importance, so an earlier one may take a later one's reserve); print a banner and
# record PASS / FAIL / TIMEOUT / SKIP in the summary.
min() { echo $(($1 < $2 ? $1 : $2)); }
step() {
  local name=$1 cap=$2 reserve=$3 fn=$4 left=$((deadline - SECONDS)) start=$SECONDS rc status limit
  limit=$(min "$cap" $((left - reserve)))
  ((limit >= MIN_STEP_S)) || limit=$(min "$cap" "$left")
  if ((limit < MIN_STEP_S)); then
    summary_rows+=("| $name | SKIP | 0 | ${left}s of the budget left |")
    printf '\n=== %s: SKIP (%ss of the %ss budget left) ===\n' "$name" "$left" "$budget"
    failed=1
    return 1
  fi
  printf '\n=== %s (at %ss, limit %ss) ===\n' "$name" "$((SECONDS - deadline + budget))" "$limit"
  step_deadline=$((SECONDS + limit))
  step_note=""
  "$fn"
  rc=$?
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  ((rc == 0)) || failed=1
  summary_rows+=("| $name | $status | $((SECONDS - start)) | $step_note |")
  printf '=== %s: %s in %ss ===\n' "$name" "$status" "$((SECONDS - start))"
  return "$rc"
}

skip() {  # skip NAME REASON
  summary_rows+=("| $1 | SKIP | 0 | $2 |")
  printf '\n=== %s: SKIP (%s) ===\n' "$1" "$2"
  failed=1
}

quoted() {  # a command line as one string that a shell reads back the same
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s' "${out[*]}"
}
show() { printf '+ %s%s\n' "$(quoted "${@:2}")" "$1"; }  # show SUFFIX CMD...: log a command line

# ---- the steps -------------------------------------------------------------------------------

step_env() {
  echo "mode: $mode, root: $root, OUT: $OUT, budget: ${budget}s, $(uname -m), $(nproc) cpus"
  if [ "$mode" = gpu ]; then
    if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null; then  # torch finds nvcc on PATH
      for d in /usr/local/cuda /usr/local/cuda-*; do
        [ -x "$d/bin/nvcc" ] && export CUDA_HOME="$d" PATH="$d/bin:$PATH" && break
      done
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader ||
      echo "nvidia-smi failed"
    echo "nvcc: $(command -v nvcc || echo 'not on PATH'), CUDA_HOME=${CUDA_HOME:-unset}"
    nvcc --version | tail -n 2
  fi
  within "$PY" - "$mode" <<'PY'
import importlib.util, platform, sys
import torch
mode = sys.argv[1]
print(f"python: {sys.executable} {platform.python_version()}")
print(f"torch: {torch.__version__}, cuda: {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
if mode == "gpu":
    from torch.utils import cpp_extension
    print(f"torch's CUDA_HOME for the build: {cpp_extension.CUDA_HOME}")
names = ("pytest", "xdist", "pytest_timeout", "hypothesis", "numpy", "safetensors", "tqdm",
         "transformers", "peft", "mergekit")
print("packages: " + ", ".join(f"{n} {'yes' if importlib.util.find_spec(n) else 'MISSING'}" for n in names))
missing = [n for n in ("pytest", "numpy", "safetensors", "tqdm") if importlib.util.find_spec(n) is None]
if missing:
    sys.exit(f"needed and missing: {', '.join(missing)}")
if mode == "gpu" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: nothing to check here")
PY
}

step_build() {
  if [ "$mode" = dry ]; then
    show "" "${build_cmd[@]}"
    printf 'dry run: no build; the GPU job runs\n  %s\n' "$(quoted "${build_cmd[@]}")" >"$OUT/build.log"
    step_note="dry run: the installed CPU build"
  else
    rm -f darex_ext/_C*.so  # never import a stale build from another python or torch
    show " >$OUT/build.log 2>&1" "${build_cmd[@]}"
    within "${build_cmd[@]}" >"$OUT/build.log" 2>&1
    local rc=$?
    if ((rc != 0)); then
      tail -n 60 "$OUT/build.log"
      return "$rc"
    fi
    echo "ninja steps: $(grep -cE '^\s*\[[0-9]+/[0-9]+\]' "$OUT/build.log")"
  fi
  within "$PY" - "$mode" <<'PY'
import collections, re, shutil, subprocess, sys
import torch
import darex_ext
from darex_ext.ops import _library
info = darex_ext.build_info()
print(f"darex_ext {darex_ext.__version__}: {info}\n  _C: {_library._C.__file__}")
# A kernel's argument check must reach Python as an exception (a build whose libstdc++ differs
# from torch's turns every one into a segfault; see the toolchain comment above).
try:
    torch.ops.darex.prune_(torch.zeros(3), 2.0, 0, 0, None, 1.0)
    sys.exit("a bad p passed the kernel's check")
except ValueError:
    print("smoke: a kernel's argument check arrives as ValueError")
if sys.argv[1] == "gpu":
    assert darex_ext.cuda_built(), f"no CUDA kernels in this build: {info}"
    assert info["torch_version"] == torch.__version__, info
    print("launch config:", _library._C.cuda_launch_config())
    if shutil.which("cuobjdump"):  # sm_90 machine code, not PTX left to the driver to compile
        elf = subprocess.run(["cuobjdump", "--list-elf", _library._C.__file__], capture_output=True, text=True)
        print("cubins:", dict(collections.Counter(re.findall(r"sm_\w+", elf.stdout))) or elf.stderr.strip())
    x = torch.randn(1 << 20, device="cuda")
    cpu = darex_ext.prune_(x.cpu(), 0.9, seed=1)
    assert torch.equal(darex_ext.prune_(x, 0.9, seed=1).cpu(), cpu), "prune_ on CUDA differs from the CPU"
    print("smoke: prune_ CPU == CUDA on 2^20 elements")
PY
}

# Test modules whose top-level imports name a package this python lacks: one --ignore each.
# GPU_CHECK_PRETEND_MISSING=a,b treats packages a and b as missing (the dry run's test uses it).
read -r -d '' MISSING_IMPORTS <<'PY'
import ast, importlib.util, os, pathlib, sys
pretend = set(filter(None, os.environ.get("GPU_CHECK_PRETEND_MISSING", "").split(",")))
root = pathlib.Path("python_tests")
sys.path.insert(0, str(root))  # conftest, op_samples, ...: the suite's own helper modules
for path in sorted(root.rglob("test_*.py")):
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    missing = sorted(n for n in names if n in pretend or importlib.util.find_spec(n) is None)
    if missing:
        print(f"--ignore={path}")
        print(f"left out {path}: it imports {', '.join(missing)}, not installed here", file=sys.stderr)
PY

# pytest ARGS...: exit 5 (nothing selected) counts as a pass: outside ops/ and storage/ a
# selection can be empty.
pytest_run() {
  show "" "$PY" -m pytest "$@"
  within "$PY" -m pytest "$@"
  local rc=$?
  if ((rc == 5)); then
    echo "(no tests selected: fine)"
    return 0
  fi
  return "$rc"
}

step_tests() {
  local ignores=() common=(-p no:cacheprovider) parallel=()
  mapfile -t ignores < <("$PY" -c "$MISSING_IMPORTS")
  ((${#ignores[@]} == 0)) || step_note="left out: ${ignores[*]#--ignore=}"
  if [ "$mode" = dry ]; then
    common+=(--collect-only -qq)
    step_note="dry run: collected, not run${step_note:+; $step_note}"
  else
    common+=(-x -q -rfE)
    "$PY" -c "import pytest_timeout" 2>/dev/null && common+=(--timeout=120)
    "$PY" -c "import xdist" 2>/dev/null && (($(nproc) >= 8)) && parallel=(-n 8)
  fi
  # -x: the first failure ends the tests.
  pytest_run "${common[@]}" ${parallel[@]+"${parallel[@]}"} "${tests_ops[@]}" ${ignores[@]+"${ignores[@]}"} &&
    pytest_run "${common[@]}" "${tests_rest[@]}" ${ignores[@]+"${ignores[@]}"} &&
    pytest_run "${common[@]}" "${tests_large[@]}" ${ignores[@]+"${ignores[@]}"}
}

# compute-sanitizer may be missing, or refuse the device (a gVisor machine answers "Device not
# supported"): then the step says so and passes; any error it finds in a darex kernel fails it.
step_sanitizer() {
  local tool rc sanitizer log="$OUT/sanitizer.log" ran=()
  if [ "$mode" = dry ]; then
    for tool in "${sanitizer_tools[@]}"; do show "" compute-sanitizer --tool "$tool" "${sanitizer_opts[@]}" "${sanitizer_smoke[@]}"; done
    show " >$log 2>&1" "$PY" scripts/sanitizer_smoke.py --device cpu
    within "$PY" scripts/sanitizer_smoke.py --device cpu >"$log" 2>&1
    rc=$?
    cat "$log"
    step_note="dry run: the smoke program on the CPU, no sanitizer"
    return "$rc"
  fi
  sanitizer="$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer 2>/dev/null)"
  if [ -z "$sanitizer" ]; then
    step_note="compute-sanitizer not found"
    echo "$step_note" | tee "$log"
    return 0
  fi
  : >"$log"
  for tool in "${sanitizer_tools[@]}"; do
    show " >>$log 2>&1" "$sanitizer" --tool "$tool" "${sanitizer_opts[@]}" "${sanitizer_smoke[@]}"
    echo "=== $tool" >>"$log"
    within "$sanitizer" --tool "$tool" "${sanitizer_opts[@]}" "${sanitizer_smoke[@]}" >>"$log" 2>&1
    rc=$?
    tail -n 25 "$log"
    if grep -q "Device not supported" "$log"; then
      step_note="compute-sanitizer refused the device"
      return 0
    fi
    ((rc == 0)) || { step_note="$tool: exit $rc (see sanitizer.log)"; return "$rc"; }
    ran+=("$tool")
  done
  step_note="clean: ${ran[*]}"
}

bench() {  # bench NAME: the GPU command, or in the dry run its tiny CPU stand-in
  local name=$1
  local -n gpu_cmd="bench_$name"
  if [ "$mode" = dry ]; then
    local -n cmd="dry_bench_$name"
    echo "on the GPU: $(quoted "${gpu_cmd[@]}")"
    step_note="dry run: tiny, on the CPU"
  else
    local -n cmd="bench_$name"
  fi
  show " | tee $OUT/bench_$name.md" "${cmd[@]}"
  within "${cmd[@]}" | tee "$OUT/bench_$name.md"
}
step_bench_prune() { bench prune; }
step_bench_storage() { bench storage; }
step_bench_topk() { bench topk; }
step_bench_swap() { bench swap; }

# ---- the job ---------------------------------------------------------------------------------

main() {
  echo "gpu_check.sh $mode run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local later=(tests sanitizer bench_prune bench_storage bench_topk bench_swap) s
  if ! step env 30 0 step_env; then
    for s in build "${later[@]}"; do skip "$s" "the environment check failed"; done
  elif ! step build 300 0 step_build; then
    for s in "${later[@]}"; do skip "$s" "no usable build"; done
  else
    dry_hint=""
    step tests 180 100 step_tests
    step sanitizer 90 90 step_sanitizer
    # The benchmarks in order of predictability, so the least predictable one cannot starve the
    # others: topk (single-block kthvalue on 2^28 elements) goes last.
    step bench_prune 60 80 step_bench_prune
    step bench_storage 90 50 step_bench_storage
    step bench_topk 150 0 step_bench_topk
    step bench_swap 60 0 step_bench_swap
  fi
  {
    echo "## gpu_check.sh ($mode run), $(date -u +%Y-%m-%d)"
    echo
    echo "| step | status | seconds | note |"
    echo "|:---|:---|---:|:---|"
    printf '%s\n' "${summary_rows[@]}"
    echo
    echo "total: $((SECONDS - deadline + budget)) s of the ${budget} s budget; files in $OUT"
  } >"$OUT/summary.md"
  echo
  cat "$OUT/summary.md"
  if [ "$mode" = dry ] && [ -n "$dry_hint" ]; then echo "$dry_hint"; fi
  return "$failed"
}

main 2>&1 | tee "$OUT/log"
