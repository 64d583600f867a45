# mass-recovery-enomem: the seed incident for real. 66 file-backed block
# volumes (ublks_max raised to 128) are staged and written; the plugin is
# killed with SIGKILL and restarted with every buffer-pool mmap failing for
# 40 s (the test-only flag --fault_injection_fail_buffer_pool_mmap_seconds:
# cgroup memory.max would OOM-kill rather than fail the mmap, and RLIMIT_AS
# also starves thread stacks). The plugin must not exit, report ready with
# all 66 recovered, serve every volume's data from heap buffers
# (ublk_csi_buffer_pool_heap_fallbacks_total > 0), and once the fault ends
# the workers must go back to their pools (degraded workers 0). Prints the
# recovery time of the 66 exports and the plugin's peak RSS (VmHWM).
# The plugin runs with --copy_mode=user_copy: the pool serves the copy modes
# only, and on 7.x the detected mode (zero copy) never touches it, so the
# degrade-to-heap path would go untested there. (6.12 detects user_copy.)
# e2e-timeout: 600
# e2e-ublks-max: 128
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl ublk/ublk-tool
. "$E2E_LIB"

N=${N:-66}
PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/mass
SOCK=$WORK/csi.sock
METRICS=127.0.0.1:9814
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$WORK/data"
start_plugin() { # EXTRA FLAGS...
  "$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$WORK/data" \
    --metrics-address="$METRICS" --backend=ublk --mounter=real --workers=2 \
    --recovery-concurrency=8 --copy_mode=user_copy --overcommit-ratio=8 "$@" 2>>"$WORK/plugin.log" &
  PID=$!
}
metric() { # NAME: sum of its series; fails if /metrics cannot be read
  local out
  out=$(curl -sf "http://$METRICS/metrics") || { echo "unreadable"; return 1; }
  echo "$out" | awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}'
}

e2e_step "start the plugin; create, stage and write $N block volumes"
modprobe ublk_drv 2>/dev/null
start_plugin
csi_wait_ready 30 || { tail "$WORK/plugin.log"; e2e_fail "not ready"; }
head -c 64K /dev/urandom > "$WORK/pat"
WANT=$(e2e_sha "$WORK/pat")
# One client process for all 132+ calls (`ublk-csi-ctl bench`: create, stage
# and publish each block volume over one channel): a ctl process start per
# call cost ~3 s each under TCG (440 s for the 66 on a loaded host).
"${CTL[@]}" bench "$WORK" --count="$N" --prefix=v --size=16Mi > "$WORK/bench.out" 2>&1 \
  || { cat "$WORK/bench.out"; e2e_fail "ublk-csi-ctl bench (create/stage/publish $N) failed"; }
sed 's/^/  | /' "$WORK/bench.out"
awk 'NR > 1 && ($2 != '"$N"' || $3 != 0) {bad = 1} END {exit bad}' "$WORK/bench.out" \
  || e2e_fail "not every create/stage/publish of the $N volumes succeeded"
"${CTL[@]}" status | sed -n 's/.*device=\([^ ]*\).*/\1/p' > "$WORK/devs"
[ "$(wc -l < "$WORK/devs")" = "$N" ] || e2e_fail "$(wc -l < "$WORK/devs") devices, want $N"
while read -r d; do dd if="$WORK/pat" of="$d" bs=64K oflag=direct status=none || e2e_fail "write $d"; done < "$WORK/devs"
e2e_ok "$N volumes on $(head -1 "$WORK/devs") .. $(tail -1 "$WORK/devs"), 64 KiB written to each"

e2e_step "SIGKILL; restart with every buffer-pool mmap failing for 40 s"
kill -KILL "$PID"; wait "$PID" 2>/dev/null
# The kernel quiesces a device when the dead server's char device is
# released, which can lag the exit (seen: 65 of 66 right after the kill).
all_quiesced() {
  local d st
  while read -r d; do
    st=$("$BUILD_DIR/ublk/ublk-tool" info --dev_id="${d#/dev/ublkb}" | sed -n 's/^state=//p')
    [ "$st" = QUIESCED ] || return 1
  done < "$WORK/devs"
}
e2e_wait_for 10 all_quiesced && e2e_ok "$N devices QUIESCED" || e2e_check_failed "not all $N QUIESCED"
: > "$WORK/plugin.log"
t0=$(date +%s.%N)
start_plugin --fault_injection_fail_buffer_pool_mmap_seconds=40
hwm=0
ready=
for _ in $(seq 600); do
  kill -0 "$PID" 2>/dev/null || e2e_fail "the plugin exited during recovery: $(tail -5 "$WORK/plugin.log")"
  h=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status" 2>/dev/null)
  [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
  if csi_ready; then ready=1; break; fi
  sleep 0.2
done
t1=$(date +%s.%N)
[ -n "$ready" ] || e2e_fail "not ready 120 s after restart"
e2e_ok "ready $(echo "$t1 - $t0" | bc) s after restart (process start included); $(grep -o 'recovery done: .*' "$WORK/plugin.log")"
h=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
e2e_ok "peak RSS from start to ready (recovery included): VmHWM ${h} kB (last sample before ready ${hwm} kB)"
grep -q "recovery done: $N volume(s) .* $N recovered, 0 recreated, 0 failed" "$WORK/plugin.log" \
  || e2e_check_failed "not all $N recovered"

e2e_step "every volume serves its data from heap buffers"
bad=0
while read -r d; do
  # (no /dev/fd in the guest: no process substitution)
  got=$(dd if="$d" bs=64K count=1 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  [ "$got" = "$WANT" ] || bad=$((bad + 1))
done < "$WORK/devs"
[ "$bad" = 0 ] && e2e_ok "$N volumes read back intact" || e2e_check_failed "$bad volumes differ"
fb=$(metric ublk_csi_buffer_pool_heap_fallbacks_total)
dw=$(metric ublk_csi_buffer_pool_degraded_workers)
[ "${fb%.*}" -gt 0 ] 2>/dev/null && e2e_ok "heap fallbacks $fb, degraded workers $dw" \
  || e2e_check_failed "heap fallbacks $fb, want > 0"
lines=$(grep -c "cannot create buffer pool" "$WORK/plugin.log")
e2e_ok "degrade log lines: $lines (one per worker expected)"
[ "$lines" -le 2 ] || e2e_check_failed "$lines degrade lines for 2 workers"

e2e_step "after the fault ends the workers return to their pools"
while [ "$(echo "$(date +%s.%N) - $t0 > 42" | bc)" = 0 ]; do sleep 1; done
# One read per volume: dozens of I/Os per worker, spread over seconds, each a
# chance for its worker to map its pool again.
while read -r d; do dd if="$d" of=/dev/null bs=64K count=1 iflag=direct status=none; done < "$WORK/devs"
dw=$(metric ublk_csi_buffer_pool_degraded_workers)
[ "${dw%.*}" = 0 ] 2>/dev/null && e2e_ok "degraded workers 0: $(grep -c 'I/O uses the pool again' "$WORK/plugin.log") worker(s) back on their pool" \
  || e2e_check_failed "degraded workers $dw after the fault ended"
kill -0 "$PID" && e2e_ok "plugin still running"
kill -TERM "$PID"; wait "$PID" 2>/dev/null
e2e_finish
