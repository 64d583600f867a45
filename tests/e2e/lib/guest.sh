# Helpers for e2e scenarios, sourced inside the guest (bash, chrooted in the
# host's root): `. "$E2E_LIB"`.
#
# A scenario's exit code is its result: 0 PASS, 77 SKIP (reason via e2e_skip),
# 75 "reboot the guest and run me again" (E2E_BOOT counts boots), anything else
# FAIL. Environment set by the harness: SRC_DIR, BUILD_DIR, E2E_SCRATCH (tmpfs),
# E2E_RESULT_DIR (shared with the host), E2E_DATA_DIR (persistent disk, when the
# scenario asked for one with "# e2e-disk: SIZE"), E2E_BOOT, E2E_SCENARIO.

set -u

E2E_FAILURES=0

e2e_t() { cut -d' ' -f1 /proc/uptime; }
e2e_step() { echo "--- [$(e2e_t)s] $*"; }
e2e_ok() { echo "ok: $*"; }
# Records a failed check and carries on (the scenario fails at e2e_finish).
e2e_check_failed() {
  echo "FAIL: $*"
  E2E_FAILURES=$((E2E_FAILURES + 1))
}
e2e_fail() {
  echo "FAIL: $*"
  exit 1
}
e2e_skip() {
  echo "$*" > "$E2E_RESULT_DIR/skip_reason"
  echo "SKIP: $*"
  exit 77
}
# Ends the guest's run; the harness boots it again and reruns the scenario
# with E2E_BOOT incremented (state survives only in E2E_DATA_DIR).
e2e_reboot() {
  sync
  exit 75
}
e2e_finish() {
  if [ "$E2E_FAILURES" -gt 0 ]; then
    echo "$E2E_FAILURES check(s) failed"
    exit 1
  fi
  exit 0
}

# e2e_wait_for TIMEOUT_S CMD...: runs CMD every 0.1 s until it succeeds or
# TIMEOUT_S seconds of wall time have passed (a loaded host makes each round
# slower, so rounds are not counted). CMD is run anew each time: pass a
# command, never a "$(...)" that the shell would expand once before the wait.
e2e_wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  while ! "$@" 2>/dev/null; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
  return 0
}

e2e_sha() { sha256sum "$1" | cut -d' ' -f1; }

# e2e_make_pattern FILE MIB: random data to write and compare.
e2e_make_pattern() {
  dd if=/dev/urandom of="$1" bs=1M count="$2" status=none
}

# e2e_write_dev DEV PATTERN [SEEK_MIB]: writes PATTERN to DEV at SEEK_MIB with O_DIRECT.
e2e_write_dev() {
  local dev=$1 pat=$2 seek=${3:-0} mib
  mib=$(( $(stat -c %s "$pat") / 1048576 ))
  timeout 120 dd if="$pat" of="$dev" bs=1M seek="$seek" count="$mib" oflag=direct conv=notrunc status=none \
    || { echo "data check: write to $dev failed"; return 1; }
}

# e2e_verify_dev DEV PATTERN [SEEK_MIB]: reads DEV at SEEK_MIB with O_DIRECT and
# compares SHA-256 with PATTERN. Returns 0 only if they are equal.
e2e_verify_dev() {
  local dev=$1 pat=$2 seek=${3:-0} mib back want got
  mib=$(( $(stat -c %s "$pat") / 1048576 ))
  back=$E2E_SCRATCH/readback.$$
  timeout 120 dd if="$dev" of="$back" bs=1M skip="$seek" count="$mib" iflag=direct status=none \
    || { echo "data check: read from $dev failed"; rm -f "$back"; return 1; }
  want=$(e2e_sha "$pat"); got=$(e2e_sha "$back")
  if [ "$want" != "$got" ]; then
    echo "data check: $dev at ${seek} MiB: read back differs from what was written"
    cmp -l "$pat" "$back" 2>/dev/null | head -5 | sed 's/^/  cmp (offset, wrote, read octal): /'
    rm -f "$back"
    return 1
  fi
  rm -f "$back"
  return 0
}

# e2e_data_check DEV PATTERN [SEEK_MIB]: e2e_write_dev then e2e_verify_dev.
e2e_data_check() {
  e2e_write_dev "$@" && e2e_verify_dev "$@"
}

