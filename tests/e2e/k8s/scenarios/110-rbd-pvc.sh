# k8s: on demand (boots a single-node Ceph in the node: run it by name,
# `make e2e-k8s SCENARIO="10-install 110-rbd-pvc"`).
# Issue 21: the chart's Ceph RBD driver (rbd.enabled) in a real cluster. A
# single-node Ceph (tests/e2e/lib/ceph.sh, as the rbd-csi guest scenario
# starts it) runs on the node, bound to the node's IP: the plugin pods use
# the pod network (no hostNetwork, in the DaemonSet and in the controller
# Deployment), where 127.0.0.1 is the pod's own loopback, and a pod reaches
# the node's IP as it would reach a real cluster's monitors outside
# Kubernetes. Then: the cephx Secret; `helm upgrade` (or install) with
# rbd.enabled, rbd.clusters and rbd.storageClass; the controller Deployment
# and both registrars Ready; a filesystem PVC of the RBD StorageClass written
# by one pod and read back by another; its PV names rbd.ublk.csi.io and an
# rbd.* volume ID, its image exists in the pool; with the snapshot CRDs
# (10-install), a VolumeSnapshot of it whose ID names its image, the
# controller pod replaced (its emptyDir records gone), the snapshot restored
# to a second PVC by the new pod; everything deleted through it, and the
# images and the snapshot leave the pool.
RBD_DRIVER=rbd.ublk.csi.io
RBD_SC=ublk-rbd
RBD_CLUSTER=e2e-ceph
RBD_SECRET=ceph-rbd
RBD_MONITORS=$K8S_NODE_IP:6789
# On the node's data disk (written data stays out of the guest's RAM).
# shellcheck disable=SC2016 # expanded on the node
CEPH_NODE_DIR='$E2E_DATA_DIR/ceph-k8s'
CEPH_NODE_LIB=$E2E_SRC_DIR/tests/e2e/lib/ceph.sh

# ceph_node CMD: a command on the node with the cluster's config (rbd, rados
# and ceph need nothing more).
ceph_node() { k8s_node "export CEPH_CONF=$CEPH_NODE_DIR/ceph.conf; $*"; }
rbd_images() { ceph_node "timeout 60 rbd --conf \$CEPH_CONF ls -p rbd" | sort | tr '\n' ' '; }
rbd_trash() { ceph_node "timeout 60 rbd --conf \$CEPH_CONF trash ls -p rbd" | tr '\n' ' '; }

kc create namespace "$K8S_NS" >/dev/null 2>&1
kc create namespace "$K8S_RELEASE_NS" >/dev/null 2>&1

k8s_step "Ceph on the node at $K8S_NODE_IP (mon v1 :6789, one OSD, pool rbd)"
t0=$(date +%s%N)
# ceph_start's key goes to a 0600 file in the share, never into the log.
K8S_NODE_TIMEOUT=900 k8s_node ". $CEPH_NODE_LIB && CEPH_ADDR=$K8S_NODE_IP ceph_start $CEPH_NODE_DIR \
  && echo \"\$CEPH_MON_PID \$CEPH_OSD_PID\" > $CEPH_NODE_DIR/pids \
  && (umask 077; printf '%s\n' \"\$CEPH_KEY\" > \$E2E_RESULT_DIR/ceph.key) \
  && grep -E '^(MemTotal|MemAvailable)' /proc/meminfo" \
  || k8s_fail "ceph_start on the node"
echo "measure: Ceph start: $(e2e_secs "$t0")s"
key=$(cat "$K8S_RUN/share/ceph.key") && [ -n "$key" ] || k8s_fail "no cephx key from the node"
rm -f "$K8S_RUN/share/ceph.key"
# Stopped at the end only when no RBD volume is left: a file system still
# mounted on an image whose cluster is gone would hang the node's shutdown.
# shellcheck disable=SC2016 # expanded on the node
stop_ceph() {
  ceph_node 'pids=$(cat '"$CEPH_NODE_DIR"'/pids); kill $pids; for _ in $(seq 100); do
    kill -0 $pids 2>/dev/null || exit 0; sleep 0.2; done; kill -9 $pids' >/dev/null
}

