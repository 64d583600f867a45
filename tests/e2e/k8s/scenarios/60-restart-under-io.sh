# Scenario 6 of #19: while one pod runs fio with verify on a mounted volume
# and another on a block volume, the plugin pod is deleted K8S_POD_DELETES
# times (default 3) and the plugin process killed with SIGKILL
# K8S_PLUGIN_KILLS times (default 3). fio: 0 errors; the application pods are
# never restarted; no FailedMount event.
deletes=${K8S_POD_DELETES:-3}
kills=${K8S_PLUGIN_KILLS:-3}
kc create namespace "$K8S_NS" >/dev/null 2>&1
k8s_pvc io-fs 512Mi Filesystem && k8s_pvc io-blk 512Mi Block || k8s_fail "create PVCs"
# fio rounds (write 32 MiB, then verify it) until the host writes /ctl/stop
# on the node (after the last restart), or at the latest until END (epoch
# seconds, K8S_IO_SECONDS from now, default 1800: a cap, not the plan).
K8S_POD_CTL_DIR=/run/ublk-e2e-ctl
k8s_node "mkdir -p $K8S_POD_CTL_DIR && rm -f $K8S_POD_CTL_DIR/stop" >/dev/null || k8s_fail "node control dir"
end=$(( $(date +%s) + ${K8S_IO_SECONDS:-1800} ))
loop='n=0; while [ ! -e /ctl/stop ] && [ "$(date +%s)" -lt END ]; do fio --name=r --filename=TARGET --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 --rate=2m > /tmp/fio.log 2>&1 || { cat /tmp/fio.log; echo FIO-FAILED; exit 1; }; n=$((n + 1)); echo "round $n: $(grep -o "err= *[0-9]*" /tmp/fio.log | head -1)"; done; echo "FIO-OK rounds=$n"'
loop=${loop//END/$end}
k8s_pod io-fs io-fs Filesystem "${loop//TARGET//data/fio.dat}" && k8s_pod io-blk io-blk Block "${loop//TARGET//dev/xvda}" \
  || k8s_fail "create fio pods"
for p in io-fs io-blk; do
  k8s_wait_pod_phase "$K8S_NS" $p Running 300 || { k8s_explain "$K8S_NS" $p; k8s_fail "$p not Running"; }
done
k8s_ok "both fio pods Running"
sleep 10
for i in $(seq "$deletes"); do
  pod=$(k8s_plugin_pod)
  k8s_step "delete plugin pod $pod ($i of $deletes)"
  t0=$(date +%s%N)
  kc -n "$K8S_RELEASE_NS" delete pod "$pod" --wait=false >/dev/null || k8s_check_failed "delete $pod"
  sleep 3
  if k8s_wait_plugin_ready 600; then
    echo "measure: plugin pod delete to Ready again: $(e2e_secs "$t0")s"
  else
    k8s_check_failed "the plugin was not Ready within 600 s after pod delete $i"
  fi
  sleep 5
done
kills_from=$(date +%s)
for i in $(seq "$kills"); do
  k8s_step "kill -9 the plugin process ($i of $kills)"
  # Wait until the kubelet has seen the kill (restart count up), then Ready:
  # right after the kill the pod still reads Ready.
  pod=$(k8s_plugin_pod)
  before=$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="ublk-csi")].restartCount}')
  t0=$(date +%s%N)
  k8s_node "pkill -9 -x ublk-csi" >/dev/null || k8s_check_failed "no ublk-csi process to kill"
  n=0
  while [ "$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="ublk-csi")].restartCount}')" = "$before" ] \
        && [ $n -lt 300 ]; do sleep 1; n=$((n + 1)); done
  if k8s_wait_plugin_ready 600; then
    echo "measure: plugin kill -9 to Ready again: $(e2e_secs "$t0")s"
  else
    k8s_check_failed "the plugin was not Ready within 600 s after kill $i"
  fi
  sleep 5
done
# Reported, not failed: under fio a probe may miss its timeout now and then;
# what must not happen is a liveness restart (the restart counts above).
echo "measure: liveness probe failures during the kills: $(k8s_liveness_failures "$kills_from")"
# fio must still be running: the restarts happened under I/O.
for p in io-fs io-blk; do
  phase=$(kc -n "$K8S_NS" get pod $p -o jsonpath='{.status.phase}')
  [ "$phase" = Running ] || k8s_check_failed "$p is $phase before the stop: the restarts were not all under I/O"
done
k8s_step "stop fio after its current round and check"
k8s_node "touch $K8S_POD_CTL_DIR/stop" >/dev/null || k8s_check_failed "write the stop file"
unset K8S_POD_CTL_DIR
for p in io-fs io-blk; do
  k8s_wait_pod_phase "$K8S_NS" $p Succeeded 600 || k8s_check_failed "$p did not succeed"
  out=$(kc -n "$K8S_NS" logs $p 2>&1)
  echo "$out" | tail -4 | sed "s/^/  $p: /"
  grep -q FIO-OK <<< "$out" && ! grep -q FIO-FAILED <<< "$out" && k8s_ok "$p: fio verify passed through every restart" \
    || k8s_check_failed "$p: fio failed"
  r=$(kc -n "$K8S_NS" get pod $p -o jsonpath='{.status.containerStatuses[0].restartCount}')
  [ "$r" = 0 ] && k8s_ok "$p never restarted" || k8s_check_failed "$p restarted $r times"
done
fm=$(kc -n "$K8S_NS" get events --field-selector reason=FailedMount -o name 2>/dev/null | wc -l)
[ "$fm" = 0 ] && k8s_ok "no FailedMount event" || { k8s_check_failed "$fm FailedMount events"; kc -n "$K8S_NS" get events --field-selector reason=FailedMount; }
kc -n "$K8S_NS" delete pod io-fs io-blk --wait=true >/dev/null
kc -n "$K8S_NS" delete pvc io-fs io-blk --wait=true --timeout=180s >/dev/null || k8s_check_failed "delete PVCs"
k8s_result
