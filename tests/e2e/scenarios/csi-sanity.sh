# csi-sanity: the CSI conformance suite (kubernetes-csi/csi-test's csi-sanity,
# v5.4.0) against the real plugin: ublk backend, real mounts, mkfs. The
# suite's default 10 GiB volumes live as sparse files on a tmpfs data dir
# sized for them (CreateVolume compares each request with the free space;
# nothing is written beyond mkfs metadata). Staging and target paths are
# under the scenario's tmpfs scratch dir. Passes only with 0 failed specs,
# the plugin still running afterwards, and nothing left behind by the suite
# (no volume, no /dev/ublkbN, no mount, no backing file).
#
# The binary: the host-side step (lib/prepare-csi-sanity.sh) takes
# CSI_SANITY=/path/to/csi-sanity, else unpacks
# csi-sanity-v5.4.0-linux-amd64.tar.xz from ../shared/k8s (or
# CSI_SANITY_TARBALL) into the build dir's e2e-tools/; with neither it SKIPs.
# Host knobs (passed on by that step): CSI_SANITY_ACCESS_TYPES, the suite's
# volume access types to run one after the other (default "mount block"),
# and CSI_SANITY_TIMEOUT, the suite's deadline per access type in seconds.
#
# RBD mode (CSI_SANITY_RBD=1, set by scenarios/csi-sanity-rbd.sh, which
# sources this file): the single-node Ceph of lib/ceph.sh, the plugin with
# --rbd, and the suite given the StorageClass parameters
# (--csi.testvolumeparameters: backend=rbd, clusterID, monitors, pool) and
# the cephx user and key as every call's secrets (--csi.secrets). Also
# checked afterwards: no image left in the pool or its trash. The suite
# runs once per driver in CSI_SANITY_RBD_DRIVERS (default both):
# ublk.csi.io (the plugin's own endpoint, Controller and Node, with RBD
# StorageClass parameters) and rbd.ublk.csi.io as the chart deploys it: the
# node plugin's --rbd-endpoint (Identity, Node) and a second process,
# `ublk-csi --mode=controller --rbd`, as the controller endpoint
# (--csi.controllerendpoint).
# e2e-timeout: 900
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
# e2e-prepare: lib/prepare-csi-sanity.sh
. "$E2E_LIB"

[ -n "${CSI_SANITY:-}" ] && [ -x "$CSI_SANITY" ] \
  || e2e_skip "no csi-sanity binary (CSI_SANITY='${CSI_SANITY:-}'; the host-side step sets it)"

PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/sanity
SOCK=$WORK/csi.sock
DATA=$WORK/data
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
# The suite's own deadline leaves time for its report and our checks.
SUITE_TIMEOUT=${CSI_SANITY_TIMEOUT:-360}

mkdir -p "$DATA"
# tmpfs pages are only used where written: 64 GiB of room costs the guest's
# RAM only the filesystem metadata that mkfs writes.
mount -t tmpfs -o size=64G,mode=0700 sanity-data "$DATA" || e2e_fail "tmpfs on $DATA"
modprobe ublk_drv 2>/dev/null

PLUGIN_ARGS=()
SANITY_ARGS=()
if [ -n "${CSI_SANITY_RBD:-}" ]; then
  . "$SRC_DIR/tests/e2e/lib/ceph.sh"
  e2e_step "start a single-node Ceph"
  ceph_start "$E2E_DATA_DIR/ceph" || e2e_fail "ceph_start failed"
  trap 'ceph_stop >/dev/null 2>&1' EXIT
  # One monitor address (msgr v1), as in rbd-csi. The key goes in every
  # secrets map csi-sanity has: the plugin needs it for CreateVolume,
  # DeleteVolume, the snapshot calls, ControllerExpandVolume and NodeStage.
  printf 'backend: rbd\nclusterID: e2e\nmonitors: "127.0.0.1:%s"\npool: %s\n' \
    "${CEPH_MON_PORT_V1:-6789}" "$CEPH_POOL" >"$WORK/params.yaml"
  (umask 077
   for call in CreateVolume DeleteVolume ControllerPublishVolume ControllerUnpublishVolume \
     ControllerValidateVolumeCapabilities NodeStageVolume NodePublishVolume CreateSnapshot \
     DeleteSnapshot ListSnapshots ControllerExpandVolume ControllerModifyVolume; do
     printf '%sSecret:\n  userID: %s\n  userKey: "%s"\n' "$call" "$CEPH_USER" "$CEPH_KEY"
   done >"$WORK/secrets.yaml")
  PLUGIN_ARGS=(--rbd --rbd-connect-timeout=5s --rbd-endpoint="unix://$WORK/rbd.sock")
  SANITY_ARGS=(--csi.testvolumeparameters="$WORK/params.yaml" --csi.secrets="$WORK/secrets.yaml")
