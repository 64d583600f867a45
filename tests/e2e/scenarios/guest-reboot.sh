# guest-reboot (engine level, through ublk-tool): an export asks for a fixed
# device id (--dev_id) and keeps its backing file on the persistent data disk;
# boot 1 writes data through it and a file system on it, the guest reboots
# (nothing is stopped cleanly: the devices die with the guest), and boot 2
# serves the same backing file with the same id: the device path is the same
# and the data and the file system are intact. The plugin-level version (the
# plugin re-creating exports from its persisted records) extends this.
# e2e-once: device ids and backing files across a reboot: the same ADD_DEV on every kernel
# e2e-timeout: 300
# e2e-disk: 768M
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

ID=7
SIZE=$((512 * 1024 * 1024))
BACK=$E2E_DATA_DIR/vol-$ID.img
PAT=$E2E_DATA_DIR/pattern
MNT=$E2E_SCRATCH/mnt

if [ "$E2E_BOOT" = 1 ]; then
  e2e_step "boot 1: serve dev_id=$ID from the data disk, write data and ext4"
  e2e_make_pattern "$PAT" 8
  ublk_serve boot1 --target=file --backing="$BACK" --size=$SIZE --create --dev_id=$ID \
    || e2e_fail "export did not come up"
  [ "$SRV_DEV" = /dev/ublkb$ID ] && e2e_ok "got /dev/ublkb$ID" \
    || e2e_check_failed "asked for dev_id=$ID, got $SRV_DEV"
  # Raw data at the end of the device, a file system at the start.
  e2e_data_check "$SRV_DEV" "$PAT" $((SIZE / 1048576 - 8)) && e2e_ok "raw data written" \
    || e2e_check_failed "raw data check before the reboot"
  if timeout 120 mkfs.ext4 -q -F -b 4096 -E nodiscard "$SRV_DEV" $(( (SIZE - 16 * 1048576) / 4096 )); then
    mkdir -p "$MNT"
    timeout 60 mount -t ext4 "$SRV_DEV" "$MNT" && cp "$PAT" "$MNT/data" && sync \
      && timeout 60 umount "$MNT" && e2e_ok "ext4 written" || e2e_check_failed "ext4 before the reboot"
  else
    e2e_check_failed "mkfs.ext4 before the reboot"
  fi
  sync
  [ "$E2E_FAILURES" = 0 ] || e2e_finish
  # The server keeps running: the reboot takes the device down with the guest.
  e2e_reboot
fi

e2e_step "boot 2: serve the same backing file with dev_id=$ID again"
[ -f "$BACK" ] || e2e_fail "backing file $BACK did not survive the reboot"
ublk_serve boot2 --target=file --backing="$BACK" --dev_id=$ID || e2e_fail "export did not come up after the reboot"
[ "$SRV_DEV" = /dev/ublkb$ID ] && e2e_ok "same device path /dev/ublkb$ID" \
  || e2e_check_failed "after the reboot got $SRV_DEV, want /dev/ublkb$ID"
sectors=$(cat "/sys/block/$(basename "$SRV_DEV")/size" 2>/dev/null)
[ "$sectors" = $((SIZE / 512)) ] && e2e_ok "size kept (from the backing file)" \
  || e2e_check_failed "size after the reboot is '$sectors' sectors, want $((SIZE / 512))"
e2e_verify_dev "$SRV_DEV" "$PAT" $((SIZE / 1048576 - 8)) && e2e_ok "raw data intact" \
  || e2e_check_failed "raw data after the reboot"
mkdir -p "$MNT"
if timeout 60 mount -t ext4 "$SRV_DEV" "$MNT"; then
  [ "$(e2e_sha "$MNT/data" 2>/dev/null)" = "$(e2e_sha "$PAT")" ] && e2e_ok "ext4 file intact" \
    || e2e_check_failed "ext4 file after the reboot differs"
  timeout 60 umount "$MNT" || e2e_check_failed "umount"
else
  e2e_check_failed "mount ext4 after the reboot"
fi
ublk_stop TERM && e2e_ok "stopped, device gone" || e2e_check_failed "stop"
e2e_finish
