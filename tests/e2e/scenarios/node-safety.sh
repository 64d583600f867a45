# node-safety: the Node service acts only on what a volume owns (issue 16,
# items 1-3 and 10), with real ublk devices and real mounts, driven by
# ublk-csi-ctl:
#  - a block publish whose target's parent is a symlink is refused, creates
#    nothing at the link's destination and leaks no mount;
#  - unpublish of a path the volume never published leaves another volume's
#    pod mount, an unrelated file and an unrelated empty dir alone;
#  - unstage of a volume that is not staged leaves another volume's staging
#    mount there;
#  - a block publish onto an existing file with content, then unpublish,
#    keeps the file and its content;
#  - unstage and delete refuse while a mount the records do not know of
#    still holds the device;
#  - a bind/remount mount flag is INVALID_ARGUMENT before any device exists,
#    and a stage the kernel fails leaves no device and no staging dir.
# At the end no ublk device and no mount under the scenario's dir remain.
# e2e-once: mount and path handling of the Node service
# e2e-timeout: 360
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
. "$E2E_LIB"

W=$E2E_SCRATCH/ns
SOCK=$W/csi.sock
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$W/data"
chmod 0700 "$W/data"
"$BUILD_DIR/csi/ublk-csi" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$W/data" \
  --metrics-address=127.0.0.1:0 --backend=ublk --mounter=real 2>"$W/plugin.log" &
PID=$!
e2e_wait_for 30 timeout 5 "${CTL[@]}" identity probe >/dev/null 2>&1 || {
  tail -20 "$W/plugin.log"; e2e_check_failed "plugin not ready"; e2e_finish; }

