# engine-corruption: proves the data check used by engine-basic catches data
# errors served by a ublk export, not just crashes. `--inject_corruption`
# flips one byte of the first READ served after the server reports READY;
# the same verify that engine-basic uses must report a mismatch. A clean
# export (same steps, no injection) must pass it, so the mismatch is caused
# by the injected corruption and nothing else.
# The flip is armed in a server that *recovers* the device (kill -9 of the
# first server, `ublk-tool recover --inject_corruption`), not at first start:
# from 7.x the kernel scans partitions asynchronously after START_DEV, so the
# first READ after a fresh start can be the scan's (seen on 7.3: flipped at
# offset 0 before the check read anything). A recovered device is not
# rescanned and a quiesced one has no other readers, so the first READ is
# the check's. Both run with --copy_mode=user_copy: in zero copy the read
# data never passes through the server's memory, so there is nothing to flip.
# e2e-timeout: 240
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

SIZE=$((64 * 1024 * 1024))
MODE=--copy_mode=user_copy
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 16

# check NAME [RECOVER_ARGS...]: serve, write the pattern, kill -9, recover
# with RECOVER_ARGS, verify. Returns the verify's result; 2 on a setup error.
check() {
  local name=$1 back=$E2E_SCRATCH/$1.img id rc
  shift
  ublk_serve "$name" --target=file --backing="$back" --size=$SIZE --create --recovery "$MODE" \
    || { echo "$name: export did not come up"; return 2; }
  id=$SRV_ID
  e2e_write_dev "$SRV_DEV" "$PAT" || { ublk_stop KILL; return 2; }
  kill -KILL "$SRV_PID"; wait "$SRV_PID" 2>/dev/null; SRV_PID=
  e2e_wait_for 10 ublk_state_is "$id" QUIESCED \
    || { echo "$name: device $id is '$(ublk_state_of "$id")' after kill -9"; return 2; }
  ublk_recover "$name" --dev_id="$id" --target=file --backing="$back" "$MODE" "$@" \
    || { echo "$name: recover failed"; "$UBLK_TOOL" del --dev_id="$id" >/dev/null 2>&1; return 2; }
  VERIFY_OUT=$(e2e_verify_dev "$SRV_DEV" "$PAT"); rc=$?
  [ -n "$VERIFY_OUT" ] && echo "$VERIFY_OUT"
  # Which read took the flipped byte (expected: offset 0, the check's first read).
  grep -o 'inject_corruption: .*' "$SRV_LOG" | sed 's/^/  | /'
  ublk_stop TERM || { echo "$name: stop failed"; rc=2; }
  rm -f "$back"
  return $rc
}

e2e_step "clean export: the data check passes"
check clean; rc=$?
if [ $rc = 0 ]; then e2e_ok "clean export: data check passed"
else e2e_check_failed "clean export: data check failed (rc $rc, without injected corruption)"; fi

e2e_step "recovered with --inject_corruption: the data check must FAIL"
check corrupt --inject_corruption; rc=$?
case $rc in
  0) e2e_check_failed "data check PASSED on an export that corrupts a read: the injected corruption was not seen" ;;
  1) if echo "$VERIFY_OUT" | grep -q 'differs'; then e2e_ok "data check caught the injected corruption"
     else e2e_check_failed "the verify failed, but not with a data mismatch"; fi ;;
  *) e2e_check_failed "corrupting export: setup failed" ;;
esac

e2e_finish
