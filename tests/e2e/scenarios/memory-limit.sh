# memory-limit: issue 17's reproduction, which OOM-killed the plugin 17 times
# in a row. N volumes (N_FS of them ext4, the rest raw block) are staged and
# written by a plugin running in its own cgroup v2 group; its memory use
# without pools is measured as the issue did (the group's memory.current at
# steady state, minus the buffer memory the plugin reports). It is killed with
# SIGKILL and restarted by a small supervisor loop inside the same group with
# memory.max = that + 16 MiB, while fio verifies one block and one ext4
# volume. The plugin must never be OOM-killed (memory.events oom_kill stays
# 0, the supervisor starts it once), recover and serve all N, show its budget,
# parked I/O and fallbacks in /metrics, and be ready; then memory.max is
# raised and the buffer pools come back. Prints RSS with 1, 16 and N exports,
# the time to all-serving under the limit, heap fallbacks and parked I/Os.
# Copy mode user_copy on both kernels: zero copy (7.x) uses no pool.
# The data dir (the volumes' backing files) is on a virtio disk, as a node's
# hostPath is: the plugin writes them through the page cache, which is
# charged to its group and reclaimable. On the guest's tmpfs they were shmem,
# which no reclaim frees: fio's writes alone filled the group to its limit.
# The backing files are sparse: 256 x 16 MiB volumes fit the 2 GiB disk only
# thin (--overcommit-ratio=8).
# Every wait is bounded: a hang fails the scenario with the plugin's state.
# e2e-timeout: 1200
# e2e-disk: 2G
# e2e-ublks-max: 300
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl ublk/ublk-tool
. "$E2E_LIB"

N=${N:-66}
N_FS=${N_FS:-4}
PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/memlimit
DATA=${E2E_DATA_DIR:?no data disk}/memlimit
SOCK=$WORK/csi.sock
METRICS=127.0.0.1:9816
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
CG=/sys/fs/cgroup/ublk-csi
mkdir -p "$WORK" "$DATA"
# A scratch disk: no cache flushes. Every CreateVolume and NodeStage fsyncs
# its record (and the dir) several times; with flushes each one waited for
# the host's disk under TCG (CreateVolume 0.3-1.3 s instead of ~10 ms).
mount -o remount,barrier=0 "$E2E_DATA_DIR" 2>/dev/null || echo "note: $E2E_DATA_DIR keeps its cache flushes"
FLAGS=(--node-id=e2e --endpoint="unix://$SOCK" --data-dir="$DATA"
       --metrics-address="$METRICS" --backend=ublk --mounter=real --workers=2
       --copy_mode=user_copy --overcommit-ratio=8)
# The default --recovery-concurrency (32): the limit must hold with it.
# More flags, later ones win (E2E_ENV="EXTRA_FLAGS=--recovery-concurrency=64"):
# a change of a default checked against the limit before it is made.
# shellcheck disable=SC2206 # EXTRA_FLAGS: flags, split on spaces
FLAGS+=(${EXTRA_FLAGS:-})
# Runs the plugin as a member of $CG from its first instruction on.
in_cgroup() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$PLUGIN" "${FLAGS[@]}"; }
plugin_pid() { head -1 "$CG/cgroup.procs" 2>/dev/null; }
metric() { # NAME: sum of its series
  curl -sf "http://$METRICS/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}
event() { awk -v k="$1" '$1 == k {print $2}' "$CG/memory.events"; }
mib() { echo "$(( $1 / 1048576 )) MiB"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$(plugin_pid)/status"; }
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$METRICS/readyz")" = 200 ]; }
# The group's memory that no reclaim frees: memory.current minus the page
# cache on the file LRU lists (what the plugin's budget counts).
unreclaimable() {
  awk -v cur="$(cat "$CG/memory.current")" '$1 == "active_file" || $1 == "inactive_file" {f += $2}
    END {print cur - f}' "$CG/memory.stat"
}
T0=$(e2e_t)
since() { echo "$(e2e_t) - $T0" | bc; }
# What the plugin and the group look like, when something did not finish.
dump_state() {
  echo "  | memory.current $(cat "$CG/memory.current"), memory.max $(cat "$CG/memory.max"), events: $(tr '\n' ' ' < "$CG/memory.events")"
  grep -E '^(anon|file|shmem|active_file|inactive_file) ' "$CG/memory.stat" | tr '\n' ' ' | sed 's/^/  | memory.stat: /'; echo
  curl -sf "http://$METRICS/metrics" | grep -E '^ublk_csi_(memory_|worker_parked|buffer_pool_bytes|exports)' | sed 's/^/  | /'
  tail -15 "$WORK/plugin.log" | sed 's/^/  | log: /'
}

