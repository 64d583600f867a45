# plugin-restart-under-io (plugin level): ublk-csi with the real ublk backend
# serves a raw block volume and an ext4 volume (staged by ublk-csi-ctl); fio
# randwrite+verify runs on both; the plugin is killed with SIGKILL and
# restarted KILLS times (default 5, not the issue's ten: each restart under
# TCG costs ~10 s of guest time) while fio runs. Each restart must report
# ready (recovery done) with both volumes recovered, the same device paths;
# fio must finish with zero errors and every block verified. Then SIGTERM
# must exit promptly and leave the devices QUIESCED, and a last start must
# recover them so the volumes unstage cleanly.
# e2e-timeout: 600
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl ublk/ublk-tool
. "$E2E_LIB"

KILLS=${KILLS:-5}
PLUGIN=$BUILD_DIR/csi/ublk-csi
WORK=$E2E_SCRATCH/plugin
SOCK=$WORK/csi.sock
METRICS=127.0.0.1:9811
# The plugin's and fio's logs are kept with the scenario's results
# (build/e2e-logs/plugin-restart-under-io/share) for a failure's post-mortem.
LOGS=$E2E_RESULT_DIR
CTL=("$BUILD_DIR/csi/ublk-csi-ctl" --endpoint="unix://$SOCK")
mkdir -p "$WORK/data"
PID=


start_plugin() { # LOG
  "$PLUGIN" --node-id=e2e --endpoint="unix://$SOCK" --data-dir="$WORK/data" \
    --metrics-address="$METRICS" --backend=ublk --mounter=real --recovery-concurrency=8 \
    2>>"$1" &
  PID=$!
}

# Ready = Probe says ready: backend usable and recovery done.
wait_ready() { # SECONDS
  csi_wait_ready "$1"
}

e2e_step "start the plugin (real ublk backend)"
modprobe ublk_drv 2>/dev/null
start_plugin "$LOGS/plugin.log"
if ! wait_ready 30; then
  if grep -q "not built into" "$LOGS/plugin.log"; then
    e2e_skip "ublk-csi is built without the real ublk backend (--backend=ublk unimplemented)"
  fi
  tail -20 "$LOGS/plugin.log"
  e2e_check_failed "plugin not ready"
  e2e_finish
fi
e2e_ok "plugin ready"
# The data mode feature detection chose (zero_copy on 7.x, user_copy on 6.12).
echo "note: plugin $(grep -o 'using copy_mode=[a-z_]*' "$LOGS/plugin.log" | head -1)"

e2e_step "create and stage a raw block volume and an ext4 volume"
BLK=$("${CTL[@]}" volume create rb --size=256Mi --block | csi_field volume_id)
FSV=$("${CTL[@]}" volume create fs --size=256Mi --fs-type=ext4 | csi_field volume_id)
[ -n "$BLK" ] && [ -n "$FSV" ] || { tail -20 "$LOGS/plugin.log"; e2e_check_failed "create"; e2e_finish; }
"${CTL[@]}" node stage "$BLK" "$WORK/stage-b" --block || e2e_check_failed "stage block"
"${CTL[@]}" node stage "$FSV" "$WORK/stage-f" --fs-type=ext4 || e2e_check_failed "stage ext4"
BDEV=$(csi_dev_of "$BLK")
FDEV=$(csi_dev_of "$FSV")
[ -b "$BDEV" ] && mountpoint -q "$WORK/stage-f" || { e2e_check_failed "no device ($BDEV) or no mount"; e2e_finish; }
e2e_ok "block $BLK on $BDEV, ext4 $FSV on $FDEV mounted at $WORK/stage-f"
# The kernel keeps the plugin's owner tag (ublksrv_flags) for the next
# process to check before it recovers the device.
tag=$("$UBLK_TOOL" info --dev_id="${BDEV#/dev/ublkb}" 2>&1 | sed -n 's/^ublksrv_flags=//p')
case $tag in
  0x7562*) e2e_ok "$BDEV carries the plugin's owner tag $tag" ;;
  *) e2e_check_failed "$BDEV has ublksrv_flags '$tag', want the plugin's owner tag 0x7562..." ;;
