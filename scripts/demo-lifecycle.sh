#!/bin/bash
# The demo's main job: start the plugin on a local socket and drive a volume's
# life cycle with ublk-csi-ctl, printing each step. Needs ublk_drv loaded.
set -euo pipefail
BUILD=${1:?build dir}
WORK=$(mktemp -d /tmp/ublk-csi-demo.XXXXXX)
SOCK=$WORK/csi.sock
mkdir -p "$WORK/data"
CTL=("$BUILD/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ ublk-csi-ctl %s\n' "$*"; "${CTL[@]}" "$@"; }

step "start the plugin (node demo-node, data dir $WORK/data)"
"$BUILD/csi/ublk-csi" --node-id=demo-node --endpoint="unix://$SOCK" \
  --data-dir="$WORK/data" --metrics-address=127.0.0.1:0 --log-level=info \
  2> "$WORK/plugin.log" &
PLUGIN=$!
cleanup() { kill -TERM $PLUGIN 2>/dev/null; wait $PLUGIN 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "plugin did not start:"; cat "$WORK/plugin.log"; exit 1; }

step "Identity service"
run identity info
run identity caps
run identity probe

step "stop the plugin (SIGTERM): it removes its socket"
kill -TERM $PLUGIN; wait $PLUGIN; trap - EXIT
[ ! -e "$SOCK" ] && echo "socket removed"
echo; echo "plugin log:"; sed 's/^/  /' "$WORK/plugin.log"
rm -rf "$WORK"
echo; echo "DEMO OK"
