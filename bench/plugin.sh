# shellcheck shell=bash
# bench/plugin.sh: the plugin half of `make bench`, run by bench/guest.sh in
# the same guest boot after the data-path runs. One ublk-csi process (real
# ublk backend, the default worker count (one per CPU, at least 4: 4 in the
# 2-vCPU guest) and the default 64 MiB node-wide buffer-pool budget)
# serves every volume. Measures:
#   - memory (VmRSS, VmHWM; ublk_csi_buffer_pool_bytes and slots in use from
#     /metrics) with 1, 16, 64, 66 and 256 idle block exports, and with fio
#     in flight on 1 and 8 exports at a few queue depths;
#   - control-plane latency: every export is made by `ublk-csi-ctl bench`
#     (CreateVolume, NodeStageVolume in block mode, NodePublishVolume over one
#     gRPC channel, each call timed in the client);
#   - recovery at 66 and at 256 exports under fio load (8 exports): kill -9,
#     restart at once; time until every device answered a 4 KiB O_DIRECT
#     read issued right after the kill, and until /readyz says ready, both
#     from the kill and from the new process's exec (the timestamp its
#     subshell takes right before exec); the plugin's own log lines on the
#     way (main reached, records loaded, recovery done); the new process's
#     peak RSS and pool bytes meanwhile (bench/recovery_watch.py).
#
# usage (sourced by guest.sh): plugin_bench OUT_DIR [recovery|full [profile]]
#   recovery: only the two recovery phases (66 exports in one batch, then
#   256), no memory or I/O rows (`make bench-recovery`).
#   profile: perf record -a -g across each kill (perf-N.*.txt) and 50 Hz
#   samples of where each plugin thread waits (wchan-N.tsv).
# Writes OUT_DIR/plugin/: memory.tsv, cp-samples.tsv, cp-*.txt,
# recovery-{66,256}.json, fio-*.json, plugin.log, floor.tsv. Records failures
# with e2e_check_failed.

PB_METRICS=127.0.0.1:9815

# pb_metric NAME: sum of a metric's series ("-" if /metrics is unreadable).
pb_metric() {
  local out
  out=$(curl -sf -m 5 "http://$PB_METRICS/metrics") || { echo -; return; }
  echo "$out" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

# pb_status KEY: a /proc/PB_PID/status field in kB.
pb_status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$PB_PID/status" 2>/dev/null; }

# pb_start: the plugin in the background; PB_PID is its pid, and
# PB_WORK/exec-epoch the time its subshell took right before exec.
pb_start() {
  (
    echo "$EPOCHREALTIME" > "$PB_WORK/exec-epoch"
    exec "${PB_RUN_BIN:-$PB_PLUGIN}" "${PB_ARGS[@]}" ${PB_RUN_ARGS:-} --endpoint="unix://$PB_SOCK" --data-dir="$PB_WORK/data" \
      --metrics-address="$PB_METRICS" 2>>"$PB_OUT/plugin.log"
  ) &
  PB_PID=$!
}

# pb_floor: what exec + dynamic loading + static init of the plugin binary
# cost in this guest before any of its own work (`ublk-csi --version`, 5
# runs), and the same for /bin/true: the floor under the recovery times.
# With PLUGIN_ALT_BIN, that binary's --version too (alt-ublk-csi--version).
pb_floor() {
  local i t0 what
  for what in ublk-csi--version ${PLUGIN_ALT_BIN:+alt-ublk-csi--version} true; do
    for i in 1 2 3 4 5; do
      t0=$EPOCHREALTIME
      case $what in
        true) /bin/true ;;
        alt-*) "$PLUGIN_ALT_BIN" --version ;;
        *) "$PB_PLUGIN" --version ;;
      esac > /dev/null 2>&1
      printf '%s\t%s\t%s\n' "$what" "$i" \
        "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", (b - a) * 1000}')"
    done
  done > "$PB_OUT/floor.tsv"
}

