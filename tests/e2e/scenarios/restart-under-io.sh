# restart-under-io (engine level, through ublk-tool): a file export created
# with user recovery serves fio randwrite+verify; its server is killed with
# SIGKILL mid-I/O (twice in a row for zero_copy where the kernel has it and
# user_copy, once for get_data); the
# device must be QUIESCED, `ublk-tool recover` must re-attach the same
# /dev/ublkbN, fio must finish with every block verified (REISSUE: no write
# lost), and SIGTERM must then remove the device. The plugin-level version
# (ublk-csi restarted under pods' I/O) extends this once the plugin recovers.
# e2e-timeout: 720
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

SIZE=$((256 * 1024 * 1024))


run_case() { # COPY_MODE KILLS
  local copy=$1 kills=$2 back=$E2E_SCRATCH/rec-$1.img fio_log=$E2E_SCRATCH/fio-$1.log
  local dev id fio_pid cycle killed=0 i rc
  e2e_step "$copy: serve with --recovery, fio randwrite+verify"
  if ! ublk_serve "rec-$copy" --target=file --backing="$back" --size=$SIZE --create --recovery \
      --copy_mode="$copy"; then
    e2e_check_failed "$copy: export did not come up"
    return
  fi
  dev=$SRV_DEV id=$SRV_ID
  fio --name=verify --filename="$dev" --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring \
    --direct=1 --size=96M --verify=crc32c --verify_fatal=1 --do_verify=1 >"$fio_log" 2>&1 &
  fio_pid=$!
  for cycle in $(seq "$kills"); do
    sleep 2
    if ! kill -0 "$fio_pid" 2>/dev/null; then
      echo "note: fio already finished before kill $cycle"
      break
    fi
    e2e_step "$copy: SIGKILL the server (kill $cycle of $kills) while fio runs"
    kill -KILL "$SRV_PID"; wait "$SRV_PID" 2>/dev/null; SRV_PID=
    killed=$((killed + 1))
    if e2e_wait_for 10 ublk_state_is "$id" QUIESCED; then e2e_ok "$copy: device $id QUIESCED"
    else e2e_check_failed "$copy: device $id state is '$(ublk_state_of "$id")' after SIGKILL, want QUIESCED"; fi
    if ! ublk_recover "rec-$copy-$cycle" --dev_id="$id" --target=file --backing="$back" \
        --copy_mode="$copy"; then
      e2e_check_failed "$copy: recover $cycle failed"
      kill -KILL "$fio_pid" 2>/dev/null
      "$UBLK_TOOL" del --dev_id="$id" >/dev/null 2>&1
      return
    fi
    # The READY line names the mode the recovered server serves in (the
    # device's own, fixed at ADD_DEV).
    grep -h '^READY' "$SRV_LOG" | sed 's/^/  | /'
    if [ "$SRV_DEV" = "$dev" ]; then e2e_ok "$copy: recovered $dev, state $(ublk_state_of "$id")"
    else e2e_check_failed "$copy: recover gave '$SRV_DEV', want $dev"; fi
  done
  [ "$killed" -gt 0 ] || e2e_check_failed "$copy: fio ended before any kill; nothing was tested under I/O"
  for i in $(seq 2400); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$fio_pid" 2>/dev/null; then
    e2e_check_failed "$copy: fio still running 240 s after the last recovery"
    kill -KILL "$fio_pid" 2>/dev/null
  fi
  wait "$fio_pid"; rc=$?
  if [ $rc = 0 ]; then
    e2e_ok "$copy: fio randwrite+verify passed across $killed restart(s)"
  else
    e2e_check_failed "$copy: fio exited $rc across $killed restart(s); its log:"
    grep -iE 'err|verify|bad' "$fio_log" | head -15 | sed 's/^/  | /'
  fi
  e2e_step "$copy: SIGTERM the recovered server"
  if ublk_stop TERM; then e2e_ok "$copy: stopped, $dev gone"; else e2e_check_failed "$copy: stop"; fi
  rm -f "$back"
}

# Zero copy where the kernel has UBLK_F_AUTO_BUF_REG: the dead server's ring
# (and the request buffers registered in it) goes with it; the recovering
# server registers them afresh in its own ring. ublk_drv WARNs (refcount,
# task_registered_buffers) if a registration outlived its server.
if "$UBLK_TOOL" features 2>/dev/null | grep -qx 'auto_buf_reg=1'; then
  dmesg_lines=$(dmesg | wc -l)
  run_case zero_copy 2
  if dmesg | tail -n +$((dmesg_lines + 1)) | grep -E 'WARNING|BUG|refcount' | head -5 | grep .; then
    e2e_check_failed "zero_copy: kernel warnings during kill/recover (above)"
  else
    e2e_ok "zero_copy: no kernel warning across the kills and recoveries"
  fi
else
  echo "note: no UBLK_F_AUTO_BUF_REG on this kernel: zero_copy not run"
fi
run_case user_copy 2
run_case get_data 1
e2e_finish
