# Scenario 1 of #19: `helm install` of the chart with its defaults; every
# DaemonSet container Ready; CSIDriver and CSINode list the driver; the
# provisioner publishes a CSIStorageCapacity for the node. Also installs the
# snapshot CRDs and snapshot-controller from the bundle (cluster add-ons a
# real cluster has, not part of the chart).
k8s_step "snapshot CRDs and snapshot-controller (external-snapshotter v8.1.0)"
kc apply -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshotclasses.yaml" \
  -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshotcontents.yaml" \
  -f "$K8S_CRDS/snapshot.storage.k8s.io_volumesnapshots.yaml" >/dev/null || k8s_fail "kubectl apply snapshot CRDs"
# The chart's csi-snapshotter runs in node-deployment mode, which needs the
# controller's distributed snapshotting: its flag, and the nodes rule its
# RBAC file carries commented out for that case.
sed -E 's/^  # (- apiGroups: \[""\])$/  \1/; s/^  #(   (resources: \["nodes"\]|verbs: \["get", "list", "watch"\]))$/ \1/' \
  "$K8S_SNAPSHOT_DEPLOY/rbac-snapshot-controller.yaml" | kc apply -f - >/dev/null \
  || k8s_fail "kubectl apply snapshot-controller RBAC"
sed 's/^\( *\)- "--leader-election=true"$/&\n\1- "--enable-distributed-snapshotting=true"/' \
  "$K8S_SNAPSHOT_DEPLOY/setup-snapshot-controller.yaml" | kc apply -f - >/dev/null \
  || k8s_fail "kubectl apply snapshot-controller"

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
# ... and it says what the plugin's GetCapacity says (asked on the node,
# through the plugin's socket; no volume exists yet, so it holds still).
sock=/var/lib/kubelet/plugins/$driver/csi.sock
got=$(k8s_node "$E2E_BUILD_DIR/csi/ublk-csi-ctl --endpoint=unix://$sock capacity" | sed -n 's/.*available_capacity: *\([0-9]*\).*/\1/p')
published=$(kc get csistoragecapacities -A -o jsonpath='{.items[0].capacity}')
if python3 - "$got" "$published" <<'PY'
import re, sys
units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", sys.argv[2])
want, pub = int(sys.argv[1]), float(m.group(1)) * units[m.group(2)]
print(f"GetCapacity {want} bytes, CSIStorageCapacity {sys.argv[2]} = {pub:.0f} bytes")
sys.exit(0 if want > 0 and abs(pub - want) <= want / 100 else 1)
PY
then k8s_ok "CSIStorageCapacity matches GetCapacity (within 1%)"
else k8s_check_failed "CSIStorageCapacity '$published' does not match GetCapacity '$got'"; fi
restarts=$(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.name}={.restartCount} {end}')
echo "restarts: $restarts"
case " $restarts " in
  *=[1-9]*) k8s_check_failed "a container restarted during install: $restarts"
            kc -n "$K8S_RELEASE_NS" describe pod "$pod" | grep -A8 "Last State" | sed 's/^/  /'
            kc -n "$K8S_RELEASE_NS" logs "$pod" -c ublk-csi --previous 2>&1 | tail -20 | sed 's/^/  previous: /' ;;
  *) k8s_ok "no container restarted" ;;
esac
k8s_result
