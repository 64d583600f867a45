# rbd-engine (engine level, through ublk-tool): the RBD target over a real
# single-node Ceph (tests/e2e/lib/ceph.sh). An image is served as
# /dev/ublkbN with user recovery; fio randwrite+verify runs on it; the server
# is killed with SIGKILL mid-I/O; the device must be QUIESCED, a new server
# (new rados connection) must recover the same device, and fio must finish
# with every block verified. The cephx key must not appear in the servers'
# logs. Then a short fio comparison with the kernel's rbd driver (krbd) on
# another image of the same cluster (numbers under TCG are indicative only),
# and the op timeout: a write to a frozen OSD fails with EIO after it.
# e2e-timeout: 1500
# e2e-disk: 8G
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
. "$SRC_DIR/tests/e2e/lib/ceph.sh"
e2e_require_ublk_tool

CEPH_OSD_SIZE=6G
e2e_step "start a single-node Ceph"
ceph_start "$E2E_DATA_DIR/ceph" || e2e_fail "ceph_start failed"
trap 'ceph_stop >/dev/null 2>&1' EXIT
rbd_cmd() { timeout 120 rbd --conf "$CEPH_CONF" "$@"; }
rbd_cmd create --size 512M "$CEPH_POOL/vol" || e2e_fail "rbd create vol"
rbd_cmd create --size 512M "$CEPH_POOL/krbd" || e2e_fail "rbd create krbd"
KEY_FILE=$E2E_SCRATCH/ceph.key
(umask 077; printf '%s\n' "$CEPH_KEY" >"$KEY_FILE")
RBD_ARGS=(--target=rbd --rbd_mon_host="$CEPH_MON_HOST" --rbd_user="$CEPH_USER"
          --rbd_key_file="$KEY_FILE" --rbd_pool="$CEPH_POOL" --rbd_image=vol
          --rbd_op_timeout_ms=60000)

e2e_step "serve rbd/vol with --recovery"
ublk_serve rbd "${RBD_ARGS[@]}" --recovery --queues=2 --depth=64 || e2e_fail "rbd export did not come up"
DEV=$SRV_DEV ID=$SRV_ID
grep -h '^READY' "$SRV_LOG" | sed 's/^/  | /'
LOGS=("$SRV_LOG")

e2e_step "fio randwrite+verify on $DEV, SIGKILL the server after 5 s"
FIO_LOG=$E2E_SCRATCH/fio-verify.log
fio --name=verify --filename="$DEV" --rw=randwrite --bs=16k --iodepth=16 --ioengine=io_uring \
  --direct=1 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 >"$FIO_LOG" 2>&1 &
FIO_PID=$!
sleep 5
if kill -0 "$FIO_PID" 2>/dev/null; then
  kill -KILL "$SRV_PID"; wait "$SRV_PID" 2>/dev/null; SRV_PID=
  if e2e_wait_for 20 test "$(ublk_state_of "$ID")" = QUIESCED; then e2e_ok "device $ID QUIESCED"
  else e2e_check_failed "device $ID is '$(ublk_state_of "$ID")' after SIGKILL, want QUIESCED"; fi
  if ublk_recover rbd-rec --dev_id="$ID" "${RBD_ARGS[@]}"; then
    LOGS+=("$SRV_LOG")
    if [ "$SRV_DEV" = "$DEV" ]; then e2e_ok "recovered $DEV on a new rados connection"
    else e2e_check_failed "recover gave '$SRV_DEV', want $DEV"; fi
    grep -q 'rbd cluster .*: connected' "$SRV_LOG" \
      && e2e_ok "the recovered server connected to the cluster itself"
  else
    e2e_check_failed "recover failed"
    kill -KILL "$FIO_PID" 2>/dev/null
  fi
else
  e2e_check_failed "fio ended within 5 s: nothing was tested under I/O"
fi
for _ in $(seq 3000); do kill -0 "$FIO_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$FIO_PID" 2>/dev/null; then
  e2e_check_failed "fio still running 300 s after the recovery"
  kill -KILL "$FIO_PID" 2>/dev/null
fi
wait "$FIO_PID"; rc=$?
if [ $rc = 0 ]; then
  e2e_ok "fio randwrite+verify passed across a SIGKILL of the server"
