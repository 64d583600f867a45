#!/bin/bash
# Real-kernel end-to-end scenarios: boots a Debian kernel with ublk_drv (6.12
# by default, or 7.x from trixie-backports) under qemu, one guest per
# scenario, and runs tests/e2e/scenarios/NAME.sh in it.
#
# usage: tests/e2e/run.sh [--build-dir DIR] [--kernel 6.12|7|6.12,7] [-v|--verbose]
#                         [--parallel] [--list] [--setup-only] [SCENARIO...]
#   --build-dir DIR  the project's build dir (binaries: DIR/ublk/ublk-tool,
#                    DIR/csi/ublk-csi, DIR/csi/ublk-csi-ctl); default ./build.
#                    Kernel + initramfs are cached in DIR/e2e-cache, logs go
#                    to DIR/e2e-logs/NAME/console.log (6.12) or
#                    DIR/e2e-logs/kernel-7/NAME/console.log (7).
#   --kernel LIST    6.12: linux-image-6.12-amd64 from the machine's apt
#                    sources; 7: linux-image-amd64 of trixie-backports;
#                    several (comma/space separated): every scenario on each
#   --parallel       with several kernels, run them side by side (also
#                    E2E_PARALLEL=1); each kernel's output is printed whole
#                    when all are done
#   -v, --verbose    stream each guest's console
#   --setup-only     fetch packages, kernels and initramfs for every --kernel,
#                    run nothing (then several run.sh may run side by side)
#   no SCENARIO      all scenarios
# Prints PASS name / FAIL name / SKIP name: reason per scenario and ends with
# "N passed, N failed, N skipped" (with several kernels: one such line per
# kernel, then the combined one last); exits 1 if any failed, 2 on a setup error.
#
# Scenario headers ("# e2e-KEY: value" lines in the scenario file):
#   e2e-timeout: S       watchdog per guest boot (default 240)
#   e2e-requires: PATHS  files under the build dir; missing -> SKIP, no boot
#   e2e-skip: REASON     SKIP without booting (feature not built yet)
#   e2e-disk: SIZE       attach a fresh virtio data disk (cache=none), mounted
#                        in the guest at $E2E_DATA_DIR; it survives e2e_reboot
#   e2e-ublks-max: N     load ublk_drv with ublks_max=N
#   e2e-prepare: SCRIPT  host-side step before the first boot (path under
#                        tests/e2e, e.g. a test tool to unpack); exit 77 = SKIP
#   e2e-once: REASON     nothing in it depends on the kernel's ublk: with
#                        several kernels it runs on the first one only (listed,
#                        not counted, on the others); E2E_EVERY_KERNEL=1 runs
#                        it on each
set -uo pipefail

build_dir=./build
series=6.12
verbose=${E2E_VERBOSE:-0}
list=0
setup_only=0
parallel=${E2E_PARALLEL:-0}
names=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    --kernel) series=${2:?}; shift 2 ;;
    --kernel=*) series=${1#*=}; shift ;;
    -v|--verbose) verbose=1; shift ;;
    --list) list=1; shift ;;
    --parallel) parallel=1; shift ;;
    --setup-only) setup_only=1; shift ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done