fi

e2e_step "plugin: --backend=ublk --mounter=real ${PLUGIN_ARGS[*]}, data dir on a 64 GiB tmpfs"
"$PLUGIN" --node-id=e2e-sanity --endpoint="unix://$SOCK" --data-dir="$DATA" \
  --metrics-address=127.0.0.1:0 --backend=ublk --mounter=real --log-level=info "${PLUGIN_ARGS[@]}" \
  2>"$E2E_RESULT_DIR/plugin.log" &
PID=$!
# Under TCG on a loaded host one ublk-csi-ctl start (gRPC's libraries over 9p)
# took longer than 5 s: wait for the socket, then probe with room.
e2e_wait_for 120 test -S "$SOCK" && timeout 60 "${CTL[@]}" identity probe >/dev/null 2>&1 \
  || { tail -30 "$E2E_RESULT_DIR/plugin.log"; e2e_fail "plugin not ready after 120 s"; }
e2e_ok "plugin ready (pid $PID)"

DRIVERS=ublk.csi.io
CPID=
if [ -n "${CSI_SANITY_RBD:-}" ]; then
  DRIVERS=${CSI_SANITY_RBD_DRIVERS:-ublk.csi.io rbd.ublk.csi.io}
  CTRL_SOCK=$WORK/controller.sock
  CTRL_DATA=$WORK/controller-data
  CTRL_CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$CTRL_SOCK")
  e2e_step "controller of rbd.ublk.csi.io: --mode=controller --rbd"
  mkdir -p "$CTRL_DATA"
  "$PLUGIN" --mode=controller --rbd --rbd-connect-timeout=5s --endpoint="unix://$CTRL_SOCK" \
    --data-dir="$CTRL_DATA" --metrics-address=127.0.0.1:0 --log-level=info \
    2>"$E2E_RESULT_DIR/controller.log" &
  CPID=$!
  e2e_wait_for 120 test -S "$CTRL_SOCK" && timeout 60 "${CTRL_CTL[@]}" identity probe >/dev/null 2>&1 \
    || { tail -30 "$E2E_RESULT_DIR/controller.log"; e2e_fail "controller not ready after 120 s"; }
  e2e_ok "controller ready (pid $CPID)"
fi

# counts LOG: "Passed Failed Pending Skipped" of ginkgo's closing line
# ("SUCCESS! -- 67 Passed | 0 Failed | 1 Pending | 24 Skipped").
counts() {
  sed -n 's/.*-- \([0-9]*\) Passed | \([0-9]*\) Failed | \([0-9]*\) Pending | \([0-9]*\) Skipped.*/\1 \2 \3 \4/p' "$1" | tail -1
}

