# Scenario 2 of #19: a filesystem PVC of the chart's StorageClass, a pod
# writing to it; the pod is deleted and a new one reads the data back.
kc create namespace "$K8S_NS" >/dev/null 2>&1
k8s_pvc fs-pvc 256Mi Filesystem || k8s_fail "create PVC"
k8s_step "writer pod"
t0=$(date +%s%N)
k8s_pod writer fs-pvc Filesystem 'head -c 16M /dev/urandom > /data/blob && sync && sha256sum /data/blob > /data/blob.sum && cat /data/blob.sum && df -h /data && sleep 3600' \
  || k8s_fail "create writer pod"
k8s_wait_pod_phase "$K8S_NS" writer Running 300 || { k8s_explain "$K8S_NS" writer; k8s_fail "writer pod not Running"; }
echo "measure: PVC create to pod Running (bind, stage, publish): $(e2e_secs "$t0")s"
pv=$(kc -n "$K8S_NS" get pvc fs-pvc -o jsonpath='{.spec.volumeName}')
[ "$(kc -n "$K8S_NS" get pvc fs-pvc -o jsonpath='{.status.phase}')" = Bound ] && k8s_ok "PVC bound to $pv" || k8s_check_failed "PVC not Bound"
n=0
until kc -n "$K8S_NS" logs writer 2>/dev/null | grep -q '/data/blob'; do
  [ $n -lt 60 ] || k8s_fail "writer did not write within 60 s: $(kc -n "$K8S_NS" logs writer 2>&1 | tail -3)"
  sleep 1; n=$((n + 1))
done
sum=$(kc -n "$K8S_NS" logs writer | awk '/\/data\/blob/ {print $1; exit}')
kc -n "$K8S_NS" logs writer | sed 's/^/  writer: /'
# The node sees a ublk block device mounted for the pod.
k8s_node "grep ublkb /proc/self/mountinfo | grep -c kubelet" | sed 's/^/  node: ublk mounts under kubelet: /'
k8s_node "grep -q 'ublkb.* .*kubernetes.io~csi.*/mount ' /proc/self/mountinfo || grep -q ublkb /proc/self/mountinfo" \
  && k8s_ok "a /dev/ublkb device is mounted on the node" || k8s_check_failed "no ublk device mounted on the node"

k8s_step "delete the writer, read back in a new pod"
kc -n "$K8S_NS" delete pod writer --wait=true >/dev/null || k8s_check_failed "delete writer"
k8s_pod reader fs-pvc Filesystem 'sha256sum -c /data/blob.sum && echo READ-OK' || k8s_fail "create reader"
k8s_wait_pod_phase "$K8S_NS" reader Succeeded 300 || { k8s_explain "$K8S_NS" reader; k8s_check_failed "reader did not succeed"; }
out=$(kc -n "$K8S_NS" logs reader 2>&1)
echo "$out" | sed 's/^/  reader: /'
grep -q READ-OK <<< "$out" && k8s_ok "data read back intact (sha256 $sum)" || k8s_check_failed "checksum mismatch after pod restart"
kc -n "$K8S_NS" delete pod reader --wait=true >/dev/null
kc -n "$K8S_NS" delete pvc fs-pvc --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete PVC"
# reclaimPolicy Delete: the PV goes, and the plugin's volume with it.
if k8s_wait_gone 60 "pv/$pv"; then k8s_ok "PV $pv deleted with its PVC"
else k8s_check_failed "PV $pv still exists 60 s after the PVC was deleted"; fi
k8s_result