HERE=$(dirname "$(realpath "$0")")
SCEN_DIR=${E2E_SCENARIO_DIR:-$HERE/scenarios}   # override: tests of the harness itself
if [ ${#names[@]} = 0 ]; then
  for f in "$SCEN_DIR"/*.sh; do names+=("$(basename "$f" .sh)"); done
fi
if [ $list = 1 ]; then printf '%s\n' "${names[@]}"; exit 0; fi

kernels=()
for k in ${series//,/ }; do kernels+=("$k"); done
[ ${#kernels[@]} -gt 0 ] || { echo "run.sh: --kernel needs a value" >&2; exit 2; }
mkdir -p "$build_dir" || exit 2
E2E_BUILD_DIR=$(realpath "$build_dir")
E2E_KERNEL_SERIES=${kernels[0]}
# shellcheck source=lib/host.sh
. "$HERE/lib/host.sh"
e2e_check_visible "build dir" "$E2E_BUILD_DIR"
e2e_check_visible "project root" "$E2E_SRC_DIR"
for k in "${kernels[@]}"; do
  e2e_kernel_series_ok "$k" || { echo "run.sh: unknown kernel series '$k' (known: 6.12, 7)" >&2; exit 2; }
done

T_ALL=$(e2e_now)
passed=0 failed=0 skipped=0
summary=()
setup_done=0
features_shown=0
kernel_features=

result() { # KIND NAME [DETAIL]
  local line
  case $1 in
    PASS) passed=$((passed + 1)); line="PASS $2" ;;
    FAIL) failed=$((failed + 1)); line="FAIL $2" ;;
    SKIP) skipped=$((skipped + 1)); line="SKIP $2: $3" ;;
  esac
  echo "$line"
  summary+=("$(printf '%-22s %s' "$2" "$1")${4:+  $4}")
}

setup() {
  [ $setup_done = 1 ] && return 0
  local t0
  t0=$(e2e_now)
  [ "$packages_done" = 1 ] || e2e_ensure_packages
  packages_done=1
  e2e_ensure_kernel
  e2e_log "guest kernel $E2E_KVER, initramfs $(basename "$E2E_INITRD") (setup $(e2e_secs "$t0")s)"
  setup_done=1
}

run_scenario() {
  local name=$1 file=$SCEN_DIR/$1.sh
  if [ ! -f "$file" ]; then
    echo "e2e: no scenario '$name' (have: $(cd "$SCEN_DIR" && ls *.sh | sed 's/\.sh$//' | tr '\n' ' '))" >&2
    result FAIL "$name"
    return
  fi
  local skip req p timeout disk ublks_max prepare
  skip=$(e2e_header "$file" skip)
  if [ -n "$skip" ]; then result SKIP "$name" "$skip"; return; fi
  req=$(e2e_header "$file" requires)
  for p in $req; do
    if [ ! -e "$E2E_BUILD_DIR/$p" ]; then
      result SKIP "$name" "$E2E_BUILD_DIR/$p is not built"
      return
    fi
  done
  timeout=$(e2e_header "$file" timeout); timeout=${timeout:-240}
  disk=$(e2e_header "$file" disk)
  ublks_max=$(e2e_header "$file" ublks-max)
  prepare=$(e2e_header "$file" prepare)

  local run=$LOG_DIR/$name t0 boot=1 use_disk=0 rc detail early_retry=0 fails
  rm -rf "$run"; mkdir -p "$run/share"
  if [ -n "$prepare" ]; then
    e2e_prepare "$run" "$E2E_DIR/$prepare"
    case $E2E_PREPARE_RC in
      0) ;;
      77) result SKIP "$name" "$(cat "$run/share/skip_reason" 2>/dev/null || echo "$prepare skipped it")"; return ;;
      *) result FAIL "$name"
         echo "  host-side preparation $prepare exited $E2E_PREPARE_RC ($run/prepare.log):"
         tail -n 20 "$run/prepare.log" | sed 's/^/  | /'
         return ;;
    esac
  fi
  setup
  if [ -n "$disk" ]; then truncate -s "$disk" "$run/disk.img" && use_disk=1; fi
  t0=$(e2e_now)
  [ "$verbose" = 1 ] && echo "=== $name (console: $run/console.log)"
  while :; do
    e2e_write_job "$run/share" "$name" "$boot" "$use_disk" "$file"
    e2e_write_keep "$run/share" "$E2E_SRC_DIR" "$E2E_BUILD_DIR" "$(dirname "$file")"
    e2e_boot "$run" "$timeout" "$verbose" "$use_disk" "$ublks_max"
    rc=$E2E_GUEST_RC
    local ready
    ready=$(tr -d '\r' < "$run/console.boot.log" | sed -n 's/.*e2e-guest: kernel .* ready at \([0-9.]*\)s.*/\1/p' | head -1)
    echo "boot $boot: guest ready at ${ready:-?}s (guest uptime), boot+run ${E2E_BOOT_SECS}s wall" >> "$run/timing"
    # The guest kernel died before our /init ran (seen once on 6.12 under TCG
    # on a loaded host: Oops int3 in the idle loop 4 s into the boot): nothing
    # of the scenario ran, so boot again, once per scenario, and say so.
    if [ -n "$E2E_BOOT_PROBLEM" ] && [ -z "$ready" ] && [ "$early_retry" = 0 ] \
        && ! tr -d '\r' < "$run/console.boot.log" | grep -q 'e2e-guest:' \
        && tr -d '\r' < "$run/console.boot.log" | grep -qE 'Kernel panic|Oops'; then
      early_retry=1
      e2e_log "$name: the guest kernel died before /init ($(tr -d '\r' < "$run/console.boot.log" | grep -m1 -oE '(Oops|Kernel panic)[^\[]*')); booting again"
      echo "boot $boot: guest kernel died before /init; boot retried" >> "$run/timing"
      continue
    fi
    if [ "$rc" = 75 ] && [ $boot -lt 4 ] && [ -z "$E2E_BOOT_PROBLEM" ]; then
      boot=$((boot + 1))
      continue
    fi
    break
  done
  detail="$(e2e_secs "$t0")s, $boot boot(s), guest ready at ${ready:-?}s"
  # A guest kernel killed by "Oops: int3" died of TCG, not of the scenario:
  # an int3 of the kernel's live text patching (text_poke_bp at a static-key
  # site) hit on the other vCPU (seen at boot and, once, 31 s into a
  # Kubernetes node's boot). The scenario runs again from scratch, once, and
  # the log says so; its first run's logs are kept beside it. Any other Oops
  # fails the scenario.
  local int3
  if { [ -n "$E2E_BOOT_PROBLEM" ] || [ "$rc" != 0 ]; } && [ "$int3_retried" != "$name" ] \
      && int3=$(e2e_tcg_int3_death "$run/console.log"); then
    int3_retried=$name
    e2e_log "$name: the guest kernel died of '$int3' (TCG's live-patching race, not the scenario); running it again"
    rm -rf "$run.int3"
    mv "$run" "$run.int3"
    run_scenario "$name"
    return
  fi
  [ "$int3_retried" = "$name" ] && detail="$detail, second run (the first died of Oops: int3)"
  if [ $features_shown = 0 ] && [ -s "$run/share/features" ]; then
    # GET_FEATURES and the engine's choice on this kernel, once per kernel.
    kernel_features=$(tr -d '\r' < "$run/share/features" \
      | grep -E '^(kernel_release|features|encoding|copy_mode|auto_buf_reg)=' | tr '\n' ' ' | sed 's/ $//')
    e2e_log "guest ublk: $kernel_features"
    features_shown=1
  fi
  if [ -n "$E2E_BOOT_PROBLEM" ]; then
    result FAIL "$name" "" "$detail"
    echo "  $E2E_BOOT_PROBLEM; last console lines ($run/console.log):"
    tail -n 60 "$run/console.log" | sed 's/^/  | /'
  elif [ "$rc" = 0 ]; then
    result PASS "$name" "" "$detail"
  elif [ "$rc" = 77 ]; then
    result SKIP "$name" "$(cat "$run/share/skip_reason" 2>/dev/null || echo 'scenario skipped itself')" "$detail"
  else
    # The failed checks first: a CI log shown in part keeps its ends.
    fails=$(tr -d '\r' < "$run/console.log" | grep -E '^FAIL: ' | head -n 8)
    result FAIL "$name" "" "$detail${fails:+; $(head -n1 <<< "$fails")}"
    echo "  scenario exited $rc; failed checks:"
    [ -n "$fails" ] && sed 's/^/  | /' <<< "$fails"
    echo "  last console lines ($run/console.log):"
    tail -n 60 "$run/console.log" | sed 's/^/  | /'
  fi
}

packages_done=0
int3_retried=
all_passed=0 all_failed=0 all_skipped=0
kernel_lines=()

# One kernel's scenarios; writes "passed failed skipped|kernel line" to $1.
run_kernel() { # RESULT_FILE KERNEL
  local k=$2 n s line
  E2E_KERNEL_SERIES=$k
  LOG_DIR=$E2E_WORK_DIR/e2e-logs
  [ "$k" = 6.12 ] || LOG_DIR=$E2E_WORK_DIR/e2e-logs/kernel-$k
  passed=0 failed=0 skipped=0 summary=() features_shown=0 kernel_features='' int3_retried=''
  T_K=$(e2e_now)
  [ ${#kernels[@]} -gt 1 ] && echo "=== kernel $k"
  local once=()
  for n in "${names[@]}"; do
    if [ "$k" != "${kernels[0]}" ] && [ "${E2E_EVERY_KERNEL:-0}" != 1 ] \
      && [ -f "$SCEN_DIR/$n.sh" ] && [ -n "$(e2e_header "$SCEN_DIR/$n.sh" once)" ]; then
      once+=("$n")
      continue
    fi
    run_scenario "$n"
  done
  echo "e2e summary, kernel $k ${E2E_KVER:+($E2E_KVER) }(total $(e2e_secs "$T_K")s):"
  [ -n "$kernel_features" ] && echo "  ublk: $kernel_features"
  [ ${#once[@]} -gt 0 ] && echo "  kernel-independent, run on ${kernels[0]} only (e2e-once): ${once[*]}"
  for s in "${summary[@]}"; do echo "  $s"; done
  line="$passed passed, $failed failed, $skipped skipped"
  echo "$passed $failed $skipped|kernel $k${E2E_KVER:+ ($E2E_KVER)}: $line" > "$1"
}

if [ "$setup_only" = 1 ]; then
  for k in "${kernels[@]}"; do
    E2E_KERNEL_SERIES=$k setup_done=0 E2E_KVER=
    setup
  done
  exit 0
fi

results_dir=$(mktemp -d)
trap 'rm -rf "$results_dir"' EXIT
if [ "$parallel" = 1 ] && [ ${#kernels[@]} -gt 1 ]; then
  # Kernels side by side: most guest work (process starts, mkfs, one fio job)
  # keeps one vCPU busy, so two TCG guests on 2 cores take far less than twice
  # one. Set-up (apt, kernel, initramfs) stays sequential; each kernel's
  # output is printed whole once all have finished.
  pids=()
  for k in "${kernels[@]}"; do
    E2E_KERNEL_SERIES=$k setup_done=0 E2E_KVER=
    setup
    echo "e2e: kernel $k started in parallel (log: $results_dir/$k.out)"
    ( run_kernel "$results_dir/$k.res" "$k" ) > "$results_dir/$k.out" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for k in "${kernels[@]}"; do cat "$results_dir/$k.out"; done
else
  for k in "${kernels[@]}"; do
    setup_done=0 E2E_KVER=
    run_kernel "$results_dir/$k.res" "$k"
  done
fi
for k in "${kernels[@]}"; do
  if [ -s "$results_dir/$k.res" ]; then
    IFS='|' read -r counts line < "$results_dir/$k.res"
    read -r p f s <<< "$counts"
  else
    p=0 f=1 s=0 line="kernel $k: no result (the run died)"
  fi
  kernel_lines+=("$line")
  all_passed=$((all_passed + p)) all_failed=$((all_failed + f)) all_skipped=$((all_skipped + s))
done
if [ ${#kernels[@]} -gt 1 ]; then
  echo "e2e: all kernels (total $(e2e_secs "$T_ALL")s):"
  for l in "${kernel_lines[@]}"; do echo "  $l"; done
fi
echo "$all_passed passed, $all_failed failed, $all_skipped skipped"
[ "$all_failed" = 0 ]