k8s_step "cephx Secret $RBD_SECRET (userID admin) in $K8S_RELEASE_NS"
kc -n "$K8S_RELEASE_NS" delete secret "$RBD_SECRET" >/dev/null 2>&1
kc -n "$K8S_RELEASE_NS" create secret generic "$RBD_SECRET" --from-literal=userID=admin \
  --from-literal=userKey="$key" >/dev/null || k8s_fail "create Secret $RBD_SECRET"

snap=0
kc get crd volumesnapshots.snapshot.storage.k8s.io >/dev/null 2>&1 && snap=1
values=$K8S_RUN/rbd-values.yaml
cat > "$values" <<YAML
rbd:
  enabled: true
  clusters: [{clusterID: $RBD_CLUSTER, monitors: "$RBD_MONITORS"}]
  storageClass:
    create: true
    name: $RBD_SC
    clusterID: $RBD_CLUSTER
    monitors: "$RBD_MONITORS"
    pool: rbd
    imageFeatures: layering,exclusive-lock
    secretName: $RBD_SECRET
YAML
[ $snap = 1 ] && printf 'snapshotter: {enabled: true}\n' >> "$values"
if "$HELM" status "$K8S_RELEASE" -n "$K8S_RELEASE_NS" >/dev/null 2>&1; then
  how=(upgrade --reuse-values)
else
  how=(install)
fi
k8s_step "helm ${how[*]} with rbd.enabled (snapshotter: $snap)"
t0=$(date +%s%N)
"$HELM" "${how[@]}" "$K8S_RELEASE" "$E2E_SRC_DIR/charts/ublk-csi" -n "$K8S_RELEASE_NS" -f "$values" \
  --wait --timeout 15m >/dev/null || { k8s_explain "$K8S_RELEASE_NS"; k8s_fail "helm ${how[0]}"; }
sleep 5
k8s_wait_plugin_ready 900 || { k8s_explain "$K8S_RELEASE_NS" "$(k8s_plugin_pod)"; k8s_fail "node plugin not Ready"; }
ctrl=$(kc -n "$K8S_RELEASE_NS" get deploy -l app.kubernetes.io/component=rbd-controller -o jsonpath='{.items[0].metadata.name}')
[ -n "$ctrl" ] || k8s_fail "no rbd-controller Deployment"
kc -n "$K8S_RELEASE_NS" rollout status "deploy/$ctrl" --timeout=110s >/dev/null \
  || timeout 600 "$KUBECTL" -n "$K8S_RELEASE_NS" rollout status "deploy/$ctrl" --timeout=590s >/dev/null \
  || { k8s_explain "$K8S_RELEASE_NS"; k8s_fail "Deployment $ctrl not rolled out"; }
echo "measure: helm ${how[0]} to node plugin and controller Ready: $(e2e_secs "$t0")s"
cpod=$(kc -n "$K8S_RELEASE_NS" get pods -l app.kubernetes.io/component=rbd-controller -o jsonpath='{.items[0].metadata.name}')
pod=$(k8s_plugin_pod)
for p in "$pod" "$cpod"; do
  st=$(kc -n "$K8S_RELEASE_NS" get pod "$p" -o jsonpath='{range .status.containerStatuses[*]}{.name}={.ready} {end}')
  echo "  $p: $st"
  case " $st " in *=false*) k8s_check_failed "a container of $p is not Ready: $st" ;; *) k8s_ok "every container of $p is Ready" ;; esac
done
containers=" $(kc -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{.spec.containers[*].name}') "
case $containers in *" node-driver-registrar "*) ;; *) k8s_check_failed "$pod has no node-driver-registrar" ;; esac
case $containers in *" node-driver-registrar-rbd "*) k8s_ok "both registrars run in $pod" ;; *) k8s_check_failed "$pod has no node-driver-registrar-rbd" ;; esac
echo "  hostNetwork of $pod, $cpod: '$(kc -n "$K8S_RELEASE_NS" get pod "$pod" "$cpod" -o jsonpath='{.items[*].spec.hostNetwork}')' (empty: the pod network)"
# The image as podman holds it (kubectl exec lands in the guest's initramfs
# root here, not in the container's: runc cannot pivot_root off a rootfs).
if m=$(podman image mount "$K8S_PLUGIN_IMAGE" 2>/dev/null); then
  if [ -e "$m/usr/lib/x86_64-linux-gnu/librbd.so.1" ] && [ -e "$m/usr/lib/x86_64-linux-gnu/librados.so.2" ]; then
    k8s_ok "$K8S_PLUGIN_IMAGE carries librbd.so.1 and librados.so.2"
  else
    k8s_check_failed "$K8S_PLUGIN_IMAGE lacks librbd.so.1 or librados.so.2"
  fi
  podman image unmount "$K8S_PLUGIN_IMAGE" >/dev/null 2>&1
