# Helpers of the host-side Kubernetes scenarios (tests/e2e/k8s/scenarios):
# sourced by run.sh after the cluster is up. KUBECONFIG, KUBECTL, HELM,
# K8S_RUN, E2E_SRC_DIR are set.

K8S_NS=${K8S_NS:-ublk-e2e}
K8S_RELEASE=ublk-csi
K8S_RELEASE_NS=ublk-csi
K8S_FAILED=0

kc() { timeout 120 "$KUBECTL" "$@"; }
k8s_step() { echo "== $(date -u +%T) $*"; }
k8s_ok() { echo "ok: $*"; }
# Records a failed check and goes on; the scenario ends with k8s_result.
k8s_check_failed() { echo "FAILED: $*"; K8S_FAILED=$((K8S_FAILED + 1)); }
k8s_fail() { echo "FAILED: $*"; exit 1; }
k8s_result() { [ "$K8S_FAILED" = 0 ] || { echo "$K8S_FAILED check(s) failed"; exit 1; }; exit 0; }

# k8s_node CMD...: runs a shell command on the node (in the guest, as root)
# and prints its output; returns its exit code. Timeout K8S_NODE_TIMEOUT (60 s).
K8S_NODE_SEQ=0
k8s_node() {
  local share=$K8S_RUN/share id f n=0 limit=$(( ${K8S_NODE_TIMEOUT:-60} * 10 ))
  K8S_NODE_SEQ=$((K8S_NODE_SEQ + 1))
  id=$$.$K8S_NODE_SEQ.$RANDOM
  f=$share/cmd.$id.sh
  printf '%s\n' "$*" > "$f.tmp" && mv "$f.tmp" "$f"
  while [ ! -f "$f.rc" ]; do
    [ $n -lt $limit ] || { echo "k8s_node: no answer from the node within $((limit / 10)) s: $*" >&2; return 124; }
    sleep 0.1; n=$((n + 1))
  done
  cat "$f.out"
  return "$(cat "$f.rc")"
}

k8s_wait_node_ready() { # TIMEOUT_S
  local deadline=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ -f "$K8S_RUN/share/node-failed" ] && { cat "$K8S_RUN/share/node-failed" >&2; return 1; }
    [ "$("$KUBECTL" get node "$K8S_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] \
      && return 0
    # The boot loop ended: the guest is gone.
    kill -0 "$BOOT_PID" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

# k8s_wait_pod_phase NS POD PHASE TIMEOUT_S
k8s_wait_pod_phase() {
  local deadline=$(( $(date +%s) + $4 )) phase
  while [ "$(date +%s)" -lt "$deadline" ]; do
    phase=$("$KUBECTL" -n "$1" get pod "$2" -o jsonpath='{.status.phase}' 2>/dev/null)
    [ "$phase" = "$3" ] && return 0
    case $phase in Failed|Succeeded) [ "$phase" != "$3" ] && return 1 ;; esac
    sleep 1
  done
  return 1
}

# Why a pod is not where it should be: its events and the plugin's log tail.
k8s_explain() { # NS [POD]
  "$KUBECTL" -n "$1" get pods -o wide 2>&1 | sed 's/^/  /'
  [ -n "${2:-}" ] && "$KUBECTL" -n "$1" describe pod "$2" 2>&1 | tail -20 | sed 's/^/  /'
  "$KUBECTL" get events -A --sort-by=.lastTimestamp 2>&1 | tail -15 | sed 's/^/  /'
}

k8s_plugin_pod() {
  "$KUBECTL" -n "$K8S_RELEASE_NS" get pods -l app.kubernetes.io/name=ublk-csi -o jsonpath='{.items[0].metadata.name}' 2>/dev/null
}

# k8s_liveness_failures SINCE: liveness probe failures of the plugin container
# that kubelet logged at or after SINCE (seconds since the epoch). kubelet's
# own log, not the Unhealthy events: the event recorder drops a pod's events
# past a burst of 25, which a pod restarted a few times reaches.
k8s_liveness_failures() {
  local since
  since=$(date -u -d "@$1" +%m%d\ %H:%M:%S)
  grep -h 'probeType="Liveness"' "$K8S_RUN/share/kubelet.log" 2>/dev/null |
    grep -F 'containerName="ublk-csi"' | grep -F 'Probe failed' |
    awk -v since="$since" '{ t = substr($1, 2) " " substr($2, 1, 8) } t >= since { n++ } END { print n + 0 }'
}

