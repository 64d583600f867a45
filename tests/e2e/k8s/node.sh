#!/bin/bash
# The Kubernetes node, run in the e2e guest (chrooted in the host's root) by
# tests/e2e/k8s/run.sh: the guest kernel's full module tree, the NIC, cgroup
# v2, containerd with the images the host prepared, the kubelet. Then it waits
# until the host writes $E2E_RESULT_DIR/stop (the host drives the scenarios
# with kubectl and helm) or asks for a reboot ($E2E_RESULT_DIR/reboot), and
# shuts the node down cleanly.
#
# Everything the node writes lives on the guest's data disk ($E2E_DATA_DIR),
# so kubelet and containerd state and the plugin's volumes survive a reboot.
# Environment (from $E2E_RESULT_DIR/env, written by the host): K8S_RUN,
# K8S_MODULES, K8S_HOST_IP, K8S_NODE_IP, K8S_NODE_NAME, K8S_SERVICE_IP,
# K8S_POD_CIDR, K8S_API_PORT, K8S_BIN, K8S_IMAGES.
set -uo pipefail
log() { echo "e2e-node: $(cut -d' ' -f1 /proc/uptime)s $*"; }
die() { log "FATAL: $*"; echo "$*" > "$E2E_RESULT_DIR/node-failed"; exit 1; }
: "${K8S_RUN:?}" "${K8S_MODULES:?}" "${K8S_BIN:?}" "${E2E_DATA_DIR:?the node needs the data disk}"
D=$E2E_DATA_DIR
S=/run/e2e-k8s
mkdir -p "$S" "$S/cni" "$D"/{kubelet,containerd,ublk-csi,cni,log-pods,log-containers}

# --- kernel modules ---------------------------------------------------------
# The initramfs holds only what every scenario needs; containers and pod
# networking need more. The host unpacked this kernel's whole module tree.
kver=$(uname -r)
[ -d "$K8S_MODULES/$kver" ] || die "no module tree for $kver in $K8S_MODULES"
mount --bind "$K8S_MODULES" /lib/modules || die "bind the module tree on /lib/modules"
for m in virtio_net overlay bridge br_netfilter veth nf_conntrack nf_nat nf_tables nft_compat \
         nft_chain_nat nft_ct nft_nat xt_conntrack xt_nat xt_MASQUERADE xt_addrtype xt_comment \
         xt_mark iptable_nat iptable_filter; do
  modprobe "$m" 2>/dev/null || log "modprobe $m failed (built in?)"
done
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 2>/dev/null

# --- network ----------------------------------------------------------------
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
ip link set eth0 up || die "no eth0 (virtio-net)"
ip addr add "$K8S_NODE_IP/24" dev eth0
ip route add default via "$K8S_HOST_IP"
ping -c1 -W5 "$K8S_HOST_IP" >/dev/null 2>&1 || log "warning: the host $K8S_HOST_IP does not answer ping"
# The only Service pods use is "kubernetes" (in-cluster config of the CSI
# sidecars): one DNAT rule stands in for kube-proxy, a Go daemon that would
# take CPU from the plugin under TCG for nothing else.
for chain in PREROUTING OUTPUT; do
  iptables -t nat -A "$chain" -d "$K8S_SERVICE_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$K8S_HOST_IP:${K8S_API_PORT:-6443}" || die "iptables DNAT for the kubernetes Service"
done

# --- mounts -----------------------------------------------------------------
mount --make-rshared / || die "mount --make-rshared /"
# The host made these mount points (its / is read-only here).
mount --bind "$D/kubelet" /var/lib/kubelet || die "bind /var/lib/kubelet"
mount --bind "$D/ublk-csi" /var/lib/ublk-csi || die "bind /var/lib/ublk-csi"
mount --bind "$D/cni" /var/lib/cni || die "bind /var/lib/cni"
mount --bind "$D/log-pods" /var/log/pods || die "bind /var/log/pods"
mount --bind "$D/log-containers" /var/log/containers || die "bind /var/log/containers"
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup || die "mount cgroup2"
echo "+cpu +cpuset +memory +pids +io" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
  || log "warning: could not enable every cgroup controller: $(cat /sys/fs/cgroup/cgroup.controllers)"

