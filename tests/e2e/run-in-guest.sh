#!/bin/bash
# Boots the e2e guest (Debian kernel with ublk_drv under qemu) and runs one host
# script in it, chrooted in the host's root (shared read-only) with cwd = the
# project root; streams its output and exits with its exit code.
#
# usage: tests/e2e/run-in-guest.sh [--build-dir DIR] [--kernel 6.12|7]
#                                  [--timeout SECONDS] [--ublks-max N]
#                                  [--data-disk SIZE] SCRIPT [ARGS...]
# In the guest the script sees SRC_DIR, BUILD_DIR, E2E_SCRATCH (a tmpfs dir),
# E2E_RESULT_DIR (writable, shared with the host: DIR/e2e-logs/run-in-guest/share)
# and E2E_LIB (tests/e2e/lib/guest.sh, helpers to source).
# Exit codes: the script's, or 124 when the watchdog killed the guest, or 125
# when the guest died without reporting one (console in DIR/e2e-logs/run-in-guest).
set -uo pipefail

build_dir=./build
series=6.12
timeout=${E2E_TIMEOUT:-600}
ublks_max=
disk_size=
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    --kernel) series=${2:?}; shift 2 ;;
    --kernel=*) series=${1#*=}; shift ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --ublks-max) ublks_max=${2:?}; shift 2 ;;
    --data-disk) disk_size=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "run-in-guest: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--build-dir DIR] SCRIPT [ARGS...]" >&2; exit 2; }
script=$(realpath "$1") || exit 2
shift
[ -f "$script" ] || { echo "run-in-guest: no such script: $script" >&2; exit 2; }

mkdir -p "$build_dir" || exit 2
E2E_BUILD_DIR=$(realpath "$build_dir")
E2E_KERNEL_SERIES=$series
# shellcheck source=lib/host.sh
. "$(dirname "$(realpath "$0")")/lib/host.sh"
e2e_check_visible "build dir" "$E2E_BUILD_DIR"
e2e_check_visible "script" "$script"
e2e_check_visible "project root" "$E2E_SRC_DIR"
e2e_ensure_packages
e2e_ensure_kernel

run=$E2E_WORK_DIR/e2e-logs/run-in-guest
rm -rf "$run"
mkdir -p "$run/share"
disk=0
if [ -n "$disk_size" ]; then
  truncate -s "$disk_size" "$run/disk.img" || exit 2
  disk=1
fi
e2e_write_job "$run/share" run-in-guest 1 "$disk" "$script" "$@"
e2e_write_keep "$run/share" "$E2E_SRC_DIR" "$E2E_BUILD_DIR" "$(dirname "$script")"
e2e_log "booting $E2E_KVER (console: $run/console.log)"
e2e_boot "$run" "$timeout" 1 "$disk" "$ublks_max"
if [ -n "$E2E_BOOT_PROBLEM" ]; then
  e2e_log "$E2E_BOOT_PROBLEM"
  case $E2E_BOOT_PROBLEM in watchdog*) exit 124 ;; esac
  exit 125
fi
e2e_log "guest exit ${E2E_GUEST_RC} after ${E2E_BOOT_SECS}s"
exit "$E2E_GUEST_RC"