esac

e2e_step "fio randwrite+verify on both while the plugin is killed $KILLS times"
fio --name=blk --filename="$BDEV" --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring \
  --direct=1 --size=96M --verify=crc32c --verify_fatal=1 --do_verify=1 --rate=4m \
  >"$LOGS/fio-blk.log" 2>&1 &
FIO_B=$!
fio --name=fs --filename="$WORK/stage-f/fio.dat" --rw=randwrite --bs=4k --iodepth=16 \
  --ioengine=io_uring --direct=1 --size=96M --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --rate=4m >"$LOGS/fio-fs.log" 2>&1 &
FIO_F=$!
killed=0
for i in $(seq "$KILLS"); do
  sleep 2
  kill -0 "$FIO_B" 2>/dev/null || kill -0 "$FIO_F" 2>/dev/null || { echo "note: fio done"; break; }
  tk=$(date +%s.%N)
  kill -KILL "$PID"; wait "$PID" 2>/dev/null
  killed=$((killed + 1))
  t0=$(date +%s.%N)
  echo "note: kill $i: the killed process was gone $(echo "$t0 - $tk" | bc) s after SIGKILL"
  start_plugin "$LOGS/plugin.log"
  if e2e_wait_for 60 csi_readyz; then
    t1=$(date +%s.%N)
    csi_ready || e2e_check_failed "kill $i: /readyz says ready, Probe does not"
    t2=$(date +%s.%N)
    e2e_ok "kill $i: ready again after $(echo "$t1 - $t0" | bc) s (Probe through ublk-csi-ctl agreed $(echo "$t2 - $t1" | bc) s later)"
  else
    e2e_check_failed "kill $i: plugin not ready within 60 s"
    tail -20 "$LOGS/plugin.log"
    break
  fi
  [ "$(csi_dev_of "$BLK")" = "$BDEV" ] || e2e_check_failed "kill $i: block volume moved to $(csi_dev_of "$BLK")"
  [ "$(csi_dev_of "$FSV")" = "$FDEV" ] || e2e_check_failed "kill $i: ext4 volume moved to $(csi_dev_of "$FSV")"
done
[ "$killed" -gt 0 ] || e2e_check_failed "fio ended before any kill"
grep -o "recovery done: .*" "$LOGS/plugin.log"
curl -s "http://$METRICS/metrics" 2>/dev/null | grep '^ublk_csi_recoveries_total' || true
for p in "$FIO_B" "$FIO_F"; do
  if wait "$p"; then e2e_ok "fio pid $p: verify passed"; else e2e_check_failed "fio pid $p failed"; fi
done
grep -E "err=|verify" "$LOGS/fio-blk.log" "$LOGS/fio-fs.log" | head -6

e2e_step "SIGTERM: prompt exit, devices left QUIESCED; a last start recovers them"
t0=$(date +%s)
kill -TERM "$PID"
if e2e_wait_for 20 sh -c "! kill -0 $PID 2>/dev/null"; then
  e2e_ok "exited $(( $(date +%s) - t0 )) s after SIGTERM"
else
  e2e_check_failed "still running 20 s after SIGTERM"
  kill -KILL "$PID"
fi
wait "$PID" 2>/dev/null
for d in "$BDEV" "$FDEV"; do
  st=$("$BUILD_DIR/ublk/ublk-tool" info --dev_id="${d#/dev/ublkb}" 2>/dev/null | sed -n 's/^state=//p')
  if [ "$st" = QUIESCED ]; then e2e_ok "$d QUIESCED after SIGTERM"
  else e2e_check_failed "$d is '$st' after SIGTERM, want QUIESCED"; fi
done
start_plugin "$LOGS/plugin.log"
wait_ready 60 || e2e_check_failed "final start not ready"
"${CTL[@]}" node unstage "$FSV" "$WORK/stage-f" || e2e_check_failed "unstage ext4"
"${CTL[@]}" node unstage "$BLK" "$WORK/stage-b" || e2e_check_failed "unstage block"
kill -TERM "$PID"; wait "$PID" 2>/dev/null
e2e_finish