# failures LOG: "FAILED <spec>" and "  why: <assertion>" for each failed spec.
failures() {
  awk '/^[^ ]+ \[(FAILED|PANICKED|TIMEDOUT)\] \[[0-9.]+ seconds\]/ { getline name; print "FAILED " name; inblk = 1; why = ""; next }
       inblk && /^  \[(FAILED|PANICKED|TIMEDOUT)\] / && !/ in \[/ { sub(/^  /, ""); why = $0; grab = 1; next }
       grab && /^  In \[/ { print "  why: " why; grab = 0; inblk = 0; next }
       grab { gsub(/^ +/, ""); if (length(why) < 400) why = why " " $0 }' "$1"
}

# run_suite ACCESS LOG DIR: one csi-sanity pass on the endpoints in
# EP_ARGS; sets rc passed failed pending skipped.
run_suite() {
  local access=$1 log=$2 dir=$3 t0 t1
  mkdir -p "$dir"   # csi-sanity makes (and removes) the two dirs in it
  args=("${EP_ARGS[@]}"
        --csi.stagingdir="$dir/staging" --csi.mountdir="$dir/target"
        --csi.testvolumeaccesstype="$access" --csi.testnodevolumeattachlimit
        --ginkgo.no-color --ginkgo.timeout="${SUITE_TIMEOUT}s"
        --ginkgo.junit-report="${log%.log}.junit.xml" "${SANITY_ARGS[@]}")
  echo "  | $CSI_SANITY ${args[*]}"
  t0=$(e2e_t)
  timeout $((SUITE_TIMEOUT + 30)) "$CSI_SANITY" "${args[@]}" > "$log" 2>&1
  rc=$?
  t1=$(e2e_t)
  read -r passed failed pending skipped <<< "$(counts "$log")"
  grep -m1 -E '^Random Seed: [0-9]+' "$log" | sed 's/^/  | (rerun this order: --ginkgo.seed) /'
  grep -m1 '^Ran [0-9]* of [0-9]* Specs' "$log" | sed 's/^/  | /'
  echo "  | $access: Passed=${passed:-?} Failed=${failed:-?} Pending=${pending:-?} Skipped=${skipped:-?}," \
       "exit $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", b - a}') s"
}

# client_connect_race LOG: true when the one failed spec is csi-sanity's own
# connect ("Connection timed out" after its 60 s) and every other spec
# passed. csi-test v5.4.0's utils.Connect (grpc.Dial, then a loop
# `WaitForStateChange(ctx, GetState())` after a separate `GetState() ==
# Ready` check) waits on a channel that turned READY between those two reads
# as if it were still connecting, until the 60 s deadline: the connection is
# up and the plugin has nothing to answer or log (later csi-test versions
# check READY before each wait). The next spec connects again and passes.
# Seen once in six guest suite runs (issue 16); the plugin's side under the
# same conditions is covered by plugin_server_test
# (FreshConnectionsUnderChurnForkAndSelfDialAreServedPromptly).
client_connect_race() {
  [ "${failed:-x}" = 1 ] && [ "${passed:-0}" -gt 0 ] && grep -q 'Connection timed out' "$1"
}

for drv in $DRIVERS; do
  if [ "$drv" = rbd.ublk.csi.io ]; then
    tag=rbd-driver-
    EP_ARGS=(--csi.endpoint="unix://$WORK/rbd.sock" --csi.controllerendpoint="unix://$CTRL_SOCK")
  else
    tag=
    EP_ARGS=(--csi.endpoint="unix://$SOCK")
  fi
  for access in ${CSI_SANITY_ACCESS_TYPES:-mount block}; do
    e2e_step "$CSI_SANITY_VERSION --csi.testvolumeaccesstype=$access${tag:+ (driver $drv)}"
    log=$E2E_RESULT_DIR/csi-sanity-$tag$access.log
    run_suite "$access" "$log" "$WORK/$tag$access"
    if [ "$rc" != 0 ] && client_connect_race "$log"; then
      # Shown, never hidden: the failed spec, then proof that the plugin
      # answers a new connection now, then one more pass that must be clean.
      failures "$log" | head -10 | sed 's/^/  | /'
      t0=$(e2e_t)
      if timeout 60 "${CTL[@]}" identity probe >/dev/null 2>&1; then
        echo "  | $tag$access: csi-sanity's client gave up on its first connection while the other" \
             "$passed specs passed; a new connection to the plugin completes a call in" \
             "$(awk -v a="$t0" -v b="$(e2e_t)" 'BEGIN {printf "%.1f", b - a}') s: csi-test v5.4.0's" \
             "connect race (see client_connect_race); running $access once more"
        mv "$log" "${log%.log}.connect-race.log"
        # csi-sanity refuses to start over dirs a failed spec left (mkdir).
        rmdir "$WORK/$tag$access/staging" "$WORK/$tag$access/target" 2>/dev/null
        run_suite "$access" "$log" "$WORK/$tag$access"
      fi
    fi
    if [ "$rc" = 0 ] && [ "${failed:-x}" = 0 ] && [ "${passed:-0}" -gt 0 ]; then
      e2e_ok "$tag$access: 0 specs failed"
    else
      # Each failed spec: its name, then its assertion (the plugin's message,
      # the gRPC code it got and the one the spec wants) on one line.
      failures "$log" | head -60 | sed 's/^/  | /'
      [ -n "$passed" ] || tail -40 "$log" | sed 's/^/  | /'
      e2e_check_failed "$tag$access: csi-sanity exited $rc with ${failed:-?} failed spec(s) (log: e2e-logs/.../share/$(basename "$log"))"
    fi
  done
done

e2e_step "after the suite: the plugin is alive and nothing is left behind"
if kill -0 "$PID" 2>/dev/null && timeout 60 "${CTL[@]}" identity probe >/dev/null 2>&1; then
  e2e_ok "plugin still running and answering"
else
  e2e_check_failed "plugin died or stopped answering during the suite"
  tail -30 "$E2E_RESULT_DIR/plugin.log"
fi
left=$(timeout 30 "${CTL[@]}" status 2>&1 | tail -n +2)
[ -z "$left" ] && e2e_ok "no volume left" || { e2e_check_failed "volumes left:"; echo "$left" | sed 's/^/  | /'; }
devs=$(ls /dev/ublkb* 2>/dev/null)
[ -z "$devs" ] && e2e_ok "no /dev/ublkbN left" || e2e_check_failed "devices left: $devs"
mnts=$(awk -v w="$WORK/" 'index($5, w) == 1 && $5 != "'"$DATA"'" {print $5}' /proc/self/mountinfo)
[ -z "$mnts" ] && e2e_ok "no mount left under $WORK" || e2e_check_failed "mounts left: $mnts"
# recovery-attempts is the crash-loop guard's counter (csi/crash_loop_guard.h):
# the plugin's own state, not a volume's.
files=$(find "$DATA" -type f ! -path "$DATA/recovery-attempts" 2>/dev/null | head -20)
[ -z "$files" ] && e2e_ok "no file left in the data dir (backing files, records)" || { e2e_check_failed "files left in the data dir:"; echo "$files" | sed 's/^/  | /'; }
if [ -n "$CPID" ]; then
  if kill -0 "$CPID" 2>/dev/null && timeout 60 "${CTRL_CTL[@]}" identity probe >/dev/null 2>&1; then
    e2e_ok "controller still running and answering"
  else
    e2e_check_failed "controller died or stopped answering during the suite"
    tail -30 "$E2E_RESULT_DIR/controller.log"
  fi
  files=$(find "$CTRL_DATA" -type f 2>/dev/null | head -20)
  [ -z "$files" ] && e2e_ok "no file left in the controller's data dir" || { e2e_check_failed "files left in the controller's data dir:"; echo "$files" | sed 's/^/  | /'; }
fi
if [ -n "${CSI_SANITY_RBD:-}" ]; then
  imgs=$(timeout 60 rbd --conf "$CEPH_CONF" ls "$CEPH_POOL" 2>&1 | tr '\n' ' ')
  trash=$(timeout 60 rbd --conf "$CEPH_CONF" trash ls "$CEPH_POOL" 2>&1 | tr '\n' ' ')
  if [ -z "${imgs// /}${trash// /}" ]; then e2e_ok "no image left in $CEPH_POOL or its trash"
  else e2e_check_failed "left in $CEPH_POOL: images: ${imgs:-none}; trash: ${trash:-none}"; fi
fi

kill -TERM "$PID" $CPID
e2e_wait_for 30 sh -c "! kill -0 $PID" || e2e_check_failed "plugin still running 30 s after SIGTERM"
wait "$PID" $CPID 2>/dev/null
echo "  | plugin log: $(grep -cE '^[WE][0-9]+ ' "$E2E_RESULT_DIR/plugin.log") warning/error lines"
[ -z "$CPID" ] || echo "  | controller log: $(grep -cE '^[WE][0-9]+ ' "$E2E_RESULT_DIR/controller.log") warning/error lines"
umount "$DATA" 2>/dev/null
if [ -n "${CSI_SANITY_RBD:-}" ]; then
  ceph_stop
  trap - EXIT
fi
e2e_finish