# k8s_plugin_started: when the running plugin container started (epoch s).
k8s_plugin_started() {
  date -d "$("$KUBECTL" -n "$K8S_RELEASE_NS" get pod "$(k8s_plugin_pod)" \
    -o jsonpath='{.status.containerStatuses[?(@.name=="ublk-csi")].state.running.startedAt}')" +%s
}

# k8s_pvc NAME SIZE [Block|Filesystem] [STORAGECLASS] [SNAPSHOT]: a PVC of
# the chart's StorageClass (or STORAGECLASS), restored from the
# VolumeSnapshot SNAPSHOT if given.
k8s_pvc() {
  local source=""
  [ -n "${5:-}" ] && source="dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: $5}"
  kc -n "$K8S_NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ${4:-ublk}
  volumeMode: ${3:-Filesystem}
  resources: {requests: {storage: $2}}
  $source
YAML
}

# k8s_wait_gone TIMEOUT_S RESOURCE...: 0 once none of the resources
# (kind/name, cluster-scoped or in the current namespace) exists, 1 if one
# is still there after TIMEOUT_S.
k8s_wait_gone() {
  local deadline=$((SECONDS + $1)) r
  shift
  for r in "$@"; do
    while kc get "$r" >/dev/null 2>&1; do
      [ "$SECONDS" -lt "$deadline" ] || return 1
      sleep 1
    done
  done
}

# k8s_pod NAME PVC MODE COMMAND: a pod of the test image with PVC at /data
# (Filesystem) or as the raw device /dev/xvda (Block), never restarted
# (K8S_POD_RESTART=Always: restarted, e.g. to come back after a node reboot).
# With K8S_POD_CTL_DIR set, that node directory is mounted at /ctl too: the
# host drives a long-running pod through files it writes there (k8s_node).
k8s_pod() {
  local vol mounts=""
  [ -n "${K8S_POD_CTL_DIR:-}" ] && mounts="{name: ctl, mountPath: /ctl}"
  if [ "$3" = Block ]; then
    vol="volumeDevices: [{name: v, devicePath: /dev/xvda}]"
    [ -n "$mounts" ] && vol="$vol
    volumeMounts: [$mounts]"
  else
    vol="volumeMounts: [{name: v, mountPath: /data}${mounts:+, $mounts}]"
  fi
  kc -n "$K8S_NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: ${K8S_POD_RESTART:-Never}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: ublk-e2e-fio:1
    imagePullPolicy: Never
    command: ["/bin/bash", "-c", $(printf '%s' "$4" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
    $vol
  volumes:
  - name: v
    persistentVolumeClaim: {claimName: $2}
$([ -n "${K8S_POD_CTL_DIR:-}" ] && echo "  - {name: ctl, hostPath: {path: $K8S_POD_CTL_DIR, type: DirectoryOrCreate}}")
YAML
}

# k8s_wait_plugin_ready TIMEOUT_S: the plugin pod exists and every container
# of it is Ready.
k8s_wait_plugin_ready() {
  local deadline=$(( $(date +%s) + $1 )) pod ready
  while [ "$(date +%s)" -lt "$deadline" ]; do
    pod=$(k8s_plugin_pod)
    if [ -n "$pod" ]; then
      ready=$("$KUBECTL" -n "$K8S_RELEASE_NS" get pod "$pod" -o jsonpath='{.metadata.deletionTimestamp}{range .status.containerStatuses[*]}{.ready} {end}' 2>/dev/null)
      case "$ready" in true*) case " $ready" in *false*) ;; *) return 0 ;; esac ;; esac
    fi
    sleep 1
  done
  return 1
}

