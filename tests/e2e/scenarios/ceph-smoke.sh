# ceph-smoke: the single-node Ceph of tests/e2e/lib/ceph.sh works in the guest
# and its fault helpers do what they say, without any project code (issue 21's
# harness; the RBD target and the CSI side build on it):
# - ceph_start (one mon, one bluestore OSD on a sparse file on tmpfs if it
#   takes O_DIRECT, else on the data disk; cephx, pool "rbd") comes up and
#   reports its time;
# - an image mapped with the kernel's rbd driver (krbd, `rbd device map`)
#   passes fio write+verify and an O_DIRECT checksum; it unmaps;
# - the same image through rbd-nbd (nbd module) reads back what krbd wrote and
#   passes fio write+verify; it unmaps;
# - kill -9 of the OSD under fio randwrite+verify on krbd: I/O stalls (no
#   completion for a while), the OSD restarts on its store, I/O resumes and
#   fio verifies everything with 0 errors;
# - the monitor stopped and started again: the cluster answers, a new image
#   can be made.
# e2e-timeout: 900
# e2e-disk: 8G
. "$E2E_LIB"
. "$SRC_DIR/tests/e2e/lib/ceph.sh"

for t in ceph-mon ceph-osd ceph rbd monmaptool ceph-authtool; do
  command -v "$t" >/dev/null || e2e_skip "$t is not installed (scripts/install-deps.sh: ceph-mon ceph-osd ceph-common)"
done
trap ceph_stop EXIT

IMG=smoke
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 8

CDIR=${CEPH_SMOKE_DIR:-$(ceph_pick_dir)}
e2e_step "ceph_start in $CDIR ($(findmnt -n -o FSTYPE -T "$(dirname "$CDIR")"))"
t0=$(ceph_now)
ceph_start "$CDIR" || e2e_fail "ceph_start failed"
echo "e2e-metric: ceph_start_seconds=$(ceph_secs "$t0")"

e2e_step "create image $CEPH_POOL/$IMG (256 MiB)"
rbd create --size 256M "$CEPH_POOL/$IMG" || e2e_fail "rbd create failed"
rbd info "$CEPH_POOL/$IMG" | sed 's/^/  | /'

# fio_verify NAME DEV [fio args]: write+verify, 0 errors wanted.
fio_verify() {
  local name=$1 dev=$2 out rc
  shift 2
  out=$(timeout 300 fio --name="$name" --filename="$dev" --rw=randwrite --bs=64k --iodepth=8 \
      --ioengine=libaio --direct=1 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
      "$@" 2>&1); rc=$?
  if [ $rc = 0 ]; then
    e2e_ok "$name: fio randwrite+verify on $dev: $(echo "$out" | grep -m1 -oE 'WRITE: bw=[^,]*')"
  else
    e2e_check_failed "$name: fio exited $rc on $dev"
    echo "$out" | tail -15 | sed 's/^/  | /'
  fi
}

e2e_step "krbd: map"
t1=$(ceph_now)
if KDEV=$(ceph_rbd_map_krbd "$IMG"); then
  e2e_ok "krbd: mapped at $KDEV in $(ceph_secs "$t1") s ($(blockdev --getsize64 "$KDEV") bytes)"
  fio_verify krbd "$KDEV"
  if e2e_data_check "$KDEV" "$PAT" 100; then e2e_ok "krbd: O_DIRECT checksum at 100 MiB"
  else e2e_check_failed "krbd: data check"; fi
  e2e_step "krbd: unmap"
  if ceph_rbd_unmap_krbd "$KDEV" && e2e_wait_for 10 test ! -e "$KDEV"; then e2e_ok "krbd: unmapped"
  else e2e_check_failed "krbd: unmap $KDEV"; fi
else
  e2e_check_failed "krbd: rbd device map failed"
  dmesg | tail -20 | sed 's/^/  | /'
fi

e2e_step "rbd-nbd: map"
if ! command -v rbd-nbd >/dev/null; then
  e2e_check_failed "rbd-nbd is not installed (scripts/install-deps.sh)"
elif ! ceph_load_modules nbd; then
  e2e_check_failed "nbd module cannot be loaded"
