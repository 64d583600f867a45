# plugin-mount-namespace: ublk-csi runs in its own mount namespace (unshare -m,
# as in a container) whose view of the kubelet dir is a shared peer of the
# guest's initial namespace (the chart's Bidirectional propagation), so its
# stage mount of an ext4 volume shows up in the initial namespace. The plugin
# is killed with SIGKILL while a writer runs there: the kill must complete
# (no hang tearing down the plugin's namespace over a mount of a device only
# it serves), the mount in the initial namespace must stay, and after a
# restart (again in a fresh namespace) the writer finishes and the data
# checks out. Repeated twice.
# e2e-once: mount propagation between namespaces
# e2e-timeout: 480
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl ublk/ublk-tool
. "$E2E_LIB"

PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/mntns
KUBELET=$WORK/kubelet   # shared with the plugin's namespace
SOCK=$WORK/csi.sock
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$WORK/data" "$KUBELET"
mount --bind "$KUBELET" "$KUBELET"
mount --make-shared "$KUBELET"
PID=

start_plugin() {
  unshare -m --propagation unchanged -- "$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" \
    --data-dir="$WORK/data" --metrics-address=127.0.0.1:9812 --backend=ublk --mounter=real \
    2>>"$WORK/plugin.log" &
  PID=$!
}
wait_ready() { csi_wait_ready "$1"; }

e2e_step "start the plugin in its own mount namespace"
modprobe ublk_drv 2>/dev/null
start_plugin
wait_ready 30 || { tail -20 "$WORK/plugin.log"; e2e_fail "plugin not ready"; }
[ "$(readlink /proc/$PID/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] \
  && e2e_ok "plugin mount namespace $(readlink /proc/$PID/ns/mnt) differs from ours" \
  || e2e_check_failed "plugin runs in our mount namespace"

VOL=$("${CTL[@]}" volume create v --size=512Mi --fs-type=ext4 | csi_field volume_id)
STAGE=$KUBELET/stage
"${CTL[@]}" node stage "$VOL" "$STAGE" --fs-type=ext4 || e2e_fail "stage"
mountpoint -q "$STAGE" && e2e_ok "the plugin's stage mount is visible in the initial namespace" \
  || e2e_fail "stage mount not visible in the initial namespace (propagation)"
head -c 16M /dev/urandom > "$WORK/pat"
WANT=$(e2e_sha "$WORK/pat")

for round in 1 2; do
  e2e_step "round $round: writer in the initial namespace, SIGKILL the plugin"
  ( for i in $(seq 8); do cp "$WORK/pat" "$STAGE/f$round.$i" && sync; done ) &
  W=$!
  sleep 1
  kill -KILL "$PID"
  if e2e_wait_for 20 sh -c "! kill -0 $PID 2>/dev/null"; then
    e2e_ok "plugin gone after SIGKILL (its namespace torn down without hanging)"
  else
    e2e_check_failed "plugin still not reaped 20 s after SIGKILL: $(cat /proc/$PID/stack 2>/dev/null | head -5)"
  fi
  wait "$PID" 2>/dev/null
  mountpoint -q "$STAGE" && e2e_ok "mount still there" || e2e_check_failed "mount gone"
  start_plugin
  if ! wait_ready 60; then
    e2e_check_failed "round $round: not ready 60 s after restart"
    "$BUILD_DIR/ublk/ublk-tool" info --dev_id=0 | grep state
    echo "plugin stack:"; cat "/proc/$PID/stack" 2>/dev/null | head -12
    tail -30 "$WORK/plugin.log"
    cp "$WORK/plugin.log" "$E2E_RESULT_DIR/" 2>/dev/null
    e2e_finish
  fi
  if e2e_wait_for 120 sh -c "! kill -0 $W 2>/dev/null"; then
    wait "$W" && e2e_ok "writer finished" || e2e_check_failed "writer failed"
  else
    e2e_check_failed "writer still blocked 120 s after the restart"
  fi
  echo 3 > /proc/sys/vm/drop_caches
  for i in $(seq 8); do
    [ "$(e2e_sha "$STAGE/f$round.$i")" = "$WANT" ] || e2e_check_failed "f$round.$i differs"
  done
  e2e_ok "round $round: 8 files of 16 MiB read back intact"
done

e2e_step "clean up"
"${CTL[@]}" node unstage "$VOL" "$STAGE" || e2e_check_failed "unstage"
kill -TERM "$PID"; wait "$PID" 2>/dev/null
grep -o "recovery done: .*" "$WORK/plugin.log"
e2e_finish
