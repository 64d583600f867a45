#!/bin/bash
# The demo's main job: start the plugin on a local socket and drive a volume's
# whole life cycle with ublk-csi-ctl, printing each step: create, stage (mkfs +
# mount), publish, write and read a file (checksum), stats, expand (online,
# or offline where the kernel cannot grow a live device),
# snapshot, restore from the snapshot and check the data, unpublish, unstage,
# delete.
#
#   scripts/demo-lifecycle.sh BUILD_DIR            real ublk devices (root, ublk_drv loaded)
#   BACKEND=fake scripts/demo-lifecycle.sh BUILD   control plane only: no device, no
#                                                  mount (fake backend + fake mounter);
#                                                  data is written to the backing file
#   FS=xfs ...                                     filesystem to use (default ext4)
set -euo pipefail
BUILD=${1:?usage: demo-lifecycle.sh BUILD_DIR}
BACKEND=${BACKEND:-ublk}
FS=${FS:-ext4}
WORK=$(mktemp -d /tmp/ublk-csi-demo.XXXXXX)
SOCK=$WORK/csi.sock
mkdir -p "$WORK/data"
CTL=("$BUILD/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ ublk-csi-ctl %s\n' "$*"; "${CTL[@]}" "$@"; }
# The first quoted value of `field:` in protobuf text output.
field() { sed -n "s/^ *$1: \"\(.*\)\"$/\1/p" | head -1; }
fail() { echo "DEMO FAILED: $*"; echo "plugin log:"; sed 's/^/  /' "$WORK/plugin.log"; exit 1; }

MOUNTER=real
[ "$BACKEND" = fake ] && MOUNTER=fake
step "start the plugin (node demo-node, backend $BACKEND, mounter $MOUNTER, data dir $WORK/data)"
"$BUILD/csi/ublk-csi" --node-id=demo-node --endpoint="unix://$SOCK" \
  --data-dir="$WORK/data" --metrics-address=127.0.0.1:0 --log-level=info \
  --backend="$BACKEND" --mounter="$MOUNTER" --overcommit-ratio=4 2> "$WORK/plugin.log" &
# --overcommit-ratio=4: the demo's two 1 GiB volumes are sparse files on a
# small /tmp; at the default ratio 1 the thin pool never promises more than
# the disk holds, and the restore would be refused (RESOURCE_EXHAUSTED).
PLUGIN=$!
cleanup() {
  # Leave nothing mounted if a step failed half way.
  for m in "$WORK/pod/vol" "$WORK/staging" "$WORK/staging2"; do
    mountpoint -q "$m" 2>/dev/null && umount "$m" || true
  done
  kill -TERM $PLUGIN 2>/dev/null; wait $PLUGIN 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || fail "plugin did not start"

step "Identity, Node and Controller capabilities"
run identity info
run identity probe || fail "plugin not ready (see the message above)"
run node info
run controller caps

step "create a 512Mi $FS volume"
OUT=$(run volume create demo-vol --size=512Mi --fs-type="$FS") || fail "create"
echo "$OUT"
VOL=$(echo "$OUT" | field volume_id)
[ -n "$VOL" ] || fail "no volume_id"
run volume create demo-vol --size=512Mi --fs-type="$FS" | grep -q "$VOL" && echo "(repeat create: same volume $VOL)"

step "stage $VOL (export, mkfs.$FS on first use, mount at the staging path)"
run node stage "$VOL" "$WORK/staging" --fs-type="$FS" --mount-flags=noatime || fail "stage"
run status

step "publish into a pod directory"
run node publish "$VOL" "$WORK/staging" "$WORK/pod/vol" --fs-type="$FS" || fail "publish"

DEV=$("${CTL[@]}" status | sed -n "s/.*$VOL.*device=\([^ ]*\).*/\1/p")
step "write 8 MiB and read it back (checksum)"
if [ "$BACKEND" = fake ]; then
  echo "(fake backend: nothing is mounted; writing the stand-in device $DEV, i.e. the backing file)"
  dd if=/dev/urandom of="$DEV" bs=1M count=8 conv=notrunc,fsync status=none
  SUM=$(head -c 8M "$DEV" | sha256sum | cut -d' ' -f1)
else
  dd if=/dev/urandom of="$WORK/pod/vol/data" bs=1M count=8 conv=fsync status=none
  SUM=$(sha256sum < "$WORK/pod/vol/data" | cut -d' ' -f1)
  sync
  echo 3 > /proc/sys/vm/drop_caches
  [ "$(sha256sum < "$WORK/pod/vol/data" | cut -d' ' -f1)" = "$SUM" ] || fail "read-back checksum differs"
fi
echo "sha256 $SUM"

step "volume stats"
run node stats "$VOL" "$WORK/pod/vol" || fail "stats"

step "expand to 1Gi (controller grows the file, node grows device and filesystem)"
if OUT=$(run volume expand "$VOL" 1Gi 2>&1); then
  echo "$OUT"
  run node expand "$VOL" "$WORK/pod/vol" 1Gi || fail "node expand (online)"
elif echo "$OUT" | grep -q "OFFLINE expansion only"; then
  echo "$OUT"
  echo "(this kernel cannot grow a live ublk device (UPDATE_SIZE is 6.16+): offline expansion)"
  run node unpublish "$VOL" "$WORK/pod/vol" || fail "unpublish for offline expansion"
  run node unstage "$VOL" "$WORK/staging" || fail "unstage for offline expansion"
  run volume expand "$VOL" 1Gi || fail "controller expand (offline)"
  run node stage "$VOL" "$WORK/staging" --fs-type="$FS" || fail "stage again"
  run node publish "$VOL" "$WORK/staging" "$WORK/pod/vol" --fs-type="$FS" || fail "publish again"
  run node expand "$VOL" "$WORK/pod/vol" 1Gi || fail "node expand (offline)"
else
  echo "$OUT"
  fail "controller expand"
fi
run node stats "$VOL" "$WORK/pod/vol"
[ "$BACKEND" = fake ] || df -h "$WORK/pod/vol"

step "snapshot, then restore it into a new volume and check the data"
OUT=$(run snapshot create "$VOL" demo-snap) || fail "snapshot"
echo "$OUT"
# The volume is mounted: its filesystem must have been frozen for the copy.
grep -q "frozen for the copy" "$WORK/plugin.log" && grep -q "thawed" "$WORK/plugin.log" \
  || fail "the snapshot of a mounted volume was not taken with its filesystem frozen and thawed"
echo "(filesystem frozen for the copy, then thawed: $(grep -c 'frozen for the copy' "$WORK/plugin.log") freeze(s) in the plugin log)"
SNAP=$(echo "$OUT" | field snapshot_id)
OUT=$(run volume create demo-restored --size=1Gi --fs-type="$FS" --from-snapshot="$SNAP") || fail "restore"
RESTORED=$(echo "$OUT" | field volume_id)
echo "restored volume $RESTORED"
run node stage "$RESTORED" "$WORK/staging2" --fs-type="$FS" || fail "stage restored"
if [ "$BACKEND" = fake ]; then
  RDEV=$("${CTL[@]}" status | sed -n "s/.*$RESTORED.*device=\([^ ]*\).*/\1/p")
  GOT=$(head -c 8M "$RDEV" | sha256sum | cut -d' ' -f1)
else
  GOT=$(sha256sum < "$WORK/staging2/data" | cut -d' ' -f1)
fi
echo "sha256 $GOT (restored)"
[ "$GOT" = "$SUM" ] || fail "restored data differs from the original"
echo "restored data matches"
run status

step "unpublish, unstage (both volumes), delete snapshot and volumes"
run node unpublish "$VOL" "$WORK/pod/vol" || fail "unpublish"
run node unstage "$VOL" "$WORK/staging" || fail "unstage"
run node unstage "$RESTORED" "$WORK/staging2" || fail "unstage restored"
run snapshot delete "$SNAP" || fail "delete snapshot"
run volume delete "$VOL" || fail "delete"
run volume delete "$RESTORED" || fail "delete restored"
run volume delete "$VOL" && echo "(repeat delete: still OK)"
run volume list

step "stop the plugin (SIGTERM): it removes its socket"
kill -TERM $PLUGIN; wait $PLUGIN; trap - EXIT
[ ! -e "$SOCK" ] && echo "socket removed"
echo; echo "plugin log:"; sed 's/^/  /' "$WORK/plugin.log"
rm -rf "$WORK"
echo; echo "DEMO OK"
