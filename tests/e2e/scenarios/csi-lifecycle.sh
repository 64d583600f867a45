# csi-lifecycle: the plugin on its unix socket, with the real ublk backend and
# real mounts, driven by ublk-csi-ctl through scripts/demo-lifecycle.sh:
# create, stage (mkfs + mount), publish, write + checksum, stats, expand online,
# snapshot, restore from it (checksum), unpublish, unstage, delete. Once with
# ext4 and once with xfs. The demo script exits non-zero on any failed step or
# checksum mismatch; this scenario also requires its closing "DEMO OK".
# e2e-timeout: 900
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
. "$E2E_LIB"

for fs in ext4 xfs; do
  e2e_step "life cycle with $fs"
  log=$E2E_SCRATCH/demo-$fs.log
  if FS=$fs "$SRC_DIR/scripts/demo-lifecycle.sh" "$BUILD_DIR" > "$log" 2>&1 && grep -q '^DEMO OK' "$log"; then
    e2e_ok "$fs: full life cycle, checksums match"
  else
    sed 's/^/    /' "$log" | tail -n 60
    e2e_check_failed "$fs: life cycle failed"
  fi
done

e2e_step "volume expansion"
update_size=$(timeout 30 "$BUILD_DIR/ublk/ublk-tool" features 2>/dev/null | sed -n 's/^update_size=//p')
WORK=$E2E_SCRATCH/expand
SOCK=$WORK/csi.sock
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$WORK/data"
fs_mib() { df -m --output=size "$1" | tail -1 | tr -d ' '; }
dev_mib() { echo $(( $(cat "/sys/block/$(basename "$1")/size") / 2048 )); }
"$BUILD_DIR/csi/ublk-csi" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$WORK/data" \
  --metrics-address=127.0.0.1:0 --backend=ublk --mounter=real 2>"$WORK/plugin.log" &
PID=$!
csi_wait_ready 30 || e2e_check_failed "expand: plugin not ready"
caps=$("${CTL[@]}" identity caps)
mode=$(echo "$caps" | sed -n 's/^ *type: \(ONLINE\|OFFLINE\)$/\1/p' | head -1)
want=OFFLINE
[ "$update_size" = 1 ] && want=ONLINE
if [ "$mode" = "$want" ]; then e2e_ok "kernel update_size=$update_size: plugin advertises $mode expansion"
else e2e_check_failed "kernel update_size=$update_size: plugin advertises '${mode:-no}' expansion, want $want"; fi

PAT=$E2E_SCRATCH/expand-pattern
e2e_make_pattern "$PAT" 8
VOL=$("${CTL[@]}" volume create grow --size=256Mi --fs-type=ext4 | csi_field volume_id)
if [ -n "$VOL" ] && "${CTL[@]}" node stage "$VOL" "$WORK/stage" --fs-type=ext4 >/dev/null \
    && "${CTL[@]}" node publish "$VOL" "$WORK/stage" "$WORK/pod" --fs-type=ext4 >/dev/null; then
  DEV=$(csi_dev_of "$VOL")
  cp "$PAT" "$WORK/pod/data" && sync
  before_fs=$(fs_mib "$WORK/pod")
  echo "  | $VOL on $DEV: device $(dev_mib "$DEV") MiB, ext4 $before_fs MiB"
  if [ "$mode" = ONLINE ]; then
    e2e_step "online: ControllerExpandVolume + NodeExpandVolume while published"
    "${CTL[@]}" volume expand "$VOL" 512Mi >/dev/null || e2e_check_failed "controller expand"
    "${CTL[@]}" node expand "$VOL" "$WORK/pod" 512Mi || e2e_check_failed "node expand (online)"
  else
    e2e_step "offline: unpublish, unstage, ControllerExpandVolume, stage, publish, NodeExpandVolume"
    "${CTL[@]}" node unpublish "$VOL" "$WORK/pod" >/dev/null || e2e_check_failed "unpublish"
    "${CTL[@]}" node unstage "$VOL" "$WORK/stage" >/dev/null || e2e_check_failed "unstage"
    "${CTL[@]}" volume expand "$VOL" 512Mi >/dev/null || e2e_check_failed "controller expand"
    "${CTL[@]}" node stage "$VOL" "$WORK/stage" --fs-type=ext4 >/dev/null || e2e_check_failed "stage again"
    "${CTL[@]}" node publish "$VOL" "$WORK/stage" "$WORK/pod" --fs-type=ext4 >/dev/null \
      || e2e_check_failed "publish again"
    DEV=$(csi_dev_of "$VOL")
    [ "$(dev_mib "$DEV")" = 512 ] && e2e_ok "staged again: $DEV is 512 MiB" \
      || e2e_check_failed "staged again: $DEV is $(dev_mib "$DEV") MiB, want 512"
    "${CTL[@]}" node expand "$VOL" "$WORK/pod" 512Mi || e2e_check_failed "node expand (offline)"
  fi
  after_fs=$(fs_mib "$WORK/pod")
  echo "  | after: device $(dev_mib "$DEV") MiB, ext4 $after_fs MiB"
  [ "$(dev_mib "$DEV")" = 512 ] && e2e_ok "$mode: device $DEV is 512 MiB" \
    || e2e_check_failed "$mode: device $DEV is $(dev_mib "$DEV") MiB, want 512"
  if [ "$after_fs" -gt $((before_fs + 200)) ]; then e2e_ok "$mode: ext4 grew from $before_fs to $after_fs MiB"
  else e2e_check_failed "$mode: ext4 is $after_fs MiB (was $before_fs), did not grow to ~512"; fi
  echo 3 > /proc/sys/vm/drop_caches
  [ "$(e2e_sha "$WORK/pod/data")" = "$(e2e_sha "$PAT")" ] && e2e_ok "$mode: data checksum intact" \
    || e2e_check_failed "$mode: data differs after expansion"
  csi_teardown "$VOL" "$WORK/stage" "$WORK/pod"
else
  e2e_check_failed "expand: create/stage/publish failed"
  tail -20 "$WORK/plugin.log"
fi
kill -TERM "$PID"; wait "$PID" 2>/dev/null
e2e_finish