else
  e2e_check_failed "fio exited $rc; its log:"
  grep -iE 'err|verify|bad' "$FIO_LOG" | head -15 | sed 's/^/  | /'
fi

# The key is a secret: neither server may have logged it.
if grep -qF "$CEPH_KEY" "${LOGS[@]}"; then e2e_check_failed "the cephx key appears in a server log"
else e2e_ok "the cephx key is in no server log"; fi

# Discard reaches the image: the discarded range reads back as zeros.
e2e_step "blkdiscard $DEV"
if blkdiscard "$DEV"; then
  if cmp -s -n 1048576 "$DEV" /dev/zero; then e2e_ok "discarded range reads back as zeros"
  else e2e_check_failed "discarded range does not read back as zeros"; fi
else
  e2e_check_failed "blkdiscard $DEV failed"
fi

# fio through the RBD target vs krbd on the same cluster: 4k random I/O.
fio_iops() { # DEV RW
  fio --name=m --filename="$1" --rw="$2" --bs=4k --iodepth=32 --ioengine=io_uring --direct=1 \
    --size=256M --time_based --runtime=10 --output-format=terse --terse-version=3 2>/dev/null |
    awk -F';' -v rw="$2" '{ print (rw == "randread" ? $8 : $49) }'
}
e2e_step "measure: fio 4k QD32 10 s, ublk rbd target vs krbd"
KRBD=$(ceph_rbd_map_krbd krbd) || KRBD=
for rw in randwrite randread; do
  u=$(fio_iops "$DEV" $rw)
  k=-
  [ -n "$KRBD" ] && k=$(fio_iops "$KRBD" $rw)
  echo "measure: $rw iops ublk-rbd=$u krbd=$k"
  echo "$rw ublk_rbd_iops=$u krbd_iops=$k" >>"$E2E_RESULT_DIR/rbd-engine-measure.txt"
done
# noudev as at map time: there is no udev in the guest to wait for.
[ -n "$KRBD" ] && timeout 60 rbd --conf "$CEPH_CONF" device unmap -t krbd -o noudev "$KRBD"

e2e_step "SIGTERM the server"
if ublk_stop TERM; then e2e_ok "stopped, $DEV gone"; else e2e_check_failed "stop"; fi

# The bounded op timeout: with the OSD frozen (SIGSTOP) a write must fail
# with EIO after the op timeout (rados_osd_op_timeout), not hang; once the
# OSD runs again I/O works.
e2e_step "op timeout: serve with --rbd_op_timeout_ms=5000, freeze the OSD, write"
if ublk_serve rbd-timeout "${RBD_ARGS[@]}" --rbd_op_timeout_ms=5000; then
  kill -STOP "$CEPH_OSD_PID"
  t0=$(date +%s)
  if timeout 120 dd if=/dev/urandom of="$SRV_DEV" bs=4k count=1 oflag=direct 2>"$E2E_SCRATCH/dd.err"; then
    e2e_check_failed "a write with the OSD frozen succeeded"
  else
    t=$(($(date +%s) - t0))
    if grep -q 'Input/output error' "$E2E_SCRATCH/dd.err" && [ $t -ge 4 ] && [ $t -lt 60 ]; then
      e2e_ok "write with the OSD frozen failed with EIO after ${t} s (op timeout 5 s)"
    else
      e2e_check_failed "write with the OSD frozen: after ${t} s: $(cat "$E2E_SCRATCH/dd.err")"
    fi
  fi
  kill -CONT "$CEPH_OSD_PID"
  if timeout 120 dd if=/dev/urandom of="$SRV_DEV" bs=4k count=1 oflag=direct 2>/dev/null; then
    e2e_ok "writes work again once the OSD runs"
  else
    e2e_check_failed "write after the OSD came back failed"
  fi
  grep -h 'failed: -110' "$SRV_LOG" | head -2 | sed 's/^/  | /'
  if ublk_stop TERM; then e2e_ok "stopped"; else e2e_check_failed "stop (op timeout export)"; fi
else
  e2e_check_failed "op-timeout export did not come up"
fi
ceph_stop
trap - EXIT
e2e_finish
