#!/bin/bash
# Kubernetes end to end: a one-node cluster whose node (containerd + kubelet)
# runs in the e2e guest against the real ublk kernel, the control plane
# natively on the host, the chart installed with `helm install` and its
# defaults, and scenarios driven from the host with kubectl and helm.
#
# usage: tests/e2e/k8s/run.sh [--build-dir DIR] [--kernel 6.12|7] [-v] [--list]
#                             [--prepare] [SCENARIO...]
#   --prepare: only the host-side set-up (packages, kernel, node modules,
#   tools, helm, images, the node disk's seed), all cached for the next run;
#   no guest, no cluster. CI runs it in the background beside a build.
#   no SCENARIO: all of tests/e2e/k8s/scenarios/*.sh, in name order (they
#   build on each other: install first), but those marked "# k8s: on demand"
#   (110-rbd-pvc: `run.sh 10-install 110-rbd-pvc`).
# Needs root (apt, a tap device, podman), the Kubernetes bundle (../shared/k8s
# beside the project or K8S_BUNDLE_DIR: test tools, never copied into the
# tree) and the npm registry once (helm). The plugin image is made by
# scripts/build-image.sh: K8S_IMAGE=binaries (default) puts DIR's binaries on
# the Dockerfile's runtime stage; source compiles in the image (`make image`);
# existing uses the ublk-csi image podman already has.
# Prints PASS/FAIL per scenario and "N passed, N failed, N skipped" last;
# logs in DIR/e2e-k8s/run/ (logs/, share/ with the node's kubelet and
# containerd logs, console.log).
set -uo pipefail

build_dir=./build
series=6.12
verbose=0
list=0
prepare=0
names=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    --kernel) series=${2:?}; shift 2 ;;
    --kernel=*) series=${1#*=}; shift ;;
    -v|--verbose) verbose=1; shift ;;
    --list) list=1; shift ;;
    --prepare) prepare=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "k8s/run.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
