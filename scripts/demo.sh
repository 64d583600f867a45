#!/bin/bash
# make demo: run the volume life cycle against real ublk devices: natively when
# this kernel has ublk_drv, otherwise inside a qemu guest booting Debian's 6.12
# kernel (the e2e harness's guest).
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "$BUILD" && pwd)
if [ -e /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; then
  echo "demo: host kernel $(uname -r) has ublk_drv; running natively"
  exec "$ROOT/scripts/demo-lifecycle.sh" "$BUILD"
fi
echo "demo: host kernel $(uname -r) has no ublk_drv; running in a qemu guest (Debian 6.12 kernel)"
exec "$ROOT/tests/e2e/run-in-guest.sh" --build-dir "$BUILD" "$ROOT/scripts/demo-lifecycle.sh" "$BUILD"
