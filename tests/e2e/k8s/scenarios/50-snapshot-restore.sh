# Scenario 5 of #19: a VolumeSnapshot of a PVC in use, restored to a new PVC
# whose checksum matches. The snapshotter is off in the chart's defaults:
# `helm upgrade --set snapshotter.enabled=true` turns it on (the DaemonSet
# rolls), which is what a user does. The snapshot-controller runs with
# distributed snapshotting (10-install).
kc create namespace "$K8S_NS" >/dev/null 2>&1
k8s_step "helm upgrade: snapshotter on"
t0=$(date +%s%N)
"$HELM" upgrade "$K8S_RELEASE" "$E2E_SRC_DIR/charts/ublk-csi" -n "$K8S_RELEASE_NS" --reuse-values \
  --set snapshotter.enabled=true --wait --timeout 15m >/dev/null || k8s_fail "helm upgrade"
sleep 5
k8s_wait_plugin_ready 900 || { k8s_explain "$K8S_RELEASE_NS" "$(k8s_plugin_pod)"; k8s_fail "plugin not Ready after the upgrade"; }
echo "measure: helm upgrade to all Ready: $(e2e_secs "$t0")s"
containers=$(kc -n "$K8S_RELEASE_NS" get pod "$(k8s_plugin_pod)" -o jsonpath='{.spec.containers[*].name}')
case " $containers " in *" csi-snapshotter "*) k8s_ok "csi-snapshotter runs: $containers" ;; *) k8s_fail "no csi-snapshotter: $containers" ;; esac

k8s_pvc src-pvc 256Mi Filesystem || k8s_fail "create PVC"
k8s_pod src src-pvc Filesystem 'head -c 16M /dev/urandom > /data/blob && sync && sha256sum /data/blob > /data/blob.sum && echo WRITTEN && sleep 3600' \
  || k8s_fail "create writer"
k8s_wait_pod_phase "$K8S_NS" src Running 300 || { k8s_explain "$K8S_NS" src; k8s_fail "writer not Running"; }
n=0
until kc -n "$K8S_NS" logs src 2>/dev/null | grep -q WRITTEN; do
  [ $n -lt 60 ] || k8s_fail "writer did not write within 60 s"
  sleep 1; n=$((n + 1))
done
k8s_step "VolumeSnapshot of the PVC in use"
t0=$(date +%s%N)
kc -n "$K8S_NS" apply -f - >/dev/null <<YAML || k8s_fail "create VolumeSnapshot"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap}
spec:
  volumeSnapshotClassName: ublk
  source: {persistentVolumeClaimName: src-pvc}
YAML
deadline=$(( $(date +%s) + 300 ))
until [ "$(kc -n "$K8S_NS" get volumesnapshot snap -o jsonpath='{.status.readyToUse}' 2>/dev/null)" = true ]; do
  [ "$(date +%s)" -lt $deadline ] || { kc -n "$K8S_NS" describe volumesnapshot snap | tail -15; k8s_fail "snapshot not ready within 300 s"; }
  sleep 2
done
echo "measure: VolumeSnapshot create to readyToUse: $(e2e_secs "$t0")s"
k8s_ok "snapshot ready ($(kc -n "$K8S_NS" get volumesnapshot snap -o jsonpath='{.status.restoreSize}'))"

k8s_step "restore to a new PVC, read it back"
kc -n "$K8S_NS" apply -f - >/dev/null <<YAML || k8s_fail "create restored PVC"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ublk
  resources: {requests: {storage: 256Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
YAML
k8s_pod reader restored Filesystem 'sha256sum -c /data/blob.sum && echo READ-OK' || k8s_fail "create reader"
k8s_wait_pod_phase "$K8S_NS" reader Succeeded 300 || { k8s_explain "$K8S_NS" reader; k8s_check_failed "reader did not succeed"; }
kc -n "$K8S_NS" logs reader 2>&1 | sed 's/^/  reader: /'
kc -n "$K8S_NS" logs reader 2>&1 | grep -q READ-OK && k8s_ok "the restored PVC has the snapshot's data (sha256 matches)" \
  || k8s_check_failed "checksum of the restored PVC"
kc -n "$K8S_NS" delete pod src reader --wait=true >/dev/null
kc -n "$K8S_NS" delete volumesnapshot snap --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete snapshot"
kc -n "$K8S_NS" delete pvc src-pvc restored --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete PVCs"
k8s_result