elif NDEV=$(timeout 120 rbd device map -t nbd "$CEPH_POOL/$IMG"); then
  e2e_ok "rbd-nbd: mapped at $NDEV"
  if e2e_verify_dev "$NDEV" "$PAT" 100; then e2e_ok "rbd-nbd: reads what krbd wrote at 100 MiB"
  else e2e_check_failed "rbd-nbd: data written through krbd reads back different"; fi
  fio_verify rbd-nbd "$NDEV" --size=16M
  e2e_step "rbd-nbd: unmap"
  if timeout 60 rbd device unmap -t nbd "$NDEV"; then e2e_ok "rbd-nbd: unmapped"
  else e2e_check_failed "rbd-nbd: unmap $NDEV"; fi
else
  e2e_check_failed "rbd-nbd: map failed"
  dmesg | tail -10 | sed 's/^/  | /'
fi

e2e_step "OSD kill -9 under fio on krbd"
if KDEV=$(ceph_rbd_map_krbd "$IMG"); then
  fio_log=$E2E_SCRATCH/fio-osdkill.log
  # Completions are counted from /sys/block/rbdN/stat (reads + writes done).
  stat_ios() { awk '{print $1 + $5}' "/sys/block/${KDEV#/dev/}/stat"; }
  ios_above() { [ "$(stat_ios)" -gt "$1" ]; }
  fio --name=osdkill --filename="$KDEV" --rw=randwrite --bs=16k --iodepth=8 --ioengine=libaio \
    --direct=1 --size=24M --verify=crc32c --verify_fatal=1 --do_verify=1 >"$fio_log" 2>&1 &
  fio_pid=$!
  # fio takes seconds to start under TCG: kill once it has done real work.
  e2e_wait_for 90 ios_above 199
  before=$(stat_ios)
  if kill -0 "$fio_pid" 2>/dev/null && [ "$before" -ge 200 ]; then
    e2e_ok "fio running ($before I/Os done)"
  else
    e2e_check_failed "fio is not running or did under 200 I/Os in 90 s before the OSD kill ($before)"
  fi
  ceph_osd_kill9 || e2e_check_failed "ceph_osd_kill9"
  sleep 1
  a=$(stat_ios); sleep 4; b=$(stat_ios)
  if [ "$a" = "$b" ]; then e2e_ok "I/O stalled with the OSD down ($a I/Os done, none in 4 s)"
  else e2e_check_failed "I/O went on with the OSD killed ($a -> $b): the kill did not take"; fi
  t2=$(ceph_now)
  if ceph_osd_start 120; then e2e_ok "OSD restarted, up in $(ceph_secs "$t2") s"
  else e2e_check_failed "OSD restart"; fi
  if e2e_wait_for 120 ios_above "$b"; then
    e2e_ok "I/O resumed $(ceph_secs "$t2") s after the restart began"
  else
    e2e_check_failed "no I/O completed 120 s after the OSD restart"
  fi
  fio_done() { ! kill -0 "$fio_pid" 2>/dev/null; }
  e2e_wait_for 300 fio_done
  if kill -0 "$fio_pid" 2>/dev/null; then
    e2e_check_failed "fio still running 300 s after the OSD restart"
    kill -KILL "$fio_pid" 2>/dev/null
  fi
  wait "$fio_pid"; rc=$?
  if [ $rc = 0 ] && grep -q 'err= 0' "$fio_log"; then
    e2e_ok "fio randwrite+verify across the OSD kill: 0 errors"
  else
    e2e_check_failed "fio exited $rc across the OSD kill; its log:"
    tail -20 "$fio_log" | sed 's/^/  | /'
  fi
  ceph_rbd_unmap_krbd "$KDEV" || e2e_check_failed "krbd: unmap after the OSD kill"
else
  e2e_check_failed "krbd: map for the OSD kill failed"
fi

e2e_step "monitor stop and start"
ceph_mon_stop
if ceph_mon_answers; then e2e_check_failed "the monitor answers while stopped"; else e2e_ok "monitor down"; fi
t3=$(ceph_now)
if ceph_mon_start; then e2e_ok "monitor back in $(ceph_secs "$t3") s"; else e2e_check_failed "monitor restart"; fi
if rbd create --size 16M "$CEPH_POOL/after-mon" && rbd rm --no-progress "$CEPH_POOL/after-mon" >/dev/null; then
  e2e_ok "image create/remove after the monitor restart"
else
  e2e_check_failed "image create/remove after the monitor restart"
fi

e2e_step "ceph_stop"
ceph_stop
trap - EXIT
e2e_finish
