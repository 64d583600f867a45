#!/bin/bash
# Runs every fuzz target built in BUILD_DIR for SECONDS each, starting from its
# seed corpus tests/fuzz/corpus/<name> (read-only: new inputs go to a scratch
# copy). Exits non-zero on the first crash, sanitizer report, leak or timeout;
# the input that did it is kept under BUILD_DIR/fuzz-artifacts/.
# Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]   (FUZZ_JOBS: targets at a time)
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
# Targets run side by side, FUZZ_JOBS at a time (default: one per CPU):
# each libFuzzer process keeps one CPU busy for its SECONDS.
jobs=${FUZZ_JOBS:-$(nproc)}
run_one() { # BIN NAME: result in $scratch/NAME.res ("ok RUNS SECS" or "failed")
  local bin=$1 name=$2 start=$SECONDS
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$name-" "$scratch/$name" "$here/corpus/$name" >"$scratch/$name.log" 2>&1; then
    echo "ok $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$name.log" | grep -o '[0-9]*$') $((SECONDS - start))" > "$scratch/$name.res"
  else
    echo failed > "$scratch/$name.res"
  fi
}
names=()
for bin in "$build"/tests/fuzz/fuzz-*; do
  [ -x "$bin" ] || continue
  name=${bin##*/fuzz-}
  mkdir -p "$scratch/$name"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$bin" "$name" &
  names+=("$name")
done
wait
[ ${#names[@]} -gt 0 ] || { echo "fuzz: no fuzz targets in $build/tests/fuzz" >&2; exit 1; }
failed=0
for name in "${names[@]}"; do
  read -r verdict runs secs < "$scratch/$name.res" || verdict=failed
  if [ "$verdict" = ok ]; then
    echo "fuzz $name: ok ($runs runs in ${secs}s)"
  else
    echo "fuzz $name: FAILED; reproducer in $artifacts/$name-*; log:"
    grep -v '^#[0-9]' "$scratch/$name.log" | tail -60
    failed=$((failed + 1))
  fi
done
echo "fuzz: $((${#names[@]} - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