pb_ready() { # SECONDS
  local _i
  for _i in $(seq $(( $1 * 5 ))); do
    curl -sf -m 2 -o /dev/null "http://$PB_METRICS/readyz" && return 0
    kill -0 "$PB_PID" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# pb_rss_watch FILE: VmRSS of the plugin every 0.25 s ("epoch kB") until killed.
pb_rss_watch() {
  local res rest
  exec 9<>"$PB_FIFO"
  while :; do
    read -r _ res rest < "/proc/$PB_PID/statm" 2>/dev/null && echo "$EPOCHREALTIME $((res * 4))"
    read -r -t 0.25 -u 9 _
  done >> "$1"
}

# pb_mem PHASE EXPORTS IO PEAK_RSS SLOTS_IN_USE: one row of memory.tsv.
pb_mem() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(pb_status VmRSS)" \
    "$(pb_status VmHWM)" "$4" "$(pb_metric ublk_csi_buffer_pool_bytes)" "$5" \
    "$(pb_metric ublk_csi_exports)" >> "$PB_OUT/memory.tsv"
}

# pb_batch N PREFIX: N more block volumes, created, staged and published by
# one `ublk-csi-ctl bench` (its latencies go to cp-samples.tsv).
pb_batch() {
  local t0=$EPOCHREALTIME
  "${PB_CTL[@]}" bench "$PB_WORK/paths" --count="$1" --prefix="$2" --size=16Mi \
    --samples="$PB_OUT/cp-samples.tsv" > "$PB_OUT/cp-$2.txt" 2>&1 \
    || e2e_check_failed "ublk-csi-ctl bench --count=$1 --prefix=$2: $(tail -3 "$PB_OUT/cp-$2.txt")"
  PB_EXPORTS=$((PB_EXPORTS + $1))
  echo "  [$(now)s] $PB_EXPORTS exports ($1 created+staged+published in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s)"
  "${PB_CTL[@]}" status | sed -n 's/.*device=\(\/dev\/ublkb[0-9]*\).*/\1/p' > "$PB_WORK/devs"
  [ "$(wc -l < "$PB_WORK/devs")" = "$PB_EXPORTS" ] \
    || e2e_check_failed "status lists $(wc -l < "$PB_WORK/devs") devices, want $PB_EXPORTS"
}

# pb_idle: memory with every export idle (the kernel's partition scan at
# START_DEV is the only I/O they have seen).
pb_idle() {
  sleep 1
  pb_mem idle "$PB_EXPORTS" - - "$(pb_metric ublk_csi_buffer_pool_slots_in_use)"
}

# pb_io NAME NDEV RW BS QD: fio on the first NDEV exports (one job each) for
# PB_IO_S seconds; the peak of 4 Hz VmRSS samples over the run and the
# largest slots-in-use of /metrics read every ~0.5 s while fio runs.
pb_io() {
  local name=$1 ndev=$2 rw=$3 bs=$4 qd=$5 job=$PB_WORK/$1.fio wpid fpid slots d x
  {
    echo "[global]"; echo "ioengine=libaio"; echo "direct=1"; echo "time_based"
    echo "runtime=$PB_IO_S"; echo "rw=$rw"; echo "bs=$bs"; echo "iodepth=$qd"
    echo "norandommap"; echo "randrepeat=0"; echo "group_reporting"
    head -n "$ndev" "$PB_WORK/devs" | while read -r d; do echo "[$(basename "$d")]"; echo "filename=$d"; done
  } > "$job"
  : > "$PB_WORK/rss-$name"
  pb_rss_watch "$PB_WORK/rss-$name" &
  wpid=$!
  fio --output-format=json --output="$PB_OUT/fio-$name-$PB_EXPORTS.json" "$job" > /dev/null 2>&1 &
  fpid=$!
  slots=0
  while kill -0 "$fpid" 2>/dev/null; do
    x=$(pb_metric ublk_csi_buffer_pool_slots_in_use)
    [ "${x%.*}" -gt "$slots" ] 2>/dev/null && slots=${x%.*}
    sleep 0.5
  done
  wait "$fpid" || e2e_check_failed "fio $name on $PB_EXPORTS exports failed"
  kill "$wpid"; wait "$wpid" 2>/dev/null
  pb_mem "io:$name" "$PB_EXPORTS" "$ndev dev x $rw $bs QD$qd" \
    "$(awk '$2 > m {m = $2} END {print m + 0}' "$PB_WORK/rss-$name")" "$slots"
}

