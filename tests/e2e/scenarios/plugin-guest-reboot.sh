# plugin-guest-reboot: the plugin's data dir is on a persistent disk. Boot 1:
# create and stage an ext4 volume and a raw block volume, write data, reboot
# without any cleanup (the devices die with the kernel). Boot 2: start the
# plugin, which re-creates both exports from their records (same device ids)
# before it reports ready; stage again as kubelet would (the old staging
# mount is gone); the data is intact.
# e2e-once: records to exports across a reboot: the same ADD_DEV on every kernel
# e2e-timeout: 300
# e2e-disk: 1G
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
. "$E2E_LIB"

PLUGIN=$BUILD_DIR/csi/ublk-csi
DATA=$E2E_DATA_DIR/plugin
SOCK=$E2E_SCRATCH/csi.sock
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$DATA"

modprobe ublk_drv 2>/dev/null
"$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$DATA" \
  --metrics-address=127.0.0.1:9813 --backend=ublk --mounter=real 2>>"$E2E_SCRATCH/plugin.log" &
PID=$!
csi_wait_ready 60 \
  || { tail -20 "$E2E_SCRATCH/plugin.log"; e2e_fail "boot $E2E_BOOT: plugin not ready"; }
STAGE=$E2E_SCRATCH/stage-f

if [ "$E2E_BOOT" = 1 ]; then
  e2e_step "boot 1: create, stage, write; then reboot without cleanup"
  FSV=$("${CTL[@]}" volume create fs --size=128Mi --fs-type=ext4 | csi_field volume_id)
  BLK=$("${CTL[@]}" volume create rb --size=64Mi --block | csi_field volume_id)
  "${CTL[@]}" node stage "$FSV" "$STAGE" --fs-type=ext4 || e2e_fail "stage ext4"
  "${CTL[@]}" node stage "$BLK" "$E2E_SCRATCH/stage-b" --block || e2e_fail "stage block"
  head -c 8M /dev/urandom > "$STAGE/data"
  head -c 8M /dev/urandom > "$DATA/blk.pat"
  dd if="$DATA/blk.pat" of="$(csi_dev_of "$BLK")" bs=1M oflag=direct status=none || e2e_fail "dd"
  sync
  echo "$FSV $BLK $(csi_dev_of "$FSV") $(csi_dev_of "$BLK") $(e2e_sha "$STAGE/data")" > "$DATA/expect"
  e2e_ok "wrote $(cat "$DATA/expect")"
  e2e_reboot
fi

read -r FSV BLK FDEV BDEV SUM < "$DATA/expect"
e2e_step "boot $E2E_BOOT: the plugin re-created the exports before reporting ready"
grep -o "recovery done: .*" "$E2E_SCRATCH/plugin.log" || e2e_check_failed "no recovery pass logged"
[ "$(csi_dev_of "$FSV")" = "$FDEV" ] && e2e_ok "ext4 volume back on $FDEV" \
  || e2e_check_failed "ext4 volume on '$(csi_dev_of "$FSV")', want $FDEV"
[ "$(csi_dev_of "$BLK")" = "$BDEV" ] && e2e_ok "block volume back on $BDEV" \
  || e2e_check_failed "block volume on '$(csi_dev_of "$BLK")', want $BDEV"
"${CTL[@]}" node stage "$FSV" "$STAGE" --fs-type=ext4 || e2e_check_failed "stage ext4 again"
"${CTL[@]}" node stage "$BLK" "$E2E_SCRATCH/stage-b" --block || e2e_check_failed "stage block again"
[ "$(e2e_sha "$STAGE/data")" = "$SUM" ] && e2e_ok "ext4 file intact" || e2e_check_failed "ext4 file differs"
[ "$(head -c 8M "$BDEV" | sha256sum | cut -d' ' -f1)" = "$(e2e_sha "$DATA/blk.pat")" ] \
  && e2e_ok "block data intact" || e2e_check_failed "block data differs"
"${CTL[@]}" node unstage "$FSV" "$STAGE" || e2e_check_failed "unstage ext4"
"${CTL[@]}" node unstage "$BLK" "$E2E_SCRATCH/stage-b" || e2e_check_failed "unstage block"
kill -TERM "$PID"; wait "$PID" 2>/dev/null
e2e_finish
