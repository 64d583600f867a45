# harness-selftest: proves the harness itself, independent of the project's
# code: the guest kernel has ublk_drv (ublks_max raised from the scenario
# header), the host's tools run in the chroot, fio runs on null_blk, the data
# check catches a corrupted block on a real block device (loop), ext4 and xfs
# work, and a data disk survives a guest reboot.
# e2e-once: proves the harness, not the kernel's ublk
# e2e-timeout: 240
# e2e-ublks-max: 128
# e2e-disk: 64M
. "$E2E_LIB"

if [ "$E2E_BOOT" = 2 ]; then
  e2e_step "boot 2: the data disk kept what boot 1 wrote"
  want=$(cat "$E2E_RESULT_DIR/token" 2>/dev/null)
  got=$(cat "$E2E_DATA_DIR/token" 2>/dev/null)
  if [ -n "$want" ] && [ "$want" = "$got" ]; then e2e_ok "data disk persisted across the reboot"
  else e2e_check_failed "data disk token after reboot is '$got', want '$want'"; fi
  e2e_finish
fi

e2e_step "guest kernel and modules"
echo "kernel $(uname -r)"
[ -c /dev/ublk-control ] && e2e_ok "/dev/ublk-control exists" \
  || e2e_check_failed "/dev/ublk-control missing (ublk_drv not loaded)"
max=$(cat /sys/module/ublk_drv/parameters/ublks_max 2>/dev/null)
[ "$max" = 128 ] && e2e_ok "ublks_max=128 from the scenario header" \
  || e2e_check_failed "ublks_max is '$max', want 128"
for m in ext4 xfs loop null_blk 9p virtio_blk; do
  [ -d /sys/module/$m ] || e2e_check_failed "module $m not loaded"
done
grep -qw ext4 /proc/filesystems && grep -qw xfs /proc/filesystems \
  && e2e_ok "ext4 and xfs registered" || e2e_check_failed "ext4/xfs missing from /proc/filesystems"

e2e_step "fio on null_blk"
if out=$(timeout 60 fio --name=nb --filename=/dev/nullb0 --rw=randread --bs=4k --iodepth=32 \
    --ioengine=io_uring --direct=1 --runtime=2 --time_based --output-format=terse 2>&1); then
  iops=$(echo "$out" | tail -1 | cut -d';' -f8)
  if [ "${iops:-0}" -gt 0 ] 2>/dev/null; then e2e_ok "fio null_blk randread 4k QD32: $iops IOPS"
  else e2e_check_failed "fio reported no read IOPS: $out"; fi
else
  e2e_check_failed "fio on /dev/nullb0 failed: $out"
fi

e2e_step "data check on loop: passes on good data, fails on a corrupted block"
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 8
img=$E2E_SCRATCH/loop.img
truncate -s 512M "$img"
if loopdev=$(losetup -f --show "$img"); then
  if e2e_data_check "$loopdev" "$PAT"; then e2e_ok "data check passes on intact data"
  else e2e_check_failed "data check failed on intact data"; fi
  # Flip one byte behind the device's back (the loop device reads the backing
  # file's page cache; the check reads the device with O_DIRECT).
  byte=$(od -An -tu1 -j 4097 -N1 "$img" | tr -d ' ')
  printf "\\$(printf %03o $(( (byte + 1) % 256 )))" \
    | dd of="$img" bs=1 seek=4097 conv=notrunc status=none
  if e2e_verify_dev "$loopdev" "$PAT"; then
    e2e_check_failed "data check PASSED although one byte of the device was changed"
  else
    e2e_ok "data check caught a one-byte corruption"
  fi
  for fs in ext4 xfs; do
    if e2e_fs_check "$loopdev" "$fs" "$PAT"; then e2e_ok "$fs on loop: write/remount/checksum"
    else e2e_check_failed "$fs on loop"; fi
  done
  losetup -d "$loopdev"
else
  e2e_check_failed "losetup failed"
fi

e2e_step "data disk: write a token, reboot"
if [ -z "$E2E_DATA_DIR" ] || ! mountpoint -q "$E2E_DATA_DIR"; then
  e2e_check_failed "no data disk mounted at '$E2E_DATA_DIR'"
  e2e_finish
fi
[ "$E2E_FAILURES" = 0 ] || e2e_finish
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" > "$E2E_DATA_DIR/token"
echo "$token" > "$E2E_RESULT_DIR/token"
e2e_reboot
