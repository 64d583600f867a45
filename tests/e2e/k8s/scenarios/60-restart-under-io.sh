# Scenario 6 of #19: while one pod runs fio with verify on a mounted volume
# and another on a block volume, the plugin pod is deleted K8S_POD_DELETES
# times (default 3) and the plugin process killed with SIGKILL
# K8S_PLUGIN_KILLS times (default 3). fio: 0 errors; the application pods are
# never restarted; no FailedMount event.
deletes=${K8S_POD_DELETES:-3}
kills=${K8S_PLUGIN_KILLS:-3}
k8s_io_start io
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
k8s_io_running io
k8s_step "stop fio after its current round and check"
k8s_io_stop_and_check io
k8s_result