# Pods under I/O (scenarios 60, 80, 100): k8s_io_start PREFIX makes PVCs
# PREFIX-fs (Filesystem) and PREFIX-blk (Block), 512Mi, and a pod on each
# running fio rounds (32 MiB randwrite with crc32c, then verified, fatal on
# the first bad block) until k8s_io_stop_and_check PREFIX writes the stop file
# on the node, or at the latest K8S_IO_SECONDS (default 1800: a cap, not the
# plan) from the start.
K8S_IO_CTL=/run/ublk-e2e-ctl
k8s_io_start() {
  local p=$1 end loop
  kc create namespace "$K8S_NS" >/dev/null 2>&1
  k8s_pvc "$p-fs" 512Mi Filesystem && k8s_pvc "$p-blk" 512Mi Block || k8s_fail "create PVCs $p-fs $p-blk"
  k8s_node "mkdir -p $K8S_IO_CTL && rm -f $K8S_IO_CTL/stop" >/dev/null || k8s_fail "node control dir"
  end=$(( $(date +%s) + ${K8S_IO_SECONDS:-1800} ))
  loop='n=0; while [ ! -e /ctl/stop ] && [ "$(date +%s)" -lt END ]; do fio --name=r --filename=TARGET --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 --rate=2m > /tmp/fio.log 2>&1 || { cat /tmp/fio.log; echo FIO-FAILED; exit 1; }; n=$((n + 1)); echo "round $n: $(grep -o "err= *[0-9]*" /tmp/fio.log | head -1)"; done; echo "FIO-OK rounds=$n"'
  loop=${loop//END/$end}
  K8S_POD_CTL_DIR=$K8S_IO_CTL k8s_pod "$p-fs" "$p-fs" Filesystem "${loop//TARGET//data/fio.dat}" \
    && K8S_POD_CTL_DIR=$K8S_IO_CTL k8s_pod "$p-blk" "$p-blk" Block "${loop//TARGET//dev/xvda}" \
    || k8s_fail "create fio pods"
  local pod
  for pod in "$p-fs" "$p-blk"; do
    k8s_wait_pod_phase "$K8S_NS" "$pod" Running 300 || { k8s_explain "$K8S_NS" "$pod"; k8s_fail "$pod not Running"; }
  done
  k8s_ok "fio pods $p-fs and $p-blk Running"
}

# k8s_io_running PREFIX: both fio pods still run (what happened so far
# happened under I/O); a failed check otherwise.
k8s_io_running() {
  local pod phase
  for pod in "$1-fs" "$1-blk"; do
    phase=$(kc -n "$K8S_NS" get pod "$pod" -o jsonpath='{.status.phase}')
    [ "$phase" = Running ] || k8s_check_failed "$pod is $phase before the stop: not all of it was under I/O"
  done
}

# k8s_io_stop_and_check PREFIX: stop fio after its current round; each pod
# succeeded with every round verified, was never restarted, and has no
# FailedMount event; then the pods and PVCs are deleted (their PVs go with
# them through the plugin's DeleteVolume).
k8s_io_stop_and_check() {
  local p=$1 pod out r fm
  k8s_node "touch $K8S_IO_CTL/stop" >/dev/null || k8s_check_failed "write the stop file"
  for pod in "$p-fs" "$p-blk"; do
    k8s_wait_pod_phase "$K8S_NS" "$pod" Succeeded 600 || k8s_check_failed "$pod did not succeed"
    out=$(kc -n "$K8S_NS" logs "$pod" 2>&1)
    echo "$out" | tail -4 | sed "s/^/  $pod: /"
    if grep -q FIO-OK <<< "$out" && ! grep -q FIO-FAILED <<< "$out"; then
      k8s_ok "$pod: fio verify passed in every round ($(grep -o 'rounds=[0-9]*' <<< "$out"))"
    else
      k8s_check_failed "$pod: fio failed"
    fi
    r=$(kc -n "$K8S_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
    [ "$r" = 0 ] && k8s_ok "$pod never restarted" || k8s_check_failed "$pod restarted $r times"
    fm=$(kc -n "$K8S_NS" get events --field-selector "reason=FailedMount,involvedObject.name=$pod" -o name 2>/dev/null | wc -l)
    [ "$fm" = 0 ] && k8s_ok "$pod: no FailedMount event" \
      || { k8s_check_failed "$pod: $fm FailedMount events"; kc -n "$K8S_NS" get events --field-selector "reason=FailedMount,involvedObject.name=$pod"; }
  done
  kc -n "$K8S_NS" delete pod "$p-fs" "$p-blk" --wait=true >/dev/null
  kc -n "$K8S_NS" delete pvc "$p-fs" "$p-blk" --wait=true --timeout=180s >/dev/null || k8s_check_failed "delete PVCs $p-fs $p-blk"
}
