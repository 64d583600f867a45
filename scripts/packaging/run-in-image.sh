#!/bin/bash
# Runs the plugin image here: podman run IMAGE ARGS... with what this machine
# needs. crun fails on its hybrid cgroup v1/v2 layout ("cgroups in hybrid mode
# not supported") and both runtimes fail to raise RLIMIT_NOFILE/NPROC to
# podman's defaults, so: runc (from Debian, installed if missing) and lowered
# ulimits. No network: nothing the smoke test runs needs it. Seccomp
# unconfined, as the chart's privileged plugin container runs: the default
# profile blocks io_uring (ENOSYS), and the plugin's workers need it.
#
#   scripts/packaging/run-in-image.sh [podman run options] IMAGE [ARGS...]
#   scripts/packaging/run-in-image.sh ublk-csi:dev --version
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 [podman run options] IMAGE [ARGS...]" >&2; exit 2; }
if ! command -v runc >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends runc >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends runc >/dev/null; }
fi
# --rm unless the caller detaches (then it removes the container itself).
rm=--rm
for a in "$@"; do [ "$a" = --detach ] && rm=; done
exec podman run $rm --runtime runc --network none --security-opt seccomp=unconfined \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$@"