else
  echo "  (podman image mount $K8S_PLUGIN_IMAGE failed: the stage below proves librbd loads)"
fi
kc get csidriver "$RBD_DRIVER" >/dev/null 2>&1 && k8s_ok "CSIDriver $RBD_DRIVER" || k8s_check_failed "no CSIDriver $RBD_DRIVER"
drivers=
for _ in $(seq 60); do
  drivers=$(kc get csinode "$K8S_NODE_NAME" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null)
  case " $drivers " in *" $RBD_DRIVER "*) break ;; esac
  sleep 1
done
case " $drivers " in *" $RBD_DRIVER "*) k8s_ok "CSINode lists $drivers" ;; *) k8s_check_failed "CSINode lists '$drivers'" ;; esac
[ "$(kc get storageclass "$RBD_SC" -o jsonpath='{.provisioner}')" = "$RBD_DRIVER" ] \
  && k8s_ok "StorageClass $RBD_SC provisions with $RBD_DRIVER" || k8s_check_failed "StorageClass $RBD_SC"

k8s_step "PVC on $RBD_SC, a writer pod"
k8s_pvc rbd-pvc 256Mi Filesystem "$RBD_SC" || k8s_fail "create PVC"
t0=$(date +%s%N)
k8s_pod rbd-writer rbd-pvc Filesystem 'head -c 16M /dev/urandom > /data/blob && sync && sha256sum /data/blob > /data/blob.sum && cat /data/blob.sum && df -h /data && echo WRITTEN && sleep 3600' \
  || k8s_fail "create writer pod"
k8s_wait_pod_phase "$K8S_NS" rbd-writer Running 600 || {
  k8s_explain "$K8S_NS" rbd-writer
  kc -n "$K8S_NS" describe pvc rbd-pvc | tail -10
  kc -n "$K8S_RELEASE_NS" logs "$cpod" -c ublk-csi 2>&1 | tail -20 | sed 's/^/  controller: /'
  kc -n "$K8S_RELEASE_NS" logs "$pod" -c ublk-csi 2>&1 | tail -20 | sed 's/^/  node: /'
  k8s_fail "writer pod not Running"
}
echo "measure: PVC create to pod Running (create image, stage, publish): $(e2e_secs "$t0")s"
n=0
until kc -n "$K8S_NS" logs rbd-writer 2>/dev/null | grep -q WRITTEN; do
  [ $n -lt 120 ] || k8s_fail "writer did not write within 120 s: $(kc -n "$K8S_NS" logs rbd-writer 2>&1 | tail -3)"
  sleep 1; n=$((n + 1))
done
kc -n "$K8S_NS" logs rbd-writer | sed 's/^/  writer: /'
pv=$(kc -n "$K8S_NS" get pvc rbd-pvc -o jsonpath='{.spec.volumeName}')
drv=$(kc get pv "$pv" -o jsonpath='{.spec.csi.driver}')
handle=$(kc get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
image=$(kc get pv "$pv" -o jsonpath='{.spec.csi.volumeAttributes.imageName}')
echo "  PV $pv: driver $drv, handle $handle, image $image"
[ "$drv" = "$RBD_DRIVER" ] && k8s_ok "PV's driver is $RBD_DRIVER" || k8s_check_failed "PV's driver is '$drv'"
case $handle in rbd.*) k8s_ok "volume ID $handle is an RBD one" ;; *) k8s_check_failed "volume ID '$handle' is not rbd.*" ;; esac
images=$(rbd_images)
echo "  pool rbd: $images"
[ -n "$image" ] && case " $images " in *" $image "*) true ;; *) false ;; esac \
  && k8s_ok "image $image exists in pool rbd" || k8s_check_failed "image '$image' not in pool rbd ($images)"
