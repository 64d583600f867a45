# rbd-csi (plugin level, issue 21): ublk-csi --rbd against the single-node
# Ceph of tests/e2e/lib/ceph.sh, driven through ublk-csi-ctl the way the CSI
# sidecars and kubelet drive it (StorageClass parameters backend=rbd, the
# cephx key in the request secrets, from a file):
# - CreateVolume makes an RBD image; NodeStage (ext4) and NodePublish serve
#   it through /dev/ublkbN; fio write+verify on the mount;
# - CreateSnapshot, then a restore (CreateVolume from the snapshot) staged
#   on its own: the restored file has the checksum the source had at the
#   snapshot, and a write to the source after the snapshot is not in it;
# - the plugin killed with SIGKILL under fio randwrite+verify on the RBD
#   volume, KILLS times (default 1; KILLS=10 on demand): ready again with
#   the same device, its own new rados connection, a write through within
#   20 s of ready, fio 0 errors;
# - the OSD killed with SIGKILL under fio randwrite+verify: the volume's I/O
#   stalls (no completion), the OSD restarts, I/O resumes, fio 0 errors;
# - the monitor down when the plugin starts: the staged volumes' recovery
#   fails with UNAVAILABLE (not ready, /readyz says why), a NodeStage of
#   another volume fails UNAVAILABLE naming the cluster; once the monitor is
#   back the plugin recovers the staged volumes by itself (no call from
#   kubelet: it does not repeat a stage) and the other volume stages;
# - the cephx key is in no plugin log and no volume record;
# - a controller without records (--mode=controller on an empty data dir,
#   a replaced controller pod) restores the snapshot from its ID alone and
#   deletes that volume and the snapshot;
# - teardown: DeleteVolume and DeleteSnapshot leave no image in the pool.
# e2e-timeout: 1200
# e2e-disk: 8G
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
. "$E2E_LIB"
. "$SRC_DIR/tests/e2e/lib/ceph.sh"

KILLS=${KILLS:-1}
PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/rbd-csi
SOCK=$WORK/csi.sock
METRICS=127.0.0.1:9817
LOGS=$E2E_RESULT_DIR
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK" --timeout=180)
mkdir -p "$WORK/data"
PID=

CEPH_OSD_SIZE=6G
e2e_step "start a single-node Ceph"
ceph_start "$E2E_DATA_DIR/ceph" || e2e_fail "ceph_start failed"
trap 'ceph_stop >/dev/null 2>&1' EXIT
SECRETS=$WORK/ceph.secrets
(umask 077; printf 'userID=%s\nuserKey=%s\n' "$CEPH_USER" "$CEPH_KEY" >"$SECRETS")
# One monitor address (msgr v1): --params is k=v,k=v and CEPH_MON_HOST's
# bracketed list has a comma in it.
PARAMS="backend=rbd,clusterID=e2e,monitors=127.0.0.1:${CEPH_MON_PORT_V1:-6789},pool=$CEPH_POOL"
S=(--secrets-file="$SECRETS")

# The default --rbd-op-timeout (120 s) outlasts the OSD's restart below
# (~30 s under TCG); a shorter one fails the stalled I/O with EIO by design
# (rbd-engine tests that with 5 s).
start_plugin() {
  "$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$WORK/data" \
    --metrics-address="$METRICS" --backend=ublk --mounter=real --rbd \
    --rbd-connect-timeout=5s 2>>"$LOGS/plugin.log" &
  PID=$!
}
kill9_plugin() { kill -KILL "$PID"; wait "$PID" 2>/dev/null; PID=; }
images() { timeout 60 rbd --conf "$CEPH_CONF" ls "$CEPH_POOL" 2>/dev/null | sort | tr '\n' ' '; }

e2e_step "start the plugin with --rbd"
modprobe ublk_drv 2>/dev/null
start_plugin
csi_wait_ready 60 || { tail -20 "$LOGS/plugin.log"; e2e_fail "plugin not ready"; }
e2e_ok "plugin ready"