# e2e_fs_check DEV FSTYPE PATTERN: mkfs, mount, write a file, sync, umount,
# mount again and compare the file's SHA-256; umounts at the end.
e2e_fs_check() {
  local dev=$1 fs=$2 pat=$3 mnt=$E2E_SCRATCH/mnt-$2 want got
  mkdir -p "$mnt"
  case $fs in
    ext4) timeout 120 mkfs.ext4 -q -F "$dev" || { echo "mkfs.ext4 $dev failed"; return 1; } ;;
    xfs)  timeout 120 mkfs.xfs -q -f "$dev" || { echo "mkfs.xfs $dev failed"; return 1; } ;;
    *) echo "unknown fs $fs"; return 1 ;;
  esac
  timeout 60 mount -t "$fs" "$dev" "$mnt" || { echo "mount $fs $dev failed"; return 1; }
  cp "$pat" "$mnt/data" && sync
  local rc=$?
  timeout 60 umount "$mnt" || { echo "umount $mnt failed"; return 1; }
  [ $rc = 0 ] || { echo "writing $mnt/data failed"; return 1; }
  timeout 60 mount -t "$fs" "$dev" "$mnt" || { echo "remount $fs $dev failed"; return 1; }
  want=$(e2e_sha "$pat"); got=$(e2e_sha "$mnt/data" 2>/dev/null)
  timeout 60 umount "$mnt" || { echo "umount $mnt failed"; return 1; }
  if [ "$want" != "$got" ]; then
    echo "$fs on $dev: file read after remount differs from what was written"
    return 1
  fi
  return 0
}

# --- ublk-tool (ublk/tools/ublk_tool.cc) -------------------------------------
UBLK_TOOL=${BUILD_DIR:-}/ublk/ublk-tool

e2e_require_ublk_tool() {
  [ -x "$UBLK_TOOL" ] || e2e_skip "$UBLK_TOOL is not built yet"
}

# ublk_state_of DEV_ID [ublk-tool flags...]: the device's state as `ublk-tool
# info` reports it (LIVE, QUIESCED, DEAD), empty if it cannot be read.
ublk_state_of() {
  local id=$1
  shift
  "$UBLK_TOOL" info --dev_id="$id" "$@" 2>/dev/null | sed -n 's/^state=//p'
}

# ublk_state_is ID STATE [INFO_ARGS...]: for e2e_wait_for.
ublk_state_is() {
  local id=$1 state=$2
  shift 2
  [ "$(ublk_state_of "$id" "$@")" = "$state" ]
}

# ublk_serve NAME SERVE_ARGS...: starts `ublk-tool serve SERVE_ARGS` in the
# background and waits until it reports the device ready. Sets SRV_PID, SRV_DEV
# (/dev/ublkbN), SRV_ID (N) and SRV_LOG. Returns non-zero (server log shown) if
# it exits or is not ready within 60 s.
ublk_serve() { ublk_start_server serve "$@"; }
# ublk_recover NAME RECOVER_ARGS...: the same with `ublk-tool recover` (a new
# server re-attaching to a quiesced device).
ublk_recover() { ublk_start_server recover "$@"; }