k8s_node "grep ublkb /proc/self/mountinfo | grep -c $pv" | sed 's/^/  node: ublk mounts of the PV: /'
for p in "$pod" "$cpod"; do
  kc -n "$K8S_RELEASE_NS" logs "$p" -c ublk-csi 2>/dev/null | grep -q 'loaded librbd.so.1' \
    && k8s_ok "$p loaded librbd.so.1 from the image" || k8s_check_failed "$p did not log loading librbd.so.1"
done

k8s_step "delete the writer, read back in a new pod"
kc -n "$K8S_NS" delete pod rbd-writer --wait=true >/dev/null || k8s_check_failed "delete writer"
k8s_pod rbd-reader rbd-pvc Filesystem 'sha256sum -c /data/blob.sum && echo READ-OK' || k8s_fail "create reader"
k8s_wait_pod_phase "$K8S_NS" rbd-reader Succeeded 300 || { k8s_explain "$K8S_NS" rbd-reader; k8s_check_failed "reader did not succeed"; }
kc -n "$K8S_NS" logs rbd-reader 2>&1 | sed 's/^/  reader: /'
kc -n "$K8S_NS" logs rbd-reader 2>&1 | grep -q READ-OK && k8s_ok "data read back intact in a new pod" \
  || k8s_check_failed "checksum mismatch in the new pod"
kc -n "$K8S_NS" delete pod rbd-reader --wait=true >/dev/null

restored_image=
if [ $snap = 1 ]; then
  k8s_step "VolumeSnapshot of the RBD PVC, restored to a new PVC"
  # The chart makes no VolumeSnapshotClass for rbd.ublk.csi.io: CreateSnapshot
  # needs the cephx secret, which only the class can name.
  kc apply -f - >/dev/null <<YAML || k8s_fail "create VolumeSnapshotClass"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: $RBD_SC}
driver: $RBD_DRIVER
deletionPolicy: Delete
parameters:
  csi.storage.k8s.io/snapshotter-secret-name: $RBD_SECRET
  csi.storage.k8s.io/snapshotter-secret-namespace: $K8S_RELEASE_NS
YAML
  t0=$(date +%s%N)
  kc -n "$K8S_NS" apply -f - >/dev/null <<YAML || k8s_fail "create VolumeSnapshot"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: rbd-snap}
spec:
  volumeSnapshotClassName: $RBD_SC
  source: {persistentVolumeClaimName: rbd-pvc}
