# emulate-6.1: no Debian 6.1 kernel ships ublk, so CI runs the 6.1 behaviour
# on a newer kernel with --emulate_kernel=6.1 (no GET_FEATURES, legacy command
# numbers, get-data copy mode, 6.1 baseline features; 6.12 and 7.x are built
# with BLKDEV_UBLK_LEGACY_OPCODES=y). Checks:
#  1. `ublk-tool features --emulate_kernel=6.1` reports has_get_features=0,
#     encoding=legacy, copy_mode=get_data;
#  2. `ublk-tool serve --emulate_kernel=6.1`: READY line names get_data and
#     legacy, raw O_DIRECT data check at both ends, ext4 remount checksum,
#     SIGTERM stop, device gone;
#  3. kill -9 of such a server (--recovery) under fio randwrite+verify,
#     QUIESCED, `ublk-tool recover --emulate_kernel=6.1` re-attaches the same
#     device, fio verifies every block;
#  4. ublk-csi --emulate_kernel=6.1: its log and ublk_csi_kernel_info say
#     legacy + get_data; create, stage (ext4), publish, write, checksum,
#     kill -9, restart (recovery), checksum again, unpublish, unstage, delete.
# e2e-once: emulates the 6.1 uapi; the host kernel underneath does not change what it checks
# e2e-timeout: 600
# e2e-requires: ublk/ublk-tool csi/ublk-csi csi/ublk-csi-ctl
. "$E2E_LIB"
e2e_require_ublk_tool

EMU=--emulate_kernel=6.1
SIZE=$((256 * 1024 * 1024))
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 8

e2e_step "ublk-tool features $EMU"
feat=$(timeout 30 "$UBLK_TOOL" features "$EMU" 2>&1)
echo "$feat" | sed 's/^/  | /'
for kv in emulate_kernel=6.1 has_get_features=0 encoding=legacy copy_mode=get_data \
    user_copy=0 zero_copy=0 auto_buf_reg=0 need_get_data=1 user_recovery=1; do
  if echo "$feat" | grep -qx "$kv"; then e2e_ok "features: $kv"
  else e2e_check_failed "features $EMU: no line '$kv'"; fi
done

e2e_step "serve $EMU: data check, ext4, SIGTERM"
back=$E2E_SCRATCH/emu-serve.img
if ublk_serve emu --target=file --backing="$back" --size=$SIZE --create "$EMU"; then
  ready=$(grep -m1 '^READY' "$SRV_LOG")
  echo "  | $ready"
  case $ready in
    *copy_mode=get_data*encoding=legacy*) e2e_ok "served with get_data and legacy commands" ;;
    *) e2e_check_failed "READY line '$ready' does not name copy_mode=get_data encoding=legacy" ;;
  esac
  if e2e_data_check "$SRV_DEV" "$PAT" 0 && e2e_data_check "$SRV_DEV" "$PAT" $((SIZE / 1048576 - 8)); then
    e2e_ok "raw data check at 0 and at the end"
  else
    e2e_check_failed "raw data check"
  fi
  if e2e_fs_check "$SRV_DEV" ext4 "$PAT"; then e2e_ok "ext4 write/remount/checksum"
  else e2e_check_failed "ext4"; fi
  if ublk_stop TERM; then e2e_ok "stopped, $SRV_DEV gone"; else e2e_check_failed "stop"; fi
else
  e2e_check_failed "serve $EMU did not come up"
fi
rm -f "$back"

e2e_step "kill -9 under fio randwrite+verify, recover $EMU"
back=$E2E_SCRATCH/emu-rec.img
fio_log=$E2E_SCRATCH/fio-emu.log
if ublk_serve emu-rec --target=file --backing="$back" --size=$SIZE --create --recovery "$EMU"; then
  dev=$SRV_DEV id=$SRV_ID
  fio --name=verify --filename="$dev" --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring \
    --direct=1 --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 >"$fio_log" 2>&1 &
  fio_pid=$!
  sleep 2
  if kill -0 "$fio_pid" 2>/dev/null; then
    kill -KILL "$SRV_PID"; wait "$SRV_PID" 2>/dev/null; SRV_PID=
    if e2e_wait_for 10 ublk_state_is "$id" QUIESCED "$EMU"; then e2e_ok "device $id QUIESCED"
    else e2e_check_failed "device $id is '$(ublk_state_of "$id" "$EMU")' after SIGKILL, want QUIESCED"; fi
    if ublk_recover emu-rec --dev_id="$id" --target=file --backing="$back" "$EMU"; then
      if [ "$SRV_DEV" = "$dev" ]; then e2e_ok "recovered $dev ($(grep -m1 '^READY' "$SRV_LOG"))"
      else e2e_check_failed "recover gave '$SRV_DEV', want $dev"; fi
    else
      e2e_check_failed "recover $EMU failed"
      kill -KILL "$fio_pid" 2>/dev/null
      "$UBLK_TOOL" del --dev_id="$id" "$EMU" >/dev/null 2>&1
    fi
  else
    e2e_check_failed "fio ended before the kill; nothing was tested under I/O"
  fi
  for _ in $(seq 2400); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$fio_pid" 2>/dev/null && { kill -KILL "$fio_pid"; e2e_check_failed "fio still running after 240 s"; }
  if wait "$fio_pid"; then e2e_ok "fio randwrite+verify passed across the restart"
  else
    e2e_check_failed "fio failed across the restart"
    grep -iE 'err|verify|bad' "$fio_log" | head -15 | sed 's/^/  | /'
  fi
  if [ -n "${SRV_PID:-}" ]; then
    if ublk_stop TERM; then e2e_ok "stopped, $dev gone"; else e2e_check_failed "stop after recovery"; fi
  fi
