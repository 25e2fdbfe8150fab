#!/usr/bin/env bash
# Runs a command inside a virtual environment that has torch and this checkout's darex_ext
# built in it, creating the environment and (re)building the extension only when needed.
#
#   bash scripts/with_env.sh darex bench                  # the main job on a built-in default
#   bash scripts/with_env.sh python -m pytest python_tests -q   # the test suite
#
# DAREX_VENV picks the environment folder (default: ~/.cache/darex_ext/venv-cpu-<key>, keyed on
# the requirement list and the Python version, so a change of either makes a new one).
# DAREX_TORCH overrides the torch requirement (default torch==2.13.0, a CPU build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${DAREX_PYTHON:-python3}"
torch_req="${DAREX_TORCH:-torch==2.13.0}"
reqs="$torch_req numpy pytest pytest-benchmark safetensors hypothesis expecttest setuptools wheel ninja transformers peft mergekit atheris matplotlib tqdm"
key="$(printf '%s|%s' "$reqs" "$("$python" --version 2>&1)" | sha256sum | cut -c1-12)"
venv="${DAREX_VENV:-$HOME/.cache/darex_ext/venv-cpu-$key}"

log() { printf '[with_env] %s\n' "$*" >&2; }

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # one creator or builder at a time; the others wait, then find it ready
# Created in place, never renamed: console scripts (pytest, pip, mergekit-yaml) hard-code the
# venv's path in their first line. Only a complete environment is marked ready.
if [ ! -f "$venv/.darex_ready" ]; then
  log "creating $venv ($reqs)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # Quiet pip, but keep its errors; the local-index warnings of this machine are noise.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $reqs 2>&1 \
    | { grep -v "^WARNING: Location" || true; } >&2
  touch "$venv/.darex_ready"
fi
# Environments made by earlier versions of this script were built as "$venv.tmp" and renamed:
# point their console scripts at the final path.
for script in $(grep -l "^#!$venv.tmp/bin/python" "$venv"/bin/* 2>/dev/null || true); do
  sed -i "1s|^#!$venv.tmp/bin/python|#!$venv/bin/python|" "$script"
done

# Rebuild when the sources, the build recipe, the environment or the checkout changed.
stamp="$( (cd "$root" && cat setup.py pyproject.toml darex_ext/_version.py $(find csrc -type f | sort) \
           | sha256sum | cut -c1-16); echo "$root" "$venv")"
if [ "$(cat "$venv/.darex_build" 2>/dev/null)" != "$stamp" ] || ! ls "$root"/darex_ext/_C*.so >/dev/null 2>&1; then
  log "building darex_ext from $root (CPU only)"
  (cd "$root" && DAREX_SKIP_CUDA=1 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      --no-build-isolation --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; } >&2)
  printf '%s' "$stamp" > "$venv/.darex_build"
fi
exec 9>&-  # the command itself runs without the lock

export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$root"
exec "$@"
