#!/bin/bash
# bench/run.sh: the data-path benchmark behind `make bench`. Boots the e2e
# guest (tests/e2e/run-in-guest.sh: Debian 6.12 kernel with ublk_drv under
# qemu TCG) ONCE, runs bench/guest.sh in it (fio against ublk exports served by
# ublk-tool and against loop / null_blk baselines in the same boot), then
# writes bench/results/RESULTS.md, runs.tsv and iops-ratios.png on the host.
#
# usage: bench/run.sh [--build-dir DIR] [--kernel 6.12|7]
#   DIR must hold ublk/ublk-tool, csi/ublk-csi and csi/ublk-csi-ctl (the
#   plugin part is skipped without the last two).
# environment:
#   BENCH_RUNTIME  seconds per fio run (default 10; shorter runs mislead)
#   BENCH_REPEATS  repeats of every comparison (default 2)
#   BENCH_SIZE_MIB backing file / fio region size (default 256)
#   BENCH_PARTS    words of "data plugin profile recovery"; default "data plugin" (6.12),
#                  "data" (7). profile (perf profiles, I/O shapes; ~4 min) runs
#                  on demand: BENCH_PARTS=profile writes PROFILE.md only.
#   BENCH_GROUPS   "tmpfs ext4 null" (6.12 default) | "tmpfs null" (7 default);
#                  "rbd": one RBD image via krbd, rbd-nbd, ublk (bench/rbd.sh; `make bench-rbd`)
#   BENCH_WORKLOADS workload names (default all five: randread-4k-qd32
#                  randwrite-4k-qd32 randread-4k-qd1 seqread-128k-qd8 seqwrite-128k-qd8)
#   BENCH_MODES    copy modes (default every one the kernel has: zero_copy user_copy get_data;
#                  A/B variants by name only: user_copy_ring user_copy_pin_same user_copy_pin_split
#                  user_copy_null_zeros, MODE_pollN, MODE_pinned, MODE_kpoll (combinable:
#                  zero_copy_kpoll_pinned); the kernel's selftest server (null
#                  or loop target, per group): selftest_copy selftest_user_copy selftest_zero_copy
#                  selftest_auto_zc selftest_batch selftest_batch_auto_zc, built first
#                  by bench/selftest-server.sh)
#   BENCH_PF_SYSCALLS 0: the profile part skips its syscall counts (default 1)
#   BENCH_PLUGIN_ARGS more ublk-csi flags for the plugin part, e.g.
#                  "--recovery-concurrency=16" (they override its own)
#   BENCH_RECOVERY_AB with BENCH_PARTS=recovery: ublk-csi flags for an A/B in
#                  one boot (A B A B per size; B adds these flags)
#   BENCH_RECOVERY_AB_BIN with BENCH_PARTS=recovery: another ublk-csi binary
#                  (absolute path, e.g. a copy of main's) that B runs instead
#                  of the build dir's: an A/B of two builds in one boot
#   BENCH_OUT      results dir (default bench/results, bench/results/kernel-7 for 7)
#   E2E_WORK_DIR   as for tests/e2e (kernel cache and guest logs; default DIR)
set -uo pipefail

here=$(dirname "$(realpath "$0")")
root=$(realpath "$here/..")
build_dir=$root/build
kernel=6.12
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    --kernel) kernel=${2:?}; shift 2 ;;
    --kernel=*) kernel=${1#*=}; shift ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
build_dir=$(realpath "$build_dir")
runtime=${BENCH_RUNTIME:-10}
repeats=${BENCH_REPEATS:-2}
size_mib=${BENCH_SIZE_MIB:-256}
if [ "$kernel" = 6.12 ]; then
  parts=${BENCH_PARTS:-data plugin}
  groups=${BENCH_GROUPS:-tmpfs ext4 null}
  out=$(realpath -m "${BENCH_OUT:-$root/bench/results}")
else
  # Three copy modes where the kernel has zero copy: fewer groups and no
  # plugin part keep this run under 20 minutes too.
  parts=${BENCH_PARTS:-data}
  groups=${BENCH_GROUPS:-tmpfs null}
  out=$(realpath -m "${BENCH_OUT:-$root/bench/results/kernel-$kernel}")
fi
work=$(realpath -m "${E2E_WORK_DIR:-$build_dir}")

log() { echo "bench: $*" >&2; }
[ -x "$build_dir/ublk/ublk-tool" ] || { log "$build_dir/ublk/ublk-tool is not built"; exit 2; }
case $runtime$repeats$size_mib in *[!0-9]*) log "BENCH_RUNTIME/REPEATS/SIZE_MIB must be integers"; exit 2 ;; esac