e2e_step "create an RBD volume, stage ext4, publish, fio write+verify"
R1=$("${CTL[@]}" volume create r1 --size=256Mi --fs-type=ext4 --params="$PARAMS" "${S[@]}" |
  tee "$LOGS/create-r1.txt" | csi_field volume_id)
[ -n "$R1" ] || { cat "$LOGS/create-r1.txt"; tail -20 "$LOGS/plugin.log"; e2e_fail "CreateVolume r1"; }
if grep -q 'accessible_topology' "$LOGS/create-r1.txt"; then
  e2e_check_failed "an RBD volume came back with a node topology"
fi
e2e_ok "created $R1, images in $CEPH_POOL: $(images)"
"${CTL[@]}" node stage "$R1" "$WORK/stage-1" --fs-type=ext4 "${S[@]}" >/dev/null \
  || { tail -20 "$LOGS/plugin.log"; e2e_fail "NodeStage r1"; }
"${CTL[@]}" node publish "$R1" "$WORK/stage-1" "$WORK/pod-1" >/dev/null || e2e_fail "NodePublish r1"
DEV1=$(csi_dev_of "$R1")
if ! mountpoint -q "$WORK/pod-1" || [ ! -b "$DEV1" ]; then
  e2e_fail "r1: no mount at $WORK/pod-1 or no device ($DEV1)"
fi
e2e_ok "$R1 on $DEV1, published at $WORK/pod-1"
if fio --name=w --filename="$WORK/pod-1/fio.dat" --rw=write --bs=64k --iodepth=8 --ioengine=io_uring \
  --direct=1 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 >"$LOGS/fio-write.log" 2>&1; then
  e2e_ok "fio write+verify on the RBD volume"
else
  e2e_check_failed "fio write+verify on $R1"; tail -5 "$LOGS/fio-write.log"
fi
head -c 8M /dev/urandom >"$WORK/pod-1/data.bin"
sync -f "$WORK/pod-1/data.bin"
SUM=$(e2e_sha "$WORK/pod-1/data.bin")

e2e_step "snapshot, change the source, restore the snapshot into a new volume"
SNAP=$("${CTL[@]}" snapshot create "$R1" snap-1 "${S[@]}" | tee "$LOGS/snap.txt" | csi_field snapshot_id)
[ -n "$SNAP" ] || { cat "$LOGS/snap.txt"; e2e_fail "CreateSnapshot"; }
e2e_ok "snapshot $SNAP"
head -c 1M /dev/urandom | dd of="$WORK/pod-1/data.bin" conv=notrunc status=none
sync -f "$WORK/pod-1/data.bin"
R2=$("${CTL[@]}" volume create r2 --size=256Mi --fs-type=ext4 --params="$PARAMS" \
  --from-snapshot="$SNAP" "${S[@]}" | tee "$LOGS/create-r2.txt" | csi_field volume_id)
[ -n "$R2" ] || { cat "$LOGS/create-r2.txt"; e2e_fail "CreateVolume r2 from $SNAP"; }
"${CTL[@]}" node stage "$R2" "$WORK/stage-2" --fs-type=ext4 "${S[@]}" >/dev/null || e2e_fail "NodeStage r2"
got=$(e2e_sha "$WORK/stage-2/data.bin")
if [ "$got" = "$SUM" ]; then e2e_ok "the restore has the snapshot's data (sha256 ${SUM:0:12})"
else e2e_check_failed "restored data.bin sha256 $got, want $SUM (the source at the snapshot)"; fi
[ "$(e2e_sha "$WORK/pod-1/data.bin")" != "$SUM" ] || e2e_check_failed "the write after the snapshot did not change the source"

