#!/bin/bash
# Runs every fuzz target built in BUILD_DIR for SECONDS each, starting from its
# seed corpus tests/fuzz/corpus/<name> (read-only: new inputs go to a scratch
# copy). Exits non-zero on the first crash, sanitizer report, leak or timeout;
# the input that did it is kept under BUILD_DIR/fuzz-artifacts/.
# Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
build=${1:?usage: run.sh BUILD_DIR [SECONDS]}
seconds=${2:-30}
here="$(cd "$(dirname "$0")" && pwd)"
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1
failed=0
ran=0
for bin in "$build"/tests/fuzz/fuzz-*; do
  [ -x "$bin" ] || continue
  name=${bin##*/fuzz-}
  seeds="$here/corpus/$name"
  mkdir -p "$scratch/$name"
  start=$SECONDS
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$name-" "$scratch/$name" "$seeds" >"$scratch/$name.log" 2>&1; then
    echo "fuzz $name: ok ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$name.log" | grep -o '[0-9]*$') runs in $((SECONDS - start))s)"
  else
    echo "fuzz $name: FAILED; reproducer in $artifacts/$name-*; log:"
    grep -v '^#[0-9]' "$scratch/$name.log" | tail -60
    failed=$((failed + 1))
  fi
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "fuzz: no fuzz targets in $build/tests/fuzz" >&2; exit 1; }
echo "fuzz: $((ran - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