e2e_step "cgroup v2 with the memory controller; the plugin in $CG"
modprobe ublk_drv 2>/dev/null
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup || e2e_fail "cannot mount cgroup2"
grep -qw memory /sys/fs/cgroup/cgroup.controllers || e2e_skip "no memory controller in cgroup2"
echo +memory > /sys/fs/cgroup/cgroup.subtree_control || e2e_fail "cannot enable the memory controller"
mkdir -p "$CG"
in_cgroup 2>>"$WORK/plugin.log" &
e2e_wait_for 30 ready || { tail "$WORK/plugin.log"; e2e_fail "plugin not ready"; }
grep -o 'memory budget: .*' "$WORK/plugin.log" | head -1 | sed 's/^/note: /'

e2e_step "create, stage and write $N volumes ($N_FS ext4); RSS with 1, 16, $N exports"
head -c 64K /dev/urandom > "$WORK/pat"
WANT=$(e2e_sha "$WORK/pat")
# The pattern to every device not written yet, 8 at a time.
write_new_devs() {
  "${CTL[@]}" status | sed -n 's/.*device=\([^ ]*\).*/\1/p' > "$WORK/devs.now"
  touch "$WORK/devs"
  grep -vxF -f "$WORK/devs" "$WORK/devs.now" > "$WORK/devs.new" || true
  xargs -P 8 -I{} timeout 60 dd if="$WORK/pat" of={} bs=64K oflag=direct status=none \
    < "$WORK/devs.new" || e2e_fail "writing the pattern to $(tr '\n' ' ' < "$WORK/devs.new")"
  cat "$WORK/devs.new" >> "$WORK/devs"
}
report_rss() { # EXPORTS
  sleep 1.5  # a metrics refresh
  local cur buf
  cur=$(cat "$CG/memory.current"); buf=$(metric ublk_csi_memory_buffer_bytes)
  e2e_ok "$1 export(s) at $(since) s: VmRSS $(rss_kb) kB, memory.current $(mib "$cur") ($(mib "$(unreclaimable)") without page cache), buffers $(mib "${buf%.*}")"
}
nb=$((N - N_FS))
made=0
for step in 1 16 "$nb"; do
  [ "$step" -gt "$nb" ] && step=$nb
  [ "$step" -le "$made" ] && continue
  # CreateVolume, NodeStage, NodePublish: up to 4 clients at once, as
  # several pods' provisioner and kubelet calls come.
  n=$((step - made)) pids=
  for j in 0 1 2 3; do
    c=$(( n / 4 + (j < n % 4 ? 1 : 0) ))
    [ "$c" -gt 0 ] || continue
    "${CTL[@]}" bench "$WORK" --count="$c" --prefix="b$made-$j" --size=16Mi > "$WORK/bench.$j" 2>&1 &
    pids="$pids $!"
  done
  for p in $pids; do wait "$p" || { cat "$WORK"/bench.*; e2e_fail "ublk-csi-ctl bench failed"; }; done
  made=$step
  e2e_ok "$made block volumes created, staged, published at $(since) s: $(cat "$WORK"/bench.* | awk '$1 ~ /Volume$/ {n[$1] += $2; s[$1] += $2 * $6} END {for (k in n) printf "%s mean %.0f ms; ", k, s[k] / n[k]}')"
  rm -f "$WORK"/bench.*
  write_new_devs
  [ "$made" -lt "$nb" ] && report_rss "$made"