e2e_step "a controller without records (a replaced controller pod) restores the snapshot"
# --mode=controller on an empty data dir, as the chart's Deployment starts
# after its pod (and emptyDir) was replaced: the snapshot and volume IDs
# name their images, and --rbd-clusters-file the cluster's monitors.
CTL2=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$WORK/ctl2.sock" --timeout=180)
mkdir -p "$WORK/ctl2"
echo "e2e 127.0.0.1:${CEPH_MON_PORT_V1:-6789}" >"$WORK/clusters"
"$PLUGIN" --mode=controller --rbd --node-id=ctl2 --endpoint="unix://$WORK/ctl2.sock" \
  --data-dir="$WORK/ctl2" --metrics-address=127.0.0.1:9818 --rbd-clusters-file="$WORK/clusters" \
  --rbd-connect-timeout=5s 2>>"$LOGS/controller2.log" &
CTL2_PID=$!
ctl2_probe() { "${CTL2[@]}" identity probe >/dev/null; }
R4=
if e2e_wait_for 60 ctl2_probe; then
  R4=$("${CTL2[@]}" volume create r4 --size=256Mi --fs-type=ext4 --params="$PARAMS" \
    --from-snapshot="$SNAP" "${S[@]}" | tee "$LOGS/create-r4.txt" | csi_field volume_id)
fi
# The node has no record of r4 (another process made it): the stage
# carries the volume_context CreateVolume returned, as kubelet passes it.
ctx4=$(awk -F'"' '/^  volume_context/ {k=""} /key:/ {k=$2} /value:/ && k != "" {printf "%s%s=%s", sep, k, $2; sep=","}' \
  "$LOGS/create-r4.txt")
if [ -n "$R4" ] && "${CTL[@]}" node stage "$R4" "$WORK/stage-4" --fs-type=ext4 --context="$ctx4" "${S[@]}" >/dev/null; then
  got=$(e2e_sha "$WORK/stage-4/data.bin")
  if [ "$got" = "$SUM" ]; then e2e_ok "restored by a record-less controller: the snapshot's data (sha256 ${SUM:0:12})"
  else e2e_check_failed "r4 (restored without records) data.bin sha256 $got, want $SUM"; fi
  "${CTL[@]}" node unstage "$R4" "$WORK/stage-4" >/dev/null || e2e_check_failed "unstage r4"
  "${CTL2[@]}" volume delete "$R4" "${S[@]}" >/dev/null || e2e_check_failed "delete r4 through the record-less controller"
else
  cat "$LOGS/create-r4.txt" 2>/dev/null; tail -5 "$LOGS/controller2.log"
  e2e_check_failed "restore of $SNAP through a controller without records"
fi

# Made before the monitor goes down, staged while it is down (below).
R3=$("${CTL[@]}" volume create r3 --size=64Mi --fs-type=ext4 --params="$PARAMS" "${S[@]}" | csi_field volume_id)
[ -n "$R3" ] || e2e_check_failed "CreateVolume r3"

e2e_step "fio randwrite+verify on $R1 while the plugin is killed $KILLS time(s)"
fio --name=rw --filename="$WORK/pod-1/verify.dat" --rw=randwrite --bs=16k --iodepth=16 \
  --ioengine=io_uring --direct=1 --size=48M --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --rate=2m >"$LOGS/fio-kill.log" 2>&1 &
FIO=$!
killed=0
for i in $(seq "$KILLS"); do
  sleep 3
  kill -0 "$FIO" 2>/dev/null || { echo "note: fio done before kill $i"; break; }
  kill9_plugin
  killed=$((killed + 1))
  t0=$(date +%s.%N)
  start_plugin
  if e2e_wait_for 90 csi_readyz; then
    e2e_ok "kill $i: ready again after $(echo "$(date +%s.%N) - $t0" | bc) s"
  else
    e2e_check_failed "kill $i: not ready within 90 s: $(csi_not_ready_why)"; tail -15 "$LOGS/plugin.log"; break
  fi
  [ "$(csi_dev_of "$R1")" = "$DEV1" ] || e2e_check_failed "kill $i: $R1 moved to $(csi_dev_of "$R1")"
  # The dead process held librbd's exclusive lock: the recovery blocklists
  # it (taking over the stage lock), so a write goes through at once, not
  # after its watch times out (30 s).
  w0=$(date +%s.%N)
  if dd if=/dev/urandom of="$WORK/pod-1/probe-$i" bs=4k count=1 oflag=direct status=none; then
    w=$(echo "$(date +%s.%N) - $w0" | bc)
    if [ "$(echo "$w < 20" | bc)" = 1 ]; then e2e_ok "kill $i: a write went through ${w} s after ready"
    else e2e_check_failed "kill $i: a write took ${w} s after ready (the dead writer's lock?)"; fi
  else
    e2e_check_failed "kill $i: a write after the recovery failed"
  fi
