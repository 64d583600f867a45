# csi-lifecycle: the plugin on its unix socket, with the real ublk backend and
# real mounts, driven by ublk-csi-ctl through scripts/demo-lifecycle.sh:
# create, stage (mkfs + mount), publish, write + checksum, stats, expand online,
# snapshot, restore from it (checksum), unpublish, unstage, delete. Once with
# ext4 and once with xfs. The demo script exits non-zero on any failed step or
# checksum mismatch; this scenario also requires its closing "DEMO OK".
# e2e-timeout: 420
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
e2e_finish