YAML
  deadline=$(( $(date +%s) + 300 ))
  until [ "$(kc -n "$K8S_NS" get volumesnapshot rbd-snap -o jsonpath='{.status.readyToUse}' 2>/dev/null)" = true ]; do
    [ "$(date +%s)" -lt $deadline ] || { kc -n "$K8S_NS" describe volumesnapshot rbd-snap | tail -15; k8s_fail "snapshot not ready within 300 s"; }
    sleep 2
  done
  echo "measure: VolumeSnapshot create to readyToUse: $(e2e_secs "$t0")s"
  k8s_ok "snapshot ready ($(kc -n "$K8S_NS" get volumesnapshot rbd-snap -o jsonpath='{.status.boundVolumeSnapshotContentName} {.status.restoreSize}'))"
  snap_handle=$(kc get volumesnapshotcontent "$(kc -n "$K8S_NS" get volumesnapshot rbd-snap -o jsonpath='{.status.boundVolumeSnapshotContentName}')" \
    -o jsonpath='{.status.snapshotHandle}')
  echo "  snapshot handle: $snap_handle"
  case $snap_handle in "$handle".csi-snap-*) k8s_ok "the snapshot ID names its volume's image and the RBD snapshot" ;;
    *) k8s_check_failed "snapshot handle '$snap_handle' is not $handle.csi-snap-*" ;; esac
  # The controller pod replaced: its emptyDir, and every record in it, goes.
  # The restore and the deletes below are served from the IDs and the
  # clusters file alone.
  k8s_step "replace the controller pod (its records go with its emptyDir)"
  t0=$(date +%s%N)
  kc -n "$K8S_RELEASE_NS" delete pod "$cpod" --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete $cpod"
  kc -n "$K8S_RELEASE_NS" rollout status "deploy/$ctrl" --timeout=300s >/dev/null \
    || { k8s_explain "$K8S_RELEASE_NS"; k8s_fail "Deployment $ctrl not back"; }
  cpod=$(kc -n "$K8S_RELEASE_NS" get pods -l app.kubernetes.io/component=rbd-controller \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
  echo "measure: controller pod replaced and Ready: $(e2e_secs "$t0")s (now $cpod)"
  k8s_pvc rbd-restored 256Mi Filesystem "$RBD_SC" rbd-snap || k8s_fail "create restored PVC"
  k8s_pod rbd-restore-reader rbd-restored Filesystem 'sha256sum -c /data/blob.sum && echo READ-OK' || k8s_fail "create reader"
  k8s_wait_pod_phase "$K8S_NS" rbd-restore-reader Succeeded 600 || { k8s_explain "$K8S_NS" rbd-restore-reader; k8s_check_failed "restore reader did not succeed"; }
  kc -n "$K8S_NS" logs rbd-restore-reader 2>&1 | sed 's/^/  reader: /'
  kc -n "$K8S_NS" logs rbd-restore-reader 2>&1 | grep -q READ-OK && k8s_ok "the restored PVC (by a controller without records) has the snapshot's data (sha256 matches)" \
    || k8s_check_failed "checksum of the restored PVC"
  rpv=$(kc -n "$K8S_NS" get pvc rbd-restored -o jsonpath='{.spec.volumeName}')
  restored_image=$(kc get pv "$rpv" -o jsonpath='{.spec.csi.volumeAttributes.imageName}' 2>/dev/null)
  echo "  restored PV $rpv: image $restored_image; pool rbd: $(rbd_images)"
  kc -n "$K8S_NS" delete pod rbd-restore-reader --wait=true >/dev/null
  content=$(kc -n "$K8S_NS" get volumesnapshot rbd-snap -o jsonpath='{.status.boundVolumeSnapshotContentName}')
  kc -n "$K8S_NS" delete volumesnapshot rbd-snap --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete VolumeSnapshot"
  # DeleteSnapshot (the content's Delete policy) by the controller that
  # never saw the snapshot: through its ID and the clusters file.
  k8s_wait_gone 120 "volumesnapshotcontent/$content" \
    || k8s_check_failed "VolumeSnapshotContent $content still there after 120 s"
  snaps=$(ceph_node "timeout 60 rbd --conf \$CEPH_CONF snap ls rbd/$image" | grep -c csi-snap)
  if [ "$snaps" = 0 ]; then k8s_ok "the RBD snapshot left rbd/$image (DeleteSnapshot without a record)"
  else k8s_check_failed "$snaps csi-snap snapshot(s) still on rbd/$image"; fi
else
  echo "  no snapshot CRDs (10-install puts them in): no snapshot step"
fi

k8s_step "delete the PVCs: the images leave the pool"
t0=$(date +%s%N)
kc -n "$K8S_NS" delete pvc rbd-pvc rbd-restored --ignore-not-found --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete PVCs"
k8s_wait_gone 120 "pv/$pv" ${rpv:+"pv/$rpv"} \
  || { k8s_check_failed "PVs still exist 120 s after their PVCs were deleted"; kc get pv; }
echo "measure: PVC delete to PVs gone: $(e2e_secs "$t0")s"
images=$(rbd_images)
trash=$(rbd_trash)
echo "  pool rbd: '$images'; trash: '$trash'"
if [ -z "${trash// /}" ]; then k8s_ok "trash empty: the deleted images were purged"
else k8s_check_failed "images left in the trash: $trash"; fi
left=0
for img in $image $restored_image; do
  case " $images " in *" $img "*) k8s_check_failed "image $img still in pool rbd"; left=1 ;; *) k8s_ok "image $img left pool rbd" ;; esac
done
[ $left = 0 ] && [ "$K8S_FAILED" = 0 ] && { stop_ceph; echo "  Ceph stopped"; }
k8s_result