done
[ "$killed" -gt 0 ] || e2e_check_failed "fio ended before any kill"
n=$(grep -c 'rbd cluster .*: connected' "$LOGS/plugin.log")
if [ "$n" -ge $((killed + 1)) ]; then e2e_ok "each process connected to the cluster itself ($n connections logged)"
else e2e_check_failed "$n cluster connections logged for $((killed + 1)) processes"; fi
for _ in $(seq 600); do kill -0 "$FIO" 2>/dev/null || break; sleep 1; done
if wait "$FIO"; then e2e_ok "fio randwrite+verify across $killed kill(s): 0 errors"
else e2e_check_failed "fio across the kills failed"; grep -iE 'err|verify|bad' "$LOGS/fio-kill.log" | head -8; fi

e2e_step "kill -9 of the OSD under fio randwrite+verify on $R1"
stat_ios() { awk '{print $1 + $5}' "/sys/block/${DEV1#/dev/}/stat"; }
ios_above() { [ "$(stat_ios)" -gt "$1" ]; }
fio --name=osd --filename="$WORK/pod-1/osd.dat" --rw=randwrite --bs=16k --iodepth=8 \
  --ioengine=io_uring --direct=1 --size=24M --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --rate=1m >"$LOGS/fio-osd.log" 2>&1 &
FIO=$!
start_ios=$(stat_ios)
e2e_wait_for 90 ios_above $((start_ios + 100)) || e2e_check_failed "fio did not get going before the OSD kill"
ceph_osd_kill9 || e2e_check_failed "ceph_osd_kill9"
sleep 1
a=$(stat_ios); sleep 4; b=$(stat_ios)
if [ "$a" = "$b" ]; then e2e_ok "I/O stalled with the OSD down ($a I/Os done, none in 4 s)"
else e2e_check_failed "I/O went on with the OSD killed ($a -> $b)"; fi
kill -0 "$FIO" 2>/dev/null || e2e_check_failed "fio ended while the OSD was down"
t2=$(date +%s)
ceph_osd_start 120 || e2e_check_failed "OSD restart"
if e2e_wait_for 120 ios_above "$b"; then e2e_ok "I/O resumed $(( $(date +%s) - t2 )) s after the OSD restart began"
else e2e_check_failed "no I/O completed 120 s after the OSD restart"; fi
for _ in $(seq 300); do kill -0 "$FIO" 2>/dev/null || break; sleep 1; done
if wait "$FIO"; then e2e_ok "fio randwrite+verify across the OSD kill: 0 errors"
else e2e_check_failed "fio across the OSD kill failed"; grep -iE 'err|verify|bad' "$LOGS/fio-osd.log" | head -8; fi

e2e_step "the monitor down when the plugin starts"
kill9_plugin
ceph_mon_stop || e2e_check_failed "ceph_mon_stop"
start_plugin
sleep 2
if e2e_wait_for 60 sh -c "grep -q 'recovery done' '$LOGS/plugin.log' && curl -s 'http://$METRICS/readyz' | grep -q 'not serving'"; then
  e2e_ok "not ready while the cluster is unreachable: $(csi_not_ready_why | head -c 300)"
else
  e2e_check_failed "want not ready with volumes not serving; /readyz: $(csi_not_ready_why | head -c 300)"