# --- containerd -------------------------------------------------------------
cat > "$S/cni/10-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$S/cni-ipam",
            "ranges": [[{"subnet": "$K8S_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
EOF
cat > "$S/containerd.toml" <<EOF
version = 2
root = "$D/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni"
EOF
containerd --config "$S/containerd.toml" > "$E2E_RESULT_DIR/containerd.log" 2>&1 &
cpid=$!
n=0
until ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1; do
  kill -0 $cpid 2>/dev/null || die "containerd exited: $(tail -5 "$E2E_RESULT_DIR/containerd.log")"
  [ $n -lt 600 ] || die "containerd not answering after 60 s"
  sleep 0.1; n=$((n + 1))
done
log "containerd up"
# The host put every image in containerd's store on the data disk.
n=$(ctr --address /run/containerd/containerd.sock -n k8s.io images ls -q | wc -l)
[ "$n" -gt 0 ] || die "containerd on the data disk holds no image"
log "containerd has $n images"

# --- kubelet ----------------------------------------------------------------
cat > "$S/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $K8S_RUN/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
tlsCertFile: $K8S_RUN/pki/kubelet.crt
tlsPrivateKeyFile: $K8S_RUN/pki/kubelet.key
failSwapOn: false
resolvConf: /etc/resolv.conf
# The guest's disk and memory are small: evict only when truly out.
evictionHard: {memory.available: "32Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
EOF
"$K8S_BIN/kubelet" --config="$S/kubelet.yaml" --kubeconfig="$K8S_RUN/kubelet.kubeconfig" \
  --hostname-override="$K8S_NODE_NAME" --node-ip="$K8S_NODE_IP" --v=1 \
  > "$E2E_RESULT_DIR/kubelet.log" 2>&1 &
kpid=$!
log "kubelet started"
touch "$E2E_RESULT_DIR/node-up"

# --- wait for the host ------------------------------------------------------
while [ ! -f "$E2E_RESULT_DIR/stop" ] && [ ! -f "$E2E_RESULT_DIR/reboot" ]; do
  kill -0 $kpid 2>/dev/null || { log "kubelet exited: $(tail -5 "$E2E_RESULT_DIR/kubelet.log")"; break; }
  # Run host-requested commands (node-side checks, kill -9 of a process).
  for c in "$E2E_RESULT_DIR"/cmd.*.sh; do
    [ -f "$c" ] || continue
    # .rc appears whole (written aside, then renamed): the host reads it as soon as it exists.
    bash "$c" > "$c.out" 2>&1; echo $? > "$c.rc.tmp"; mv "$c.rc.tmp" "$c.rc"; mv "$c" "$c.done"
  done
  sleep 0.2
done
log "stopping the node"
kill $kpid 2>/dev/null; wait $kpid 2>/dev/null
# Containers keep running without the kubelet; stop them as a node shutdown
# would, in an order that loses no data: the applications first while the
# plugin still serves their volumes, then their dirty data is written and the
# ublk-backed file systems are unmounted, then the plugin and the rest. (An
# ext4 left mounted on a ublk device whose server is gone keeps its dirty
# pages: the guest's last sync would wait for a server that never comes.)
ctr_k8s() { ctr --address /run/containerd/containerd.sock -n k8s.io "$@"; }
plugin_pidns=
p=$(pgrep -x ublk-csi | head -1) && plugin_pidns=$(readlink "/proc/$p/ns/pid")
stop_tasks() { # apps (all but the plugin's container) | all
  local id pid _ sig n
  # SIGTERM, then SIGKILL after 10 s: a shell as a container's PID 1 ignores SIGTERM.
  for sig in SIGTERM SIGKILL; do
    n=0
    while read -r id pid _; do
      [ "$1" = apps ] && [ -n "$plugin_pidns" ] && [ "$(readlink "/proc/$pid/ns/pid")" = "$plugin_pidns" ] && continue
      ctr_k8s tasks kill -s $sig "$id" 2>/dev/null && n=$((n + 1))
    done < <(ctr_k8s tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"')
    [ $n = 0 ] && break
    [ $sig = SIGTERM ] || { sleep 1; break; }
    for _ in $(seq 50); do
      ctr_k8s tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | grep -q . || break
      [ "$1" = apps ] && [ "$(ctr_k8s tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | wc -l)" -le 1 ] && break
      sleep 0.2
    done
  done
}
stop_tasks apps
timeout 120 sync || log "warning: sync did not finish in 120 s"
awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 2) ~ /^\/dev\/ublkb/) print $5; break } }' /proc/self/mountinfo \
  | sort -r | while read -r m; do timeout 60 umount "$m" || log "warning: umount $m failed"; done
stop_tasks all
kill $cpid 2>/dev/null; wait $cpid 2>/dev/null
timeout 120 sync || log "warning: the last sync did not finish in 120 s"
if [ -f "$E2E_RESULT_DIR/reboot" ]; then
  rm -f "$E2E_RESULT_DIR/reboot" "$E2E_RESULT_DIR/node-up"
  exit 75
fi
exit 0