done
make_fs() { # I: create, stage (mkfs) and write ext4 volume fs$I
  local v
  v=$("${CTL[@]}" volume create "fs$1" --size=32Mi --fs-type=ext4 | csi_field volume_id)
  [ -n "$v" ] || { echo "create ext4 volume fs$1 failed"; return 1; }
  "${CTL[@]}" node stage "$v" "$WORK/stage-f$1" --fs-type=ext4 >/dev/null || { echo "stage fs$1 failed"; return 1; }
  cp "$WORK/pat" "$WORK/stage-f$1/pat"
}
pids=
for i in $(seq "$N_FS"); do make_fs "$i" & pids="$pids $!"; done
for p in $pids; do wait "$p" || e2e_fail "an ext4 volume could not be made"; done
sync
e2e_ok "$N_FS ext4 volumes created, staged (mkfs), written at $(since) s"
"${CTL[@]}" status | sed -n 's/.*device=\([^ ]*\).*/\1/p' > "$WORK/alldevs"
[ "$(wc -l < "$WORK/alldevs")" = "$N" ] || e2e_fail "$(wc -l < "$WORK/alldevs") devices, want $N"
report_rss "$N"
BASE=$(( $(unreclaimable) - $(metric ublk_csi_memory_buffer_bytes | cut -d. -f1) ))
LIMIT=$((BASE + 16 * 1048576))
e2e_ok "without buffers and page cache: $(mib "$BASE"); the limit will be $(mib "$LIMIT")"

e2e_step "fio verify on a block and an ext4 volume; SIGKILL; restart under memory.max = $(mib "$LIMIT")"
BDEV=$(head -1 "$WORK/devs")
timeout 300 fio --name=blk --filename="$BDEV" --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring \
  --direct=1 --size=12M --offset=1M --verify=crc32c --verify_fatal=1 --do_verify=1 --rate=2m \
  >"$WORK/fio-blk.log" 2>&1 &
FIO_B=$!
timeout 300 fio --name=fs --filename="$WORK/stage-f1/fio.dat" --rw=randwrite --bs=4k --iodepth=16 \
  --ioengine=io_uring --direct=1 --size=12M --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --rate=2m >"$WORK/fio-fs.log" 2>&1 &
FIO_F=$!
sleep 2
PID=$(plugin_pid)
kill -KILL "$PID"
while [ -n "$(plugin_pid)" ]; do sleep 0.1; done
OOM0=$(event oom_kill)
echo "$LIMIT" > "$CG/memory.max"
: > "$WORK/plugin.log"
t0=$(date +%s.%N)
# The supervisor: restarts the plugin whenever it exits, as a kubelet would.
( while [ ! -e "$WORK/stop" ]; do
    echo start >> "$WORK/starts"
    in_cgroup 2>>"$WORK/plugin.log"
    echo "exit $?" >> "$WORK/starts"
    sleep 0.5
  done ) &
SUP=$!
served=
for _ in $(seq 900); do
  if grep -q "recovery done:" "$WORK/plugin.log" && ready; then served=1; break; fi
  sleep 0.2
done
t1=$(date +%s.%N)
[ -n "$served" ] && e2e_ok "recovered and ready $(echo "$t1 - $t0" | bc) s after restart: $(grep -o 'recovery done: .*' "$WORK/plugin.log" | tail -1)" \
  || { dump_state; e2e_check_failed "not recovered and ready 180 s after restart"; }
grep -q "recovery done: $N volume(s) .* 0 failed" "$WORK/plugin.log" || e2e_check_failed "not all $N recovered"

e2e_step "under the limit: never OOM-killed, every volume serves"
# 8 devices at a time; a device that does not answer in 30 s counts as bad.
xargs -P 8 -I{} sh -c 'timeout 30 dd if={} bs=64K count=1 iflag=direct status=none | sha256sum | cut -d" " -f1' \
  < "$WORK/devs" > "$WORK/sums"