# The I/O in flight: 1 x 4k (QD1), 32 x 128 KiB on one export (one worker),
# 8 exports x 32 x 128 KiB (spread over the workers: up to 256 I/Os of 128
# KiB, half the node-wide 512 slots).
pb_io_set() {
  pb_io qd1-4k 1 randread 4k 1
  pb_io qd32-128k 1 randread 128k 32
  [ "$PB_EXPORTS" -ge 8 ] && pb_io 8x-qd32-128k 8 randread 128k 32
}

# pb_recovery NAME [ARGS [BIN]]: kill -9 under fio on 8 exports, restart at
# once (with ARGS: ublk-csi flags added for this restart and the ones after
# it, until the next pb_recovery; with BIN: that binary runs instead of
# PB_PLUGIN, as long). Writes
# recovery-NAME.json, fio-recovery-NAME.json, recovery-watch-NAME.log.
pb_recovery() {
  local name=$1 job=$PB_WORK/recovery-$1.fio fpid wdir=$PB_WORK/watch-$1 d
  {
    echo "[global]"; echo "ioengine=libaio"; echo "direct=1"; echo "time_based"
    echo "runtime=300"; echo "rw=randrw"; echo "bs=4k"; echo "iodepth=16"
    echo "norandommap"; echo "randrepeat=0"; echo "group_reporting"
    head -n 8 "$PB_WORK/devs" | while read -r d; do echo "[$(basename "$d")]"; echo "filename=$d"; done
  } > "$job"
  rm -rf "$wdir"; mkdir -p "$wdir"
  # The watcher opens every device and starts its reader threads first (tens
  # of seconds under TCG on a loaded host), then waits for the go file; fio
  # starts meanwhile.
  local prof=()
  [ "${PB_PROFILE:-0}" = 1 ] && prof=(--wchan "$PB_OUT/wchan-$name.tsv")
  python3 "$BENCH_DIR/recovery_watch.py" --devs "$PB_WORK/devs" --dir "$wdir" \
    --metrics "$PB_METRICS" --log "$PB_OUT/plugin.log" --out "$PB_OUT/recovery-$name.json" \
    --timeout 180 "${prof[@]}" > "$PB_OUT/recovery-watch-$name.log" 2>&1 &
  local wpid=$! t_fio
  fio --output-format=json --output="$PB_OUT/fio-recovery-$name.json" "$job" > "$PB_OUT/fio-recovery-$name.log" 2>&1 &
  fpid=$!
  t_fio=$(now)
  for _ in $(seq 1200); do [ -e "$wdir/armed" ] && break; sleep 0.1; done
  [ -e "$wdir/armed" ] || e2e_check_failed "recovery watcher did not arm: $(tail -3 "$PB_OUT/recovery-watch-$name.log")"
  # fio's I/O phase has begun (its start-up takes seconds under TCG).
  while awk -v a="$t_fio" -v b="$(now)" 'BEGIN {exit !(b - a < 6)}'; do sleep 0.5; done
  pb_mem "before-kill-$name" "$PB_EXPORTS" "8 dev x randrw 4k QD16" - "$(pb_metric ublk_csi_buffer_pool_slots_in_use)"
  local ppid=
  if [ "${PB_PROFILE:-0}" = 1 ]; then
    # The whole guest from the kill on (cpu-clock: TCG has no PMU), for
    # about as long as the recovery took unprofiled.
    perf record -a -g -e cpu-clock -F 999 -o "$PB_WORK/perf-$name.data" -- \
      sleep $(( PB_EXPORTS > 100 ? 12 : 3 )) > "$PB_OUT/perf-$name.record.log" 2>&1 &
    ppid=$!
    sleep 1  # perf's own start-up
  fi
  PB_RUN_ARGS=${2:-}
  PB_RUN_BIN=${3:-}
  local t_kill=$EPOCHREALTIME
  kill -KILL "$PB_PID"
  echo "$t_kill" > "$wdir/go.tmp" && mv "$wdir/go.tmp" "$wdir/go"
  wait "$PB_PID" 2>/dev/null
  pb_start
  echo "$PB_PID" > "$wdir/pid"
  # pb_start's subshell writes exec-epoch before it execs; wait for it.
  for _ in $(seq 100); do [ -s "$PB_WORK/exec-epoch" ] && break; sleep 0.01; done
  cp "$PB_WORK/exec-epoch" "$wdir/exec.tmp" && mv "$wdir/exec.tmp" "$wdir/exec"
  echo "  [$(now)s] killed -9 and restarted (pid $PB_PID)"
  wait "$wpid" || e2e_check_failed "recovery watcher ($name exports): $(tail -3 "$PB_OUT/recovery-watch-$name.log")"
  cat "$PB_OUT/recovery-watch-$name.log"
  if [ -n "$ppid" ]; then
    wait "$ppid"
    perf report -i "$PB_WORK/perf-$name.data" --stdio --no-children --sort comm,dso -g none \
      --percent-limit 0.5 > "$PB_OUT/perf-$name.comm.txt" 2>&1
    perf report -i "$PB_WORK/perf-$name.data" --stdio --no-children --comm ublk-csi --sort sym \
      -g caller,0.5,callee --percent-limit 1 > "$PB_OUT/perf-$name.sym.txt" 2>&1
    perf report -i "$PB_WORK/perf-$name.data" --stdio --no-children --sort comm,sym -g none \
      --percent-limit 0.3 > "$PB_OUT/perf-$name.commsym.txt" 2>&1
  fi
  pb_mem "after-recovery-$name" "$PB_EXPORTS" "8 dev x randrw 4k QD16" - "$(pb_metric ublk_csi_buffer_pool_slots_in_use)"
  # fio ran across the kill; SIGINT ends it with its report written.
  kill -INT "$fpid"
  wait "$fpid"
  local rc=$?
  echo "fio across the kill: exit $rc (after SIGINT), $(grep -o '"error" : [0-9]*' "$PB_OUT/fio-recovery-$name.json" | sort | uniq -c | tr -s ' ')"
  grep -q '"error" : [1-9]' "$PB_OUT/fio-recovery-$name.json" \
    && e2e_check_failed "fio saw I/O errors across the kill with $name exports"
  grep -o "recovery done: .*" "$PB_OUT/plugin.log" | tail -1
}

