# Scenario 4 of #19: a filesystem PVC grown through Kubernetes the way the
# plugin advertises expansion. ONLINE (a kernel with UPDATE_SIZE, 6.16+): the
# pod keeps running and sees the new size. OFFLINE (6.12): the resizer's
# ControllerExpandVolume is refused while the volume is published, so the
# pod is deleted as the Kubernetes docs say; once the controller part is
# done, a new pod's NodeStage gives the device the grown size and
# NodeExpandVolume grows the filesystem. Either way: the size the pod sees
# grows, and the data written before is intact.
kc create namespace "$K8S_NS" >/dev/null 2>&1
sock=/var/lib/kubelet/plugins/$(kc get csidriver -o jsonpath='{.items[0].metadata.name}')/csi.sock
caps=$(k8s_node "$E2E_BUILD_DIR/csi/ublk-csi-ctl --endpoint=unix://$sock identity caps")
case "$caps" in
  *ONLINE*) mode=online ;;
  *OFFLINE*) mode=offline ;;
  *) k8s_fail "the plugin advertises no volume expansion: $caps" ;;
esac
echo "the plugin advertises $mode expansion"
k8s_pvc ex-pvc 256Mi Filesystem || k8s_fail "create PVC"
# The pod prints the filesystem's size every 2 s (no kubectl exec needed).
watch='while true; do echo "size $(df -B1 --output=size /data | tail -1 | tr -d " ")"; sleep 2; done'
k8s_pod ex1 ex-pvc Filesystem "head -c 8M /dev/urandom > /data/blob && sync && sha256sum /data/blob > /data/blob.sum && $watch" \
  || k8s_fail "create pod"
k8s_wait_pod_phase "$K8S_NS" ex1 Running 300 || { k8s_explain "$K8S_NS" ex1; k8s_fail "pod not Running"; }
size_of() { # POD: the last size the pod printed
  kc -n "$K8S_NS" logs "$1" 2>/dev/null | awk '/^size / {s = $2} END {print s + 0}'
}
n=0
while [ "$(size_of ex1)" = 0 ] && [ $n -lt 60 ]; do sleep 1; n=$((n + 1)); done
size0=$(size_of ex1)
[ "$size0" -gt 0 ] || k8s_fail "the pod printed no size: $(kc -n "$K8S_NS" logs ex1 2>&1 | tail -3)"
echo "filesystem size before: $size0 bytes"

k8s_step "PVC 256Mi -> 512Mi ($mode)"
t0=$(date +%s%N)
kc -n "$K8S_NS" patch pvc ex-pvc --type=merge -p '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}' >/dev/null \
  || k8s_fail "patch PVC"
grown() { [ "$1" -gt $(( size0 + 200 * 1024 * 1024 )) ]; }
pod=ex1
if [ $mode = offline ]; then
  kc -n "$K8S_NS" delete pod ex1 --wait=true >/dev/null || k8s_check_failed "delete pod"
  deadline=$(( $(date +%s) + 600 ))
  until [ "$(kc -n "$K8S_NS" get pv "$(kc -n "$K8S_NS" get pvc ex-pvc -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.capacity.storage}')" = 512Mi ]; do
    [ "$(date +%s)" -lt $deadline ] || { kc -n "$K8S_NS" describe pvc ex-pvc | tail -15; k8s_fail "the PV did not reach 512Mi within 600 s"; }
    sleep 2
  done
  echo "measure: controller expansion done (PV 512Mi) after $(e2e_secs "$t0")s"
  k8s_pod ex2 ex-pvc Filesystem "sha256sum -c /data/blob.sum && echo READ-OK && $watch" || k8s_fail "create second pod"
  k8s_wait_pod_phase "$K8S_NS" ex2 Running 300 || { k8s_explain "$K8S_NS" ex2; k8s_fail "second pod not Running"; }
  pod=ex2
fi
deadline=$(( $(date +%s) + 300 ))
until grown "$(size_of $pod)"; do
  [ "$(date +%s)" -lt $deadline ] || break
  sleep 2
done
size1=$(size_of $pod)
if grown "$size1"; then
  echo "measure: PVC patch to the pod seeing the new size: $(e2e_secs "$t0")s"
  k8s_ok "the pod sees the grown filesystem: $size0 -> $size1 bytes"
else
  kc -n "$K8S_NS" describe pvc ex-pvc | tail -15
  k8s_check_failed "the filesystem did not grow within 300 s: $size0 -> $size1 bytes"
fi
capacity=$(kc -n "$K8S_NS" get pvc ex-pvc -o jsonpath='{.status.capacity.storage}')
[ "$capacity" = 512Mi ] && k8s_ok "PVC status capacity 512Mi" || k8s_check_failed "PVC status capacity '$capacity'"
if [ $mode = online ]; then
  kc -n "$K8S_NS" delete pod ex1 --wait=true >/dev/null
  k8s_pod ex2 ex-pvc Filesystem 'sha256sum -c /data/blob.sum && echo READ-OK' || k8s_fail "create reader"
  k8s_wait_pod_phase "$K8S_NS" ex2 Succeeded 300 || k8s_check_failed "reader did not succeed"
fi
kc -n "$K8S_NS" logs ex2 2>&1 | grep -q READ-OK && k8s_ok "data written before the expansion is intact" \
  || k8s_check_failed "checksum after expansion: $(kc -n "$K8S_NS" logs ex2 2>&1 | head -3)"
kc -n "$K8S_NS" delete pod ex2 --wait=true >/dev/null
kc -n "$K8S_NS" delete pvc ex-pvc --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete PVC"
k8s_result