if ! command -v gnuplot >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    log "installing gnuplot-nox"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >&2 \
      || log "apt-get install gnuplot-nox failed: no chart"
  else
    log "gnuplot missing and not root: no chart"
  fi
fi

case " ${BENCH_MODES:-} " in
  *" selftest_"*)
    "$here/selftest-server.sh" --build-dir "$build_dir" >/dev/null \
      || { log "bench/selftest-server.sh failed: no selftest server rows"; exit 2; } ;;
esac

mkdir -p "$out"
t0=$(date +%s)
host_info=$out/.host.txt
{
  echo "date=$(date -u +%FT%TZ)"
  echo "host_nproc=$(nproc)"
  echo "host_cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "host_kernel=$(uname -r)"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "git=$(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet HEAD -- ublk 2>/dev/null || echo ' (ublk/ has uncommitted changes)')"
  echo "ublk_tool=$build_dir/ublk/ublk-tool ($(date -u -r "$build_dir/ublk/ublk-tool" +%FT%TZ))"
  echo "kernel_series=$kernel"
} > "$host_info"

# up to 12 devices x 5 workloads x repeats x (runtime + ~4 s of fio
# start/stop under TCG), plus setup, profiles and the plugin part: the
# watchdog leaves room for a loaded host.
budget=$(( 60 * repeats * (runtime + 6) + 900 ))
# Sample the host's load while the guest runs (the machine is shared).
( while :; do cut -d' ' -f1 /proc/loadavg; sleep 15; done > "$out/.load.txt" ) &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT

E2E_WORK_DIR=$work "$root/tests/e2e/run-in-guest.sh" --build-dir "$build_dir" \
  --kernel "$kernel" --timeout "$budget" --ublks-max 300 --data-disk 2G \
  "$here/guest.sh" "$runtime" "$repeats" "$size_mib" "$parts" "$groups" \
  "${BENCH_WORKLOADS:-all}" "${BENCH_MODES:-all}" "${BENCH_PF_SYSCALLS:-1}" "${BENCH_PLUGIN_ARGS:-}" "${BENCH_RECOVERY_AB:-}" \
  "${BENCH_RECOVERY_AB_BIN:-}"
rc=$?
kill $sampler 2>/dev/null
{
  echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "load_samples=$(tr '\n' ' ' < "$out/.load.txt")"
  echo "wall_seconds=$(( $(date +%s) - t0 ))"
  echo "guest_rc=$rc"
} >> "$host_info"
rm -f "$out/.load.txt"

share=$work/e2e-logs/run-in-guest/share/bench
if [ ! -f "$share/guest.txt" ]; then
  log "the guest produced no results (exit $rc); console: $work/e2e-logs/run-in-guest/console.log"
  exit 1
fi
/usr/bin/python3 "$here/report.py" --raw "$share" --host "$host_info" --out "$out" || exit 1
# The recovery summaries (every device's time, the log marks) beside RESULTS.md.
for f in "$share"/plugin/recovery-*.json; do [ -f "$f" ] && cp "$f" "$out/"; done
if [ -f "$out/iops-ratios.dat" ] && [ "$out/iops-ratios.dat" -nt "$host_info" ] && command -v gnuplot >/dev/null; then
  modes=$(sed -n '1s/^# label//; 1s/ (.*//p' "$out/iops-ratios.dat" | tr ' ' '\n' | sed -n 's/_ratio$//p' | tr '\n' ' ')
  # No ublk rows (e.g. BENCH_GROUPS=rbd before the RBD target exists): no chart.
  if [ -n "${modes// /}" ]; then
    gnuplot -e "datafile='$out/iops-ratios.dat'; outfile='$out/iops-ratios.png'; repeats=$repeats; modes='${modes% }'" "$here/iops-ratios.gp" \
      || log "gnuplot failed"
  fi
fi
rm -f "$host_info"
log "results: $out/RESULTS.md (guest exit $rc, $(( $(date +%s) - t0 )) s)"
exit $rc
