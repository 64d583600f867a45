# Scenario 1 of #19: `helm install` of the chart with its defaults; every
# DaemonSet container Ready; CSIDriver and CSINode list the driver; the
# provisioner publishes a CSIStorageCapacity for the node. Also installs the
# snapshot CRDs and snapshot-controller from the bundle (cluster add-ons a
# real cluster has, not part of the chart).
k8s_step "snapshot CRDs and snapshot-controller (external-snapshotter v8.1.0)"
kc apply -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshotclasses.yaml" \
  -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshotcontents.yaml" \
  -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshots.yaml" >/dev/null || k8s_fail "kubectl apply snapshot CRDs"
kc apply -f "$K8S_SNAPSHOT_DEPLOY/rbac-snapshot-controller.yaml" \
  -f "$K8S_SNAPSHOT_DEPLOY/setup-snapshot-controller.yaml" >/dev/null || k8s_fail "kubectl apply snapshot-controller"

k8s_step "helm install $K8S_RELEASE (chart defaults)"
t0=$(date +%s%N)
"$HELM" install "$K8S_RELEASE" "$E2E_SRC_DIR/charts/ublk-csi" -n "$K8S_RELEASE_NS" --create-namespace \
  --wait --timeout 15m || { k8s_explain "$K8S_RELEASE_NS" "$(k8s_plugin_pod)"; k8s_fail "helm install"; }
# helm --wait counts a DaemonSet ready once ready >= desired - maxUnavailable:
# on one node it returns at once. Wait for every container of the pod.
pod="" ready=""
deadline=$(( $(date +%s) + 600 ))
while [ "$(date +%s)" -lt $deadline ]; do
  pod=$(k8s_plugin_pod)
  [ -n "$pod" ] && ready=$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.name}={.ready} {end}')
  [ -n "$ready" ] && case " $ready " in *=false*) ;; *) break ;; esac
  sleep 2
done
[ -n "$pod" ] || k8s_fail "no plugin pod"
echo "measure: helm install to all Ready: $(e2e_secs "$t0")s"
echo "containers: $ready"
case " $ready " in *=false*) k8s_check_failed "a container of $pod is not Ready: $ready" ;; *) k8s_ok "every container of $pod is Ready" ;; esac
n=$(wc -w <<< "$ready")
want=$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{.spec.containers[*].name}' | wc -w)
[ "$n" = "$want" ] && k8s_ok "$n of $want containers report status" || k8s_check_failed "$n of $want containers report status"

driver=$(kc get csidriver -o jsonpath='{.items[*].metadata.name}')
[ -n "$driver" ] && k8s_ok "CSIDriver $driver" || k8s_check_failed "no CSIDriver object"
csinode=
for _ in $(seq 60); do
  csinode=$(kc get csinode "$K8S_NODE_NAME" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null)
  [ -n "$csinode" ] && break
  sleep 1
done
case " $csinode " in *" $driver "*) k8s_ok "CSINode $K8S_NODE_NAME lists $driver" ;; *) k8s_check_failed "CSINode lists '$csinode', not $driver" ;; esac

# csi-provisioner (node deployment) publishes capacity for the StorageClass.
deadline=$(( $(date +%s) + 120 ))
cap=
while [ "$(date +%s)" -lt $deadline ]; do
  cap=$(kc get csistoragecapacities -A -o jsonpath='{range .items[*]}{.storageClassName}={.capacity} {end}' 2>/dev/null)
  [ -n "$cap" ] && break
  sleep 2
done
[ -n "$cap" ] && k8s_ok "CSIStorageCapacity: $cap" || k8s_check_failed "no CSIStorageCapacity published within 120 s"
restarts=$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.name}={.restartCount} {end}')
echo "restarts: $restarts"
case " $restarts " in
  *=[1-9]*) k8s_check_failed "a container restarted during install: $restarts"
            kc -n "$K8S_RELEASE_NS" describe pod "$pod" | grep -A8 "Last State" | sed 's/^/  /'
            kc -n "$K8S_RELEASE_NS" logs "$pod" -c ublk-csi --previous 2>&1 | tail -20 | sed 's/^/  previous: /' ;;
  *) k8s_ok "no container restarted" ;;
esac
k8s_result