else
  e2e_check_failed "serve --recovery $EMU did not come up"
fi
rm -f "$back"

e2e_step "ublk-csi $EMU: create, stage ext4, publish, write, kill -9, restart, checksum"
PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/plugin
SOCK=$WORK/csi.sock
METRICS=127.0.0.1:9814
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$WORK/data"
PID=
start_plugin() {
  "$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$WORK/data" \
    --metrics-address="$METRICS" --backend=ublk --mounter=real "$EMU" 2>>"$WORK/plugin.log" &
  PID=$!
}
wait_ready() { csi_wait_ready "$1"; }
check_modes() { # WHEN STARTS_SO_FAR
  local line info n
  n=$(grep -c 'ublk_drv on kernel' "$WORK/plugin.log")
  [ "$n" = "$2" ] || e2e_check_failed "$1: $n 'ublk_drv on kernel' log lines after $2 start(s)"
  line=$(grep 'ublk_drv on kernel' "$WORK/plugin.log" | tail -1)
  echo "  | ${line#*] }"
  case $line in
    *"emulating Linux 6.1"*copy_mode=get_data*encoding=legacy*) e2e_ok "$1: log says 6.1 emulation, get_data, legacy" ;;
    *) e2e_check_failed "$1: plugin log line '$line' does not say emulating 6.1 with get_data and legacy" ;;
  esac
  info=$(curl -sf "http://$METRICS/metrics" | grep '^ublk_csi_kernel_info')
  echo "  | $info"
  case $info in
    *copy_mode=\"get_data\"*emulate_kernel=\"6.1\"*encoding=\"legacy\"*) e2e_ok "$1: ublk_csi_kernel_info get_data, 6.1, legacy" ;;
    *) e2e_check_failed "$1: ublk_csi_kernel_info '$info' lacks copy_mode=get_data emulate_kernel=6.1 encoding=legacy" ;;
  esac
}

start_plugin
if wait_ready 30; then
  e2e_ok "plugin ready"
  check_modes "first start" 1
  VOL=$("${CTL[@]}" volume create emu --size=256Mi --fs-type=ext4 | csi_field volume_id)
  if [ -n "$VOL" ] && "${CTL[@]}" node stage "$VOL" "$WORK/stage" --fs-type=ext4 >/dev/null \
      && "${CTL[@]}" node publish "$VOL" "$WORK/stage" "$WORK/pod" --fs-type=ext4 >/dev/null; then
    DEV=$(csi_dev_of "$VOL")
    e2e_ok "volume $VOL on $DEV staged (ext4) and published"
    cp "$PAT" "$WORK/pod/data" && sync
    want=$(e2e_sha "$PAT")
    echo 3 > /proc/sys/vm/drop_caches
    if [ "$(e2e_sha "$WORK/pod/data")" = "$want" ]; then e2e_ok "written file reads back"
    else e2e_check_failed "file read back differs before the kill"; fi

    kill -KILL "$PID"; wait "$PID" 2>/dev/null
    start_plugin
    if wait_ready 60; then
      e2e_ok "restarted after kill -9, ready (recovery done)"
      check_modes "after restart" 2
      [ "$(csi_dev_of "$VOL")" = "$DEV" ] && e2e_ok "same device $DEV" \
        || e2e_check_failed "volume moved from $DEV to '$(csi_dev_of "$VOL")'"
      grep -o 'recovery done: .*' "$WORK/plugin.log" | tail -1
      echo 3 > /proc/sys/vm/drop_caches
      if [ "$(timeout 60 sha256sum "$WORK/pod/data" | cut -d' ' -f1)" = "$want" ]; then
        e2e_ok "checksum intact after kill -9 and recovery"
      else
        e2e_check_failed "file differs after recovery"
      fi
      # New writes go through the recovered server too.
      if timeout 60 dd if="$PAT" of="$WORK/pod/data2" bs=1M conv=fsync status=none \
          && [ "$(e2e_sha "$WORK/pod/data2")" = "$want" ]; then
        e2e_ok "write after recovery"
      else
        e2e_check_failed "write after recovery"
      fi
    else
      e2e_check_failed "plugin not ready within 60 s after kill -9"
      tail -20 "$WORK/plugin.log"
    fi
    csi_teardown "$VOL" "$WORK/stage" "$WORK/pod"
  else
    e2e_check_failed "create/stage/publish failed"
    tail -20 "$WORK/plugin.log"
  fi
else
  e2e_check_failed "plugin $EMU not ready"
  tail -20 "$WORK/plugin.log"
fi
if [ -n "$PID" ]; then
  kill -TERM "$PID" 2>/dev/null
  e2e_wait_for 20 sh -c "! kill -0 $PID 2>/dev/null" || { e2e_check_failed "plugin still running 20 s after SIGTERM"; kill -KILL "$PID"; }
  wait "$PID" 2>/dev/null
fi
e2e_finish
