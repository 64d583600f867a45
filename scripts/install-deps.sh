#!/bin/bash
# Installs the Debian bookworm packages the build, the unit tests and the
# checks need (clang-14 for the TSan and thread-safety build and the fuzzers,
# llvm-14 for llvm-symbolizer in TSan reports,
# clang-format-14 and shellcheck for format-check; librbd-dev/librados-dev for
# the RBD target, ceph-mon/ceph-osd/ceph-common/rbd-nbd for the single-node
# test cluster of tests/e2e/lib/ceph.sh), only those missing (so a
# re-run is quick and offline). Needs root.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      liburing-dev libabsl-dev prometheus-cpp-dev libcivetweb-dev
      libgtest-dev libgmock-dev libbenchmark-dev libgoogle-glog-dev libgflags-dev
      e2fsprogs xfsprogs util-linux
      clang-14 libclang-rt-14-dev llvm-14 clang-format-14 shellcheck
      librbd-dev librados-dev ceph-mon ceph-osd ceph-common rbd-nbd)
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
