# engine-basic: the engine serving real ublk devices through ublk-tool.
# For each copy mode (user_copy, get_data, and zero_copy where the kernel has
# UBLK_F_AUTO_BUF_REG) x command encoding (ioctl, legacy):
# a file-backed export (sparse file on tmpfs), raw O_DIRECT data check (also
# against the backing file), ext4 and xfs with a remount checksum, SIGTERM stop
# and the device gone. Then the null target (in the detected mode: zero copy
# on 7.x zero-fills through a fixed buffer): reads return zeros. ext4 and xfs
# run for the ioctl encoding only (a file system does not depend on the
# command encoding; it keeps the scenario within the CI budget under TCG);
# the legacy encoding gets the raw data checks here and ext4 in emulate-6.1.
# e2e-timeout: 900
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

SIZE=$((512 * 1024 * 1024))   # mkfs.xfs needs >= 300 MiB
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 8

e2e_step "ublk-tool features"
timeout 30 "$UBLK_TOOL" features | tee "$E2E_SCRATCH/features" || e2e_check_failed "ublk-tool features exited $?"
copies="user_copy get_data"
# Zero copy (UBLK_F_AUTO_BUF_REG, 6.16+) where the kernel has it.
if grep -qx 'auto_buf_reg=1' "$E2E_SCRATCH/features"; then copies="zero_copy $copies"; fi

for copy in $copies; do
  for enc in ioctl legacy; do
    combo="copy_mode=$copy encoding=$enc"
    back=$E2E_SCRATCH/backing-$copy-$enc.img
    e2e_step "$combo: serve file target"
    if ! ublk_serve "$copy-$enc" --target=file --backing="$back" --size=$SIZE --create \
        --copy_mode=$copy --encoding=$enc; then
      e2e_check_failed "$combo: export did not come up"
      continue
    fi
    e2e_ok "$combo: $SRV_DEV ready"
    sed 's/^/  | /' "$SRV_LOG" | head -5

    blk=$(basename "$SRV_DEV")
    sectors=$(cat "/sys/block/$blk/size" 2>/dev/null)
    if [ "$sectors" = $((SIZE / 512)) ]; then e2e_ok "$combo: size $SIZE bytes"
    else e2e_check_failed "$combo: /sys/block/$blk/size is '$sectors', want $((SIZE / 512))"; fi

    e2e_step "$combo: raw data check at 0 and at the end of the device"
    if e2e_data_check "$SRV_DEV" "$PAT" 0 && e2e_data_check "$SRV_DEV" "$PAT" $((SIZE / 1048576 - 8)); then
      e2e_ok "$combo: raw data check"
    else
      e2e_check_failed "$combo: raw data check"
    fi
    # The data must have reached the backing file, not just some cache.
    if [ "$(head -c 8M "$back" | sha256sum | cut -d' ' -f1)" = "$(e2e_sha "$PAT")" ]; then
      e2e_ok "$combo: backing file holds the data"
    else
      e2e_check_failed "$combo: backing file's first 8 MiB differ from the data written"
    fi

    fss=
    [ $enc = ioctl ] && fss="ext4 xfs"
    for fs in $fss; do
      e2e_step "$combo: $fs"
      if e2e_fs_check "$SRV_DEV" "$fs" "$PAT"; then e2e_ok "$combo: $fs write/remount/checksum"
      else e2e_check_failed "$combo: $fs"; fi
    done

    e2e_step "$combo: SIGTERM"
    if ublk_stop TERM; then e2e_ok "$combo: stopped, $SRV_DEV gone"
    else e2e_check_failed "$combo: stop"; fi
    rm -f "$back"
  done
done

e2e_step "null target"
if ublk_serve null --target=null --size=$((256 * 1024 * 1024)); then
  e2e_ok "null: $SRV_DEV ready"
  zeros=$(head -c 16M /dev/zero | sha256sum | cut -d' ' -f1)
  got=$(timeout 60 dd if="$SRV_DEV" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  if [ "$got" = "$zeros" ]; then e2e_ok "null: reads return zeros"
  else e2e_check_failed "null: 16 MiB read is not all zeros"; fi
  if timeout 60 dd if="$PAT" of="$SRV_DEV" bs=1M oflag=direct status=none; then e2e_ok "null: write accepted"
  else e2e_check_failed "null: write failed"; fi
  if ublk_stop TERM; then e2e_ok "null: stopped, $SRV_DEV gone"
  else e2e_check_failed "null: stop"; fi
else
  e2e_check_failed "null: export did not come up"
fi

e2e_finish