# pb_full: every memory and I/O row, and both recoveries.
pb_full() {
  e2e_step "plugin: 1 export; idle, then fio"
  pb_batch 1 b1
  pb_idle
  pb_io_set
  e2e_step "plugin: 16, 64, 66 idle exports"
  pb_batch 15 b16; pb_idle
  pb_batch 48 b64; pb_idle
  pb_batch 2 b66; pb_idle
  e2e_step "plugin: kill -9 and restart with 66 exports under fio"
  pb_recovery 66
  e2e_step "plugin: 256 exports; idle, then fio"
  pb_batch 190 b256
  pb_idle
  pb_io_set
  e2e_step "plugin: kill -9 and restart with 256 exports under fio"
  pb_recovery 256
}

# pb_recovery_only: the two recoveries alone (66 exports made in one batch).
# With PLUGIN_ALT_ARGS or PLUGIN_ALT_BIN (guest.sh): an A/B in the same boot,
# A B A B per size (A: the plugin's flags and binary, B: with PLUGIN_ALT_ARGS
# added, run by PLUGIN_ALT_BIN), so that the host's load drifts across both.
pb_recovery_only() {
  local n r
  for n in 66 256; do
    e2e_step "plugin: $n exports"
    pb_batch $(( n - PB_EXPORTS )) "b$n"; pb_idle
    e2e_step "plugin: kill -9 and restart with $n exports under fio"
    if [ -z "${PLUGIN_ALT_ARGS:-}" ] && [ -z "${PLUGIN_ALT_BIN:-}" ]; then
      pb_recovery "$n"
      continue
    fi
    for r in 1 2; do
      pb_recovery "$n-A$r"
      pb_recovery "$n-B$r" "${PLUGIN_ALT_ARGS:-}" "${PLUGIN_ALT_BIN:-}"
    done
    PB_RUN_ARGS=
    PB_RUN_BIN=
  done
}