fi
out=$("${CTL[@]}" node stage "$R3" "$WORK/stage-3" --fs-type=ext4 "${S[@]}" 2>&1)
case $out in
  *UNAVAILABLE*) e2e_ok "NodeStage with the monitor down: ${out:0:300}" ;;
  *) e2e_check_failed "NodeStage with the monitor down: want UNAVAILABLE, got: ${out:0:300}" ;;
esac
ceph_mon_start || e2e_check_failed "ceph_mon_start"
t0=$(date +%s)
if e2e_wait_for 120 csi_readyz; then
  e2e_ok "the staged volumes recovered by themselves $(( $(date +%s) - t0 )) s after the monitor came back"
else
  e2e_check_failed "not ready 120 s after the monitor came back: $(csi_not_ready_why | head -c 300)"
fi
grep -E 'retry|retrie' "$LOGS/plugin.log" | tail -3 | sed 's/^/  | /'
if [ "$(e2e_sha "$WORK/stage-2/data.bin")" = "$SUM" ]; then e2e_ok "r2 reads back after the recovery"
else e2e_check_failed "r2's data.bin after the recovery"; fi
if echo probe >"$WORK/pod-1/after-mon.txt" && sync -f "$WORK/pod-1/after-mon.txt"; then
  e2e_ok "r1 takes writes again"
else
  e2e_check_failed "write to r1 after the recovery"
fi
if "${CTL[@]}" node stage "$R3" "$WORK/stage-3" --fs-type=ext4 "${S[@]}" >/dev/null; then
  e2e_ok "NodeStage of r3 works with the monitor back"
else
  e2e_check_failed "NodeStage r3 after the monitor came back"
fi

e2e_step "no key in logs or records"
if grep -rqF "$CEPH_KEY" "$LOGS"/plugin.log "$LOGS"/controller2.log "$WORK/data/records" "$WORK/ctl2" 2>/dev/null; then
  e2e_check_failed "the cephx key appears in the plugin log or a record"
else
  e2e_ok "the cephx key is in no plugin log and no record"
fi

e2e_step "tear down: every image gone from the pool"
"${CTL[@]}" node unstage "$R3" "$WORK/stage-3" >/dev/null || e2e_check_failed "unstage r3"
"${CTL[@]}" node unstage "$R2" "$WORK/stage-2" >/dev/null || e2e_check_failed "unstage r2"
"${CTL[@]}" node unpublish "$R1" "$WORK/pod-1" >/dev/null || e2e_check_failed "unpublish r1"
"${CTL[@]}" node unstage "$R1" "$WORK/stage-1" >/dev/null || e2e_check_failed "unstage r1"
for v in "$R3" "$R2"; do "${CTL[@]}" volume delete "$v" "${S[@]}" >/dev/null || e2e_check_failed "delete $v"; done
# The snapshot goes through the record-less controller (its ID and the
# clusters file); the plugin that made it then forgets its record.
"${CTL2[@]}" snapshot delete "$SNAP" "${S[@]}" >/dev/null || e2e_check_failed "delete snapshot $SNAP through the record-less controller"
snaps=$(timeout 60 rbd --conf "$CEPH_CONF" snap ls "$CEPH_POOL/${R1##*.}" 2>&1 | grep -c csi-snap)
if [ "$snaps" = 0 ]; then e2e_ok "the record-less controller removed $SNAP from the cluster"
else e2e_check_failed "$snaps csi-snap snapshot(s) left on ${R1##*.}"; fi
"${CTL[@]}" snapshot delete "$SNAP" "${S[@]}" >/dev/null || e2e_check_failed "delete snapshot $SNAP"
kill -TERM "$CTL2_PID"; wait "$CTL2_PID" 2>/dev/null
"${CTL[@]}" volume delete "$R1" "${S[@]}" >/dev/null || e2e_check_failed "delete $R1"
left=$(images)
if [ -z "${left// /}" ]; then e2e_ok "no image left in $CEPH_POOL"
else e2e_check_failed "images left in $CEPH_POOL: $left"; fi
kill -TERM "$PID"; wait "$PID" 2>/dev/null
ceph_stop
trap - EXIT
e2e_finish
