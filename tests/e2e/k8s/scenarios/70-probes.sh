# Scenario 7 of #19: kubelet health. 64 block volumes are made through the
# plugin's socket on the node (ublk-csi-ctl bench: CreateVolume, NodeStage,
# NodePublish, as kubelet would). (a) kill -9: the container restarts once,
# recovers all 64 and is Ready, with no liveness failure while it recovers
# (the startup probe holds liveness off until /readyz first succeeds).
# (b) SIGSTOP: the plugin answers nothing; kubelet's liveness probe (through
# the livenessprobe sidecar's CSI Probe) fails, kubelet restarts the
# container, and the new process recovers all 64 volumes.
count=${K8S_PROBE_VOLUMES:-64}
driver=$(kc get csidriver -o jsonpath='{.items[0].metadata.name}')
sock=/var/lib/kubelet/plugins/$driver/csi.sock
ctl="$E2E_BUILD_DIR/csi/ublk-csi-ctl --endpoint=unix://$sock"
dir=/var/lib/kubelet/ublk-e2e-probes  # under the Bidirectional kubelet dir
restarts() {
  kc -n "$K8S_RELEASE_NS" get pod "$(k8s_plugin_pod)" \
    -o jsonpath='{.status.containerStatuses[?(@.name=="ublk-csi")].restartCount}'
}
recovered_line() { # the last "recovery done" line of the running container
  kc -n "$K8S_RELEASE_NS" logs "$(k8s_plugin_pod)" -c ublk-csi 2>/dev/null | grep -o 'recovery done: .*' | tail -1
}
# wait_restart BEFORE TIMEOUT: the restart count moves past BEFORE, then Ready.
wait_restart() {
  local n=0
  while [ "$(restarts)" = "$1" ] && [ $n -lt "$2" ]; do sleep 1; n=$((n + 1)); done
  [ "$(restarts)" != "$1" ] && k8s_wait_plugin_ready 600
}

k8s_step "$count block volumes through the plugin's socket"
k8s_node "mkdir -p $dir && $ctl bench $dir --count=$count --prefix=probe --size=16Mi" | sed 's/^/  /' \
  || k8s_fail "ctl bench"
n=$(k8s_node "$ctl volume list" | grep -c 'value: "probe-')
[ "$n" = "$count" ] && k8s_ok "$n volumes exist" || k8s_fail "$n of $count volumes exist"

k8s_step "(a) kill -9 with $count volumes"
before=$(restarts)
t0=$(date +%s%N)
k8s_node "pkill -9 -x ublk-csi" >/dev/null || k8s_fail "no ublk-csi process to kill"
if wait_restart "$before" 300; then
  echo "measure: kill -9 to Ready with $count volumes: $(e2e_secs "$t0")s"
else
  k8s_check_failed "not Ready within 600 s after kill -9"
fi
[ "$(restarts)" = $((before + 1)) ] && k8s_ok "restarted once" || k8s_check_failed "restart count $before -> $(restarts)"
line=$(recovered_line)
echo "  $line"
case "$line" in *" $count recovered"*" 0 failed"*) k8s_ok "all $count volumes recovered" ;;
  *) k8s_check_failed "recovery: '$line'" ;; esac
# The dead process's own probe may fail before kubelet sees it exit: count
# from the new container's start.
lf=$(k8s_liveness_failures "$(k8s_plugin_started)")
[ "$lf" = 0 ] && k8s_ok "no liveness failure while recovering" || k8s_check_failed "$lf liveness failure(s) while recovering"

k8s_step "(b) SIGSTOP: kubelet's liveness probe must restart the plugin"
before=$(restarts)
stopped=$(date +%s)
t0=$(date +%s%N)
k8s_node "pkill -STOP -x ublk-csi" >/dev/null || k8s_fail "no ublk-csi process to stop"
# livenessProbe: 10 s period, 6 failures; then the restart and recovery.
if wait_restart "$before" 300; then
  echo "measure: SIGSTOP to Ready again (liveness restart + recovery): $(e2e_secs "$t0")s"
  k8s_ok "kubelet restarted the stopped plugin"
else
  k8s_node "pkill -CONT -x ublk-csi" >/dev/null
  k8s_check_failed "the stopped plugin was not restarted within 300 s"
fi
lf=$(k8s_liveness_failures "$stopped")
[ "$lf" -gt 0 ] && k8s_ok "the restart came from the liveness probe ($lf liveness failure(s))" \
  || k8s_check_failed "no liveness failure in kubelet's log: who restarted it?"
line=$(recovered_line)
echo "  $line"
case "$line" in *" $count recovered"*" 0 failed"*) k8s_ok "all $count volumes recovered after the liveness restart" ;;
  *) k8s_check_failed "recovery after the liveness restart: '$line'" ;; esac

k8s_step "remove the $count volumes"
k8s_node "$ctl volume list" | awk -v dir="$dir" -v ctl="$ctl" '
  /volume_id:/ { id = $2; gsub(/"/, "", id) }
  /value: "probe-/ { name = $2; gsub(/"/, "", name)
    printf "%s node unpublish %s %s/publish/%s >/dev/null && %s node unstage %s %s/stage/%s >/dev/null && %s volume delete %s >/dev/null || echo FAILED %s\n", \
      ctl, id, dir, name, ctl, id, dir, name, ctl, id, name }' > "$K8S_RUN/probes-cleanup.sh"
out=$(K8S_NODE_TIMEOUT=600 k8s_node "sh $K8S_RUN/probes-cleanup.sh; $ctl volume list | grep -c 'value: \"probe-' || true")
echo "$out" | grep FAILED | head -3
[ "$(echo "$out" | tail -1)" = 0 ] && k8s_ok "every volume removed" || k8s_check_failed "left: $(echo "$out" | tail -1)"
k8s_result