plugin_bench() {
  PB_OUT=$1/plugin
  PB_WORK=$E2E_SCRATCH/plugin-bench
  PB_SOCK=$PB_WORK/csi.sock
  PB_FIFO=$PB_WORK/fifo
  PB_PLUGIN=$BUILD_DIR/csi/ublk-csi
  PB_CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$PB_SOCK" --timeout=60)
  PB_IO_S=${PB_IO_S:-5}
  PB_EXPORTS=0
  # shellcheck disable=SC2206 # PLUGIN_EXTRA_ARGS (guest.sh): flags, split on spaces
  PB_ARGS=(--node-id=bench --backend=ublk --mounter=real
    --overcommit-ratio=8 ${PLUGIN_EXTRA_ARGS:-})
  mkdir -p "$PB_OUT" "$PB_WORK/data" "$PB_WORK/paths"
  mkfifo "$PB_FIFO"
  if [ ! -x "$PB_PLUGIN" ] || [ ! -x "${PB_CTL[0]}" ]; then
    echo "plugin part skipped: $PB_PLUGIN or ublk-csi-ctl not built" | tee "$PB_OUT/skipped"
    return 0
  fi
  printf 'phase\texports\tio\tvmrss_kb\tvmhwm_kb\tpeak_rss_kb\tpool_bytes\tslots_in_use\texports_gauge\n' > "$PB_OUT/memory.tsv"
  printf 'batch\tcall\ti\tus\n' > "$PB_OUT/cp-samples.tsv"
  ip link set lo up 2>/dev/null || busybox ifconfig lo up
  local t0
  t0=$(now)
  echo "plugin_args=${PB_ARGS[*]}" >> "$1/guest.txt"
  echo "plugin_alt_args=${PLUGIN_ALT_ARGS:-}" >> "$1/guest.txt"
  echo "plugin_alt_bin=${PLUGIN_ALT_BIN:-}" >> "$1/guest.txt"
  e2e_step "plugin: the floor (exec of ublk-csi --version, of /bin/true)"
  pb_floor
  e2e_step "plugin: start ublk-csi (default workers and pool budget)"
  pb_start
  pb_ready 60 || { e2e_check_failed "plugin not ready: $(tail -5 "$PB_OUT/plugin.log")"; return 1; }
  pb_mem idle 0 - - -
  # shellcheck disable=SC2034 # read by pb_recovery
  [ "${3:-}" = profile ] && PB_PROFILE=1
  if [ "${2:-}" = recovery ]; then pb_recovery_only; else pb_full; fi
  e2e_step "plugin: stop"
  kill -TERM "$PB_PID"; wait "$PB_PID" 2>/dev/null
  echo "plugin_seconds=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}')" >> "$1/guest.txt"
}