ublk_start_server() { # SUBCOMMAND NAME ARGS...
  local sub=$1 name=$2 ready
  shift 2
  SRV_LOG=$E2E_SCRATCH/$sub-$name.log
  ready=$E2E_SCRATCH/ready-$sub-$name
  rm -f "$ready"
  SRV_DEV=
  SRV_ID=
  "$UBLK_TOOL" "$sub" "$@" --ready_file="$ready" >"$SRV_LOG" 2>&1 &
  SRV_PID=$!
  local i=0
  while :; do
    if [ -s "$ready" ]; then
      SRV_DEV=$(awk '{print $1; exit}' "$ready")
      [ -b "$SRV_DEV" ] && break
    fi
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
      wait "$SRV_PID"
      echo "ublk-tool $sub $* exited with $? before it was ready; its log:"
      sed 's/^/  | /' "$SRV_LOG" | tail -30
      SRV_PID=
      return 1
    fi
    i=$((i + 1))
    if [ $i -ge 600 ]; then
      echo "ublk-tool $sub $* not ready after 60 s (ready file: '$(cat "$ready" 2>/dev/null)'); its log:"
      sed 's/^/  | /' "$SRV_LOG" | tail -30
      return 1
    fi
    sleep 0.1
  done
  SRV_ID=${SRV_DEV#/dev/ublkb}
  grep -q "^READY $SRV_DEV" "$SRV_LOG" \
    || echo "note: server log has no 'READY $SRV_DEV' line (contract: printed on stdout when usable)"
  return 0
}

# ublk_stop [SIGNAL]: stops the server started by ublk_serve (default SIGTERM),
# expects exit code 0 within 30 s and the device nodes gone within 10 s after.
ublk_stop() {
  local sig=${1:-TERM} i rc ok=0 cdev
  [ -n "${SRV_PID:-}" ] || { echo "ublk_stop: no server running"; return 1; }
  cdev=${SRV_DEV/ublkb/ublkc}
  kill -"$sig" "$SRV_PID" 2>/dev/null
  for i in $(seq 300); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SRV_PID" 2>/dev/null; then
    echo "server (pid $SRV_PID) still running 30 s after SIG$sig; killing it; its log:"
    sed 's/^/  | /' "$SRV_LOG" | tail -20
    kill -KILL "$SRV_PID" 2>/dev/null
    ok=1
  fi
  wait "$SRV_PID"; rc=$?
  SRV_PID=
  if [ $ok = 0 ] && [ $rc != 0 ]; then
    echo "server exited with $rc after SIG$sig (want 0); its log:"
    sed 's/^/  | /' "$SRV_LOG" | tail -20
    ok=1
  fi
  if [ -n "$SRV_DEV" ] && ! e2e_wait_for 10 test ! -e "$SRV_DEV" -a ! -e "$cdev"; then
    echo "$SRV_DEV / $cdev still exist 10 s after the server stopped"
    ok=1
  fi
  return $ok
}

# --- ublk-csi-ctl (csi/ctl_main.cc) -------------------------------------------
# These expect the scenario's CTL array: (ublk-csi-ctl --endpoint=unix://SOCK).

# csi_field KEY < ctl-output: the first quoted value of KEY in the text-format
# reply `ublk-csi-ctl` prints (e.g. `volume create ... | csi_field volume_id`).
csi_field() { sed -n "s/^ *$1: \"\(.*\)\"$/\1/p" | head -1; }

# csi_ready: Probe answers ready=true (the backend is usable, recovery is
# done and every staged or published volume is served). Probe's exit status
# alone is not readiness: it returns OK with ready=false while recovering.
# The bound is the ctl's own 30 s deadline, not less: under TCG with fio
# running, the ctl alone takes 4 s or more to reach main (dynamic linking of
# gRPC), and a shorter bound killed every attempt on a slower CI host.
csi_ready() { timeout 35 "${CTL[@]}" identity probe 2>/dev/null | grep -q 'value: true'; }
# csi_readyz: /readyz (METRICS=host:port) answers 200: the same readiness as
# Probe, from a light client (curl), so a wait measures the plugin, not the
# start-up of the ctl.
csi_readyz() { curl -sf -m 10 -o /dev/null "http://${METRICS:-127.0.0.1:9810}/readyz"; }
# csi_wait_ready SECONDS: polls /readyz when the scenario set METRICS, then
# Probe must agree; polls Probe otherwise.
csi_wait_ready() {
  if [ -n "${METRICS:-}" ]; then
    e2e_wait_for "$1" csi_readyz && csi_ready
  else
    e2e_wait_for "$1" csi_ready
  fi
}
# csi_not_ready_why: the reason /readyz gives (METRICS=host:port), if any.
csi_not_ready_why() { curl -s "http://${METRICS:-127.0.0.1:9810}/readyz" 2>/dev/null; }

# csi_dev_of VOLUME_ID: the /dev/ublkbN `ublk-csi-ctl status` lists for it.
csi_dev_of() { "${CTL[@]}" status | sed -n "s/.*$1.*device=\([^ ]*\).*/\1/p"; }

# csi_teardown VOLUME_ID STAGE_DIR POD_DIR: NodeUnpublish, NodeUnstage and
# DeleteVolume, each a check of its own.
csi_teardown() {
  "${CTL[@]}" node unpublish "$1" "$3" >/dev/null || e2e_check_failed "unpublish $1"
  "${CTL[@]}" node unstage "$1" "$2" >/dev/null || e2e_check_failed "unstage $1"
  "${CTL[@]}" volume delete "$1" >/dev/null || e2e_check_failed "delete $1"
}
