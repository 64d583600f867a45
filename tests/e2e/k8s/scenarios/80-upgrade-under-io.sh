# Scenario 8 of #19: `helm upgrade` that changes a value (plugin.logLevel)
# while one pod runs fio with verify on a mounted volume and another on a
# block volume. The changed pod template rolls the DaemonSet: the old plugin
# pod goes, a new one with the new value comes. fio: 0 errors; the
# application pods are never restarted; no FailedMount event.
k8s_io_start up
sleep 10
old=$(k8s_plugin_pod)
level=$(kc -n "$K8S_RELEASE_NS" get ds -l app.kubernetes.io/name=ublk-csi \
  -o jsonpath='{.items[0].spec.template.spec.containers[?(@.name=="ublk-csi")].args}' | grep -o 'log-level=[a-z]*' | cut -d= -f2)
new=debug
[ "$level" = debug ] && new=info
k8s_step "helm upgrade --set plugin.logLevel=$new (was ${level:-?}) under I/O"
t0=$(date +%s%N)
"$HELM" upgrade "$K8S_RELEASE" "$E2E_SRC_DIR/charts/ublk-csi" -n "$K8S_RELEASE_NS" --reuse-values \
  --set plugin.logLevel=$new --wait --timeout 15m >/dev/null || k8s_fail "helm upgrade"
# helm --wait returns at once for a one-node DaemonSet (maxUnavailable 1):
# wait until the old pod is gone and the new one is Ready.
deadline=$(( $(date +%s) + 600 ))
while [ "$(k8s_plugin_pod)" = "$old" ] && [ "$(date +%s)" -lt $deadline ]; do sleep 1; done
pod=$(k8s_plugin_pod)
[ -n "$pod" ] && [ "$pod" != "$old" ] && k8s_ok "the DaemonSet rolled: $old -> $pod" \
  || k8s_check_failed "the plugin pod did not change ($old -> ${pod:-none})"
if k8s_wait_plugin_ready 600; then
  echo "measure: helm upgrade to all Ready: $(e2e_secs "$t0")s"
else
  k8s_check_failed "the plugin was not Ready within 600 s after the upgrade"
fi
args=$(kc -n "$K8S_RELEASE_NS" get pod "$(k8s_plugin_pod)" -o jsonpath='{.spec.containers[?(@.name=="ublk-csi")].args}')
case "$args" in *"--log-level=$new"*) k8s_ok "the new plugin pod runs with --log-level=$new" ;;
  *) k8s_check_failed "the new plugin pod's args: $args" ;; esac
rev=$("$HELM" history "$K8S_RELEASE" -n "$K8S_RELEASE_NS" -o json | python3 -c 'import json,sys; h=json.load(sys.stdin)[-1]; print(h["revision"], h["status"])')
echo "  release: revision $rev"
case "$rev" in *" deployed") k8s_ok "release deployed (revision ${rev% *})" ;; *) k8s_check_failed "release: $rev" ;; esac
# A few more rounds on the new plugin, then check.
sleep 20
k8s_io_running up
k8s_step "stop fio after its current round and check"
k8s_io_stop_and_check up
k8s_result
