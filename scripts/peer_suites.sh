#!/usr/bin/env bash
# The peers' own test suites as a standing check of darex's drop-ins: mergekit's sparsify,
# merge-method and dtype tests and PEFT's weighted-adapter tests, run from their source
# distributions twice, stock and with darex installed into them, with pass/fail counts per run and
# the tests that pass stock but not with darex (exit status 1 when there is one).
#
#     bash scripts/with_env.sh bash scripts/peer_suites.sh            # needs mergekit and peft
#     bash scripts/with_env.sh bash scripts/peer_suites.sh --dry-run  # the plan; fetches and runs nothing
#
# The source distributions of the installed versions come from `pip download --no-binary :all:
# --no-deps` into a temporary folder, removed at exit; nothing of theirs enters this checkout.
# darex goes in through a pytest plugin (scripts/peer_suites/plugin.py, `-p darex_peer_plugin`)
# that calls darex_ext.integrations.mergekit.install() or .peft.install() before collection.
# What the sdists lack is supplied in the temporary copy only: mergekit's tests/common.py (a
# stand-in, scripts/peer_suites/mergekit_common.py), tests/__init__.py, and a `diffusers` stub for
# PEFT's testing_common import when diffusers is not installed (no selected test uses it). Hub
# downloads are off (HF_HUB_OFFLINE=1): the selections need none.
# Environment: PEER_SUITES (default "mergekit peft"), MERGEKIT_TESTS / PEFT_TESTS / PEFT_K (the
# selections below), PEER_PYTHON (default python), PEER_KEEP (a folder to keep the logs and JUnit
# files in). Time: under 2 minutes on 2 idle cores (mergekit 2 x 30 s, PEFT 2 x 10-25 s, the
# downloads 20 s); up to 6 minutes on busy shared cores. .ci/run runs it after the test suite.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helpers="$root/scripts/peer_suites"
py="${PEER_PYTHON:-python}"
suites="${PEER_SUITES:-mergekit peft}"
mergekit_tests="${MERGEKIT_TESTS:-tests/test_sparsify.py tests/test_basic_merges.py tests/test_merge_method_regressions.py tests/test_merge_dtypes.py}"
peft_tests="${PEFT_TESTS:-tests/test_custom_models.py}"
peft_k="${PEFT_K:-weighted_adapter}"

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "peer_suites.sh: unknown argument $1 (--dry-run | --help)" >&2; exit 2 ;;
esac

version() {
  "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || {
    echo "peer_suites.sh: $1 is not installed for $py; run through scripts/with_env.sh" >&2; exit 2; }
}

selection() {  # the pytest arguments of a suite, relative to its unpacked sdist
  case "$1" in
    mergekit) echo "$mergekit_tests" ;;
    peft) echo "$peft_tests -k $peft_k" ;;
    *) echo "peer_suites.sh: unknown suite $1 (mergekit | peft)" >&2; exit 2 ;;
  esac
}

declare -A versions
for suite in $suites; do
  selection "$suite" >/dev/null
  versions[$suite]="$(version "$suite")"
done

if [ "$dry_run" = 1 ]; then
  for suite in $suites; do
    echo "suite $suite ${versions[$suite]}: pip download --no-binary :all: --no-deps $suite==${versions[$suite]}"
    for run in stock darex; do
      install=""; [ "$run" = darex ] && install="$suite"
      echo "  $run: DAREX_PEER_INSTALL=$install $py -m pytest $(selection "$suite") -p darex_peer_plugin"
    done
  done
  echo "dry run: nothing fetched, nothing run"
  exit 0
fi

work="$(mktemp -d)"
keep() { if [ -n "${PEER_KEEP:-}" ]; then mkdir -p "$PEER_KEEP"; cp "$work"/*.log "$work"/*.xml "$PEER_KEEP"/ 2>/dev/null || true; fi; }
trap 'keep; rm -rf "$work"' EXIT
mkdir -p "$work/dl" "$work/plugins"
cp "$helpers/plugin.py" "$work/plugins/darex_peer_plugin.py"
if ! "$py" -c "import diffusers" 2>/dev/null; then
  mkdir -p "$work/plugins/diffusers"
  printf 'class StableDiffusionPipeline:  # stub: PEFT testing_common imports it at module level\n    pass\n' \
    > "$work/plugins/diffusers/__init__.py"
fi

start=$SECONDS
status=0
summary=""
for suite in $suites; do
  v="${versions[$suite]}"
  "$py" -m pip download -q --no-binary :all: --no-deps "$suite==$v" -d "$work/dl" 2>&1 \
    | { grep -v "^WARNING: Location" || true; } >&2
  tar -xzf "$work/dl/$suite-$v.tar.gz" -C "$work"
  src="$work/$suite-$v"
  [ -f "$src/tests/__init__.py" ] || touch "$src/tests/__init__.py"
  if [ "$suite" = mergekit ] && [ ! -f "$src/tests/common.py" ]; then
    cp "$helpers/mergekit_common.py" "$src/tests/common.py"
  fi
  secs=()
  for run in stock darex; do
    install=""; [ "$run" = darex ] && install="$suite"
    t0=$SECONDS
    # shellcheck disable=SC2046  # the selection is a word list on purpose
    (cd "$src" && HF_HUB_OFFLINE=1 DAREX_PEER_INSTALL="$install" PYTHONPATH="$work/plugins:$src" \
       "$py" -m pytest $(selection "$suite") -p darex_peer_plugin -p no:cacheprovider -o addopts="" -q \
       --junitxml="$work/$suite-$run.xml" >"$work/$suite-$run.log" 2>&1) || true
    secs+=("$((SECONDS - t0))")
    tail -n 1 "$work/$suite-$run.log" | sed "s/^/[$suite $run] /"
    if [ ! -s "$work/$suite-$run.xml" ]; then
      echo "peer_suites.sh: $suite $run produced no results; its log ends:" >&2
      tail -n 30 "$work/$suite-$run.log" >&2
      exit 1
    fi
  done
  summary+="$("$py" "$helpers/compare.py" "$suite" "$work/$suite-stock.xml" "$work/$suite-darex.xml" \
              "${secs[0]}s" "${secs[1]}s")"$'\n' || status=1
done

printf '\n%-10s %-6s %7s %7s %7s %7s %7s %8s\n' suite run passed failed errors skipped total time
printf '%s' "$summary"
echo "total $((SECONDS - start)) s"
exit "$status"