HERE=$(dirname "$(realpath "$0")")
if [ ${#names[@]} = 0 ]; then
  # Numeric order (100-... after 90-...); a scenario marked "# k8s: on demand"
  # (slow: 110-rbd-pvc boots a Ceph cluster in the node) runs only by name.
  while read -r f; do
    grep -q '^# k8s: on demand' "$f" || names+=("$(basename "$f" .sh)")
  done < <(printf '%s\n' "$HERE"/scenarios/*.sh | sort -V)
fi
if [ $list = 1 ]; then printf '%s\n' "${names[@]}"; exit 0; fi
for n in "${names[@]}"; do
  [ -f "$HERE/scenarios/$n.sh" ] || { echo "k8s/run.sh: no scenario $n" >&2; exit 2; }
done

mkdir -p "$build_dir" || exit 2
E2E_BUILD_DIR=$(realpath "$build_dir")
E2E_KERNEL_SERIES=$series
# shellcheck source=../lib/host.sh
. "$HERE/../lib/host.sh"
# shellcheck source=lib/cluster.sh
. "$HERE/lib/cluster.sh"
[ "$(id -u)" = 0 ] || e2e_die "needs root (tap device, podman, apt)"
e2e_check_visible "build dir" "$E2E_BUILD_DIR"

T_ALL=$(e2e_now)
K8S_RUN=$E2E_WORK_DIR/e2e-k8s/run
[ "$E2E_KERNEL_SERIES" = 7 ] && K8S_RUN=$E2E_WORK_DIR/e2e-k8s/run-kernel-7
rm -rf "$K8S_RUN"
mkdir -p "$K8S_RUN/logs" "$K8S_RUN/share"
share=$K8S_RUN/share

e2e_ensure_packages
k8s_ensure_packages
e2e_ensure_kernel
k8s_ensure_modules
k8s_ensure_tools
k8s_ensure_helm
k8s_ensure_images
e2e_log "kernel $E2E_KVER; node modules in $K8S_MODULES"
if [ $prepare = 1 ]; then
  k8s_ensure_seed
  e2e_log "prepared in $(e2e_secs "$T_ALL")s (images, node disk seed: $K8S_SEED)"
  exit 0
fi

# Mount points the node binds its data disk onto (the guest sees the host's /
# read-only and cannot make them): empty dirs, the paths a node uses.
# /lib/modules too: a host without kernel modules (a container) has none, and
# the node binds its kernel's module tree there (the chart's modprobe init
# container reads it).
for d in /var/lib/kubelet /var/lib/ublk-csi /var/lib/cni /var/log/pods /var/log/containers /lib/modules; do
  mkdir -p "$d" || e2e_die "mkdir $d"
done

cleanup() {
  trap - EXIT INT TERM
  touch "$share/stop" 2>/dev/null
  if [ -n "${BOOT_PID:-}" ]; then
    # The node stops its kubelet and containers, then the guest powers off.
    local n=0
    while kill -0 "$BOOT_PID" 2>/dev/null && [ $n -lt 60 ]; do sleep 0.5; n=$((n + 1)); done
    pkill -f "ifname=$K8S_NET_TAP," 2>/dev/null
    wait "$BOOT_PID" 2>/dev/null
  fi
  k8s_control_plane_down
  k8s_net_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM

k8s_make_pki
k8s_net_up
k8s_control_plane_up

{
  printf 'export K8S_RUN=%q K8S_MODULES=%q K8S_BIN=%q K8S_IMAGES=%q\n' "$K8S_RUN" "$K8S_MODULES" "$K8S_BIN" "$K8S_IMAGES"
  printf 'export K8S_HOST_IP=%q K8S_NODE_IP=%q K8S_NODE_NAME=%q K8S_SERVICE_IP=%q K8S_POD_CIDR=%q K8S_API_PORT=%q\n' \
    "$K8S_HOST_IP" "$K8S_NODE_IP" "$K8S_NODE_NAME" "$K8S_SERVICE_IP" "$K8S_POD_CIDR" "$K8S_API_PORT"
} > "$share/env"
e2e_write_keep "$share" "$E2E_SRC_DIR" "$E2E_BUILD_DIR" "$E2E_WORK_DIR"
e2e_write_job "$share" k8s-node 1 1 "$HERE/node.sh"
k8s_make_node_disk "$K8S_RUN/disk.img"

# The node: boots again when a scenario asks for a reboot (node.sh exits 75),
# until the host writes share/stop. Watchdog: K8S_TIMEOUT (s) per boot.
# A guest kernel that dies of "Oops: int3" before the first scenario starts
# is TCG's, not ours: an int3 left by the kernel's live patching of a
# static-key site (text_poke_bp) hit on another vCPU (seen once under load,
# 31 s into the boot while the kubelet made its cgroups; the e2e harness
# retries the same death before /init). The node gets a fresh disk and
# boots again, up to twice (session 17: two such deaths in a row, 30 s and
# 22 s into the boot), and the log says so. Any other Oops fails the run.
(
  boot=1 kernel_retry=0
  while :; do
    e2e_write_job "$share" k8s-node "$boot" 1 "$HERE/node.sh"
    E2E_NET_TAP=$K8S_NET_TAP E2E_MEM=${E2E_MEM:-3072} \
      e2e_boot "$K8S_RUN" "${K8S_TIMEOUT:-3600}" "$verbose" 1 ""
    echo "boot $boot: rc=${E2E_GUEST_RC:-none} ${E2E_BOOT_PROBLEM:-} (${E2E_BOOT_SECS}s)" >> "$share/boots"
    if [ "$kernel_retry" -lt 2 ] && [ ! -f "$share/stop" ] && [ ! -f "$share/scenarios-started" ] \
        && died=$(e2e_tcg_int3_death "$K8S_RUN/console.boot.log"); then
      kernel_retry=$((kernel_retry + 1))
      e2e_log "node: the guest kernel died before the first scenario ($died); fresh node disk, booting again"
      echo "boot $boot: guest kernel died ($died); booting again with a fresh disk" >> "$share/boots"
      rm -f "$share/node-up" "$share/node-failed"
      k8s_make_node_disk "$K8S_RUN/disk.img"
      boot=1
      continue
    fi
    [ "${E2E_GUEST_RC:-}" = 75 ] && [ ! -f "$share/stop" ] || break
    boot=$((boot + 1))
  done
) &
BOOT_PID=$!

# shellcheck source=lib/k8s.sh
. "$HERE/lib/k8s.sh"
T_NODE=$(e2e_now)
if ! k8s_wait_node_ready 600; then
  echo "FAIL node: not Ready within 600 s"
  tail -20 "$share/kubelet.log" 2>/dev/null
  tail -20 "$K8S_RUN/console.boot.log" 2>/dev/null
  echo "0 passed, ${#names[@]} failed, 0 skipped"
  exit 1
fi
e2e_log "node Ready $(e2e_secs "$T_NODE")s after boot start"

passed=0 failed=0 skipped=0
summary=()
touch "$share/scenarios-started"
for n in "${names[@]}"; do
  t0=$(e2e_now)
  mkdir -p "$K8S_RUN/scenarios"
  log=$K8S_RUN/scenarios/$n.log
  ( K8S_SCENARIO=$n; . "$HERE/scenarios/$n.sh" ) > "$log" 2>&1
  rc=$?
  secs=$(e2e_secs "$t0")
  case $rc in
    0) echo "PASS $n (${secs}s)"; passed=$((passed + 1)) ;;
    77) echo "SKIP $n: $(tail -1 "$log")"; skipped=$((skipped + 1)) ;;
    *) echo "FAIL $n (${secs}s, rc $rc; log $log)"; tail -25 "$log" | sed 's/^/  | /'; failed=$((failed + 1)) ;;
  esac
  summary+=("$n ${secs}s")
done
echo "timing: ${summary[*]}; total $(e2e_secs "$T_ALL")s"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