devices() { ls /dev/ublkb* 2>/dev/null | wc -l; }
mounts_under() { awk -v p="$W/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo; }
is_mnt() { mountpoint -q "$1"; }
expect() { # DESCRIPTION CMD...: CMD must succeed
  local what=$1; shift
  if "$@"; then e2e_ok "$what"; else e2e_check_failed "$what"; fi
}
expect_not() { # DESCRIPTION CMD...: CMD must fail
  local what=$1; shift
  if "$@"; then e2e_check_failed "$what"; else e2e_ok "$what"; fi
}

e2e_step "setup: block volume A, mount volume B (staged + published), volume C never staged"
A=$("${CTL[@]}" volume create a --size=64Mi --block | csi_field volume_id)
B=$("${CTL[@]}" volume create b --size=64Mi --fs-type=ext4 | csi_field volume_id)
C=$("${CTL[@]}" volume create c --size=64Mi --fs-type=ext4 | csi_field volume_id)
[ -n "$A" ] && [ -n "$B" ] && [ -n "$C" ] || e2e_check_failed "create"
"${CTL[@]}" node stage "$A" "$W/stage-a" --block >/dev/null || e2e_check_failed "stage A"
"${CTL[@]}" node stage "$B" "$W/stage-b" --fs-type=ext4 >/dev/null || e2e_check_failed "stage B"
"${CTL[@]}" node publish "$B" "$W/stage-b" "$W/pod-b" --fs-type=ext4 >/dev/null \
  || e2e_check_failed "publish B"
echo "b's data" > "$W/pod-b/file"
DEV_A=$(csi_dev_of "$A")
echo "  | A=$A on $DEV_A, B=$B, C=$C; $(devices) devices"

e2e_step "1: block publish through a symlinked parent"
mkdir -p "$W/real" && ln -s "$W/real" "$W/link"
out=$("${CTL[@]}" node publish "$A" "$W/stage-a" "$W/link/dev" --block 2>&1)
rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "INVALID_ARGUMENT.*symbolic link"; then
  e2e_ok "refused: ${out#error: }"
else
  e2e_check_failed "publish through a symlink: rc=$rc $out"
fi
expect_not "nothing created at the link's destination" test -e "$W/real/dev"
expect "no mount at the link's destination" test -z "$(mounts_under | grep real)"

e2e_step "2: unpublish of paths volume A never published"
echo "precious" > "$W/precious"
mkdir -p "$W/empty-dir"
for p in "$W/pod-b" "$W/precious" "$W/empty-dir"; do
  "${CTL[@]}" node unpublish "$A" "$p" >/dev/null || e2e_check_failed "unpublish A at $p"
done
expect "B's pod mount is still there" is_mnt "$W/pod-b"
expect "B's data still readable" grep -q "b's data" "$W/pod-b/file"
expect "the unrelated file is intact" grep -qx precious "$W/precious"
expect "the unrelated empty dir is there" test -d "$W/empty-dir"

e2e_step "2: unstage of volume C (not staged) at B's staging path"
"${CTL[@]}" node unstage "$C" "$W/stage-b" >/dev/null || e2e_check_failed "unstage C"
expect "B's staging mount is still there" is_mnt "$W/stage-b"

e2e_step "2: block publish onto an existing file with content"
mkdir -p "$W/pod-x"
echo "someone's file" > "$W/pod-x/dev"
"${CTL[@]}" node publish "$A" "$W/stage-a" "$W/pod-x/dev" --block >/dev/null \
  || e2e_check_failed "publish A onto the file"
expect "the device is bound there" test -b "$W/pod-x/dev"
"${CTL[@]}" node unpublish "$A" "$W/pod-x/dev" >/dev/null || e2e_check_failed "unpublish A"
expect "the file is back with its content" grep -qx "someone's file" "$W/pod-x/dev"

e2e_step "1: a mount of A's device the records do not know of"
touch "$W/leak"
mount --bind "$DEV_A" "$W/leak"
out=$("${CTL[@]}" node unstage "$A" "$W/stage-a" 2>&1)
if echo "$out" | grep -q "FAILED_PRECONDITION.*still mounted at $W/leak"; then
  e2e_ok "unstage refused: ${out#error: }"
else
  e2e_check_failed "unstage with a foreign mount of the device: $out"
fi
expect "A's device is still there" test -b "$DEV_A"
umount "$W/leak"

e2e_step "10: mount flags outside the allow-list; 3: a stage the kernel fails"
before=$(devices)
out=$("${CTL[@]}" node stage "$C" "$W/stage-c" --fs-type=ext4 --mount-flags=noatime,bind 2>&1)
if echo "$out" | grep -q "INVALID_ARGUMENT.*'bind'"; then e2e_ok "bind: ${out#error: }"
else e2e_check_failed "bind flag: $out"; fi
expect_not "no staging dir made" test -e "$W/stage-c"
# An option ext4 takes for xfs only: the kernel refuses the mount (EINVAL)
# after the device was made and mkfs ran.
for i in 1 2 3; do
  "${CTL[@]}" node stage "$C" "$W/stage-c" --fs-type=ext4 --mount-flags=largeio \
    >/dev/null 2>&1 && e2e_check_failed "stage with largeio on ext4 succeeded"
done
expect "3 failed stages left no device ($before before, $(devices) after)" test "$(devices)" = "$before"
expect_not "and no staging dir" test -e "$W/stage-c"
grep -q "undid: removed its export" "$W/plugin.log" && e2e_ok "the plugin logged what it undid" \
  || e2e_check_failed "no 'undid' log line"

e2e_step "teardown: nothing leaks"
"${CTL[@]}" node unstage "$A" "$W/stage-a" >/dev/null || e2e_check_failed "unstage A"
csi_teardown "$B" "$W/stage-b" "$W/pod-b"
for v in "$A" "$C"; do "${CTL[@]}" volume delete "$v" >/dev/null || e2e_check_failed "delete $v"; done
expect "no ublk device left ($(devices))" test "$(devices)" = 0
left=$(mounts_under)
expect "no mount left under $W${left:+: $left}" test -z "$left"
kill -TERM "$PID"; wait "$PID" 2>/dev/null
e2e_finish