bad=$(( $(wc -l < "$WORK/devs") - $(grep -cx "$WANT" "$WORK/sums") ))
for i in $(seq "$N_FS"); do
  [ "$(timeout 30 sha256sum "$WORK/stage-f$i/pat" | cut -d' ' -f1)" = "$WANT" ] || bad=$((bad + 1))
done
[ "$bad" = 0 ] && e2e_ok "$N volumes read back intact at $(since) s" \
  || { dump_state; e2e_check_failed "$bad volumes differ or did not answer within 30 s"; }
for p in "$FIO_B" "$FIO_F"; do
  if wait "$p"; then e2e_ok "fio pid $p: verify passed"; else dump_state; e2e_check_failed "fio pid $p failed (124: not done in 300 s)"; fi
done
grep -hE "err=" "$WORK/fio-blk.log" "$WORK/fio-fs.log" | sed 's/^/  | /'
sleep 1.5
oom=$(( $(event oom_kill) - OOM0 ))
starts=$(grep -c '^start' "$WORK/starts")
[ "$oom" = 0 ] && e2e_ok "memory.events: oom_kill +0, high $(event high), max $(event max)" \
  || e2e_check_failed "OOM-killed $oom time(s) under the limit"
[ "$starts" = 1 ] && e2e_ok "the supervisor started the plugin once" \
  || e2e_check_failed "the plugin was started $starts times: $(grep exit "$WORK/starts" | tr '\n' ' ')"
fb=$(metric ublk_csi_buffer_pool_heap_fallbacks_total)
pk=$(metric ublk_csi_worker_parked_ios_total)
dn=$(metric ublk_csi_memory_denials_total)
bud=$(metric ublk_csi_memory_budget_bytes)
pool=$(metric ublk_csi_buffer_pool_bytes)
e2e_ok "metrics: budget $(mib "${bud%.*}"), headroom $(metric ublk_csi_memory_headroom_bytes), pool bytes $pool, heap fallbacks $fb, parked I/Os $pk, budget denials $dn, memory.high events $(metric ublk_csi_memory_high_events_total)"
[ "${bud%.*}" = "$LIMIT" ] || e2e_check_failed "budget ${bud} is not memory.max $LIMIT"
e2e_ok "peak memory.current $(mib "$(cat "$CG/memory.peak" 2>/dev/null || echo 0)") of $(mib "$LIMIT")"

e2e_step "memory.max raised: the pools come back, nothing waits for memory"
POOL_LIMITED=$pool
echo max > "$CG/memory.max"
sleep 2  # a budget refresh and a pool retry interval
dn0=$(metric ublk_csi_memory_denials_total)
for _ in 1 2 3; do
  xargs -P 8 -I{} timeout 30 dd if={} of=/dev/null bs=64K count=4 iflag=direct status=none < "$WORK/devs"
  pool=$(metric ublk_csi_buffer_pool_bytes)
  [ "${pool%.*}" -gt 0 ] && break
  sleep 1
done
sleep 1.5  # a metrics refresh
dn1=$(metric ublk_csi_memory_denials_total)
[ "${pool%.*}" -gt 0 ] 2>/dev/null && e2e_ok "buffer pools mapped: $(mib "${pool%.*}") (under the limit: $(mib "${POOL_LIMITED%.*}"))" \
  || e2e_check_failed "no buffer pool after the limit was raised (pool bytes $pool)"
[ "$dn1" = "$dn0" ] && e2e_ok "no budget denial after the limit was raised" \
  || e2e_check_failed "budget denials went on after the limit was raised: $dn0 -> $dn1"
kill -0 "$(plugin_pid)" && e2e_ok "plugin still running"
# Unmounted while the plugin serves: an ext4 mount left on a quiesced device
# hangs the guest's poweroff.
for i in $(seq "$N_FS"); do umount "$WORK/stage-f$i" || e2e_check_failed "umount stage-f$i"; done
touch "$WORK/stop"
kill -TERM "$(plugin_pid)"
wait "$SUP" 2>/dev/null
e2e_finish
