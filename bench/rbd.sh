# shellcheck shell=bash
# bench/rbd.sh: the "rbd" group of bench/guest.sh (BENCH_GROUPS=rbd, issue 21):
# one RBD image on the single-node Ceph of tests/e2e/lib/ceph.sh, served to
# the same fio jobs as every other group by
#   krbd      the kernel's rbd driver (`rbd device map`): the baseline
#   rbd-nbd   librbd in the rbd-nbd daemon over the nbd driver (what
#             ceph-csi's rbd-nbd mounter runs); its process is sampled as
#             the "server" (CPU and context switches per I/O, RSS)
#   ublk-*    the project's RBD target (ublk-tool serve --target=rbd, user
#             copy: librbd needs user memory), rbd_bench_ublk_hook below
# The image is written in full through krbd first (no run reads holes: an
# absent RADOS object answers reads without touching the store). The devices
# are mapped side by side on the one image; fio runs on one at a time
# (stonewall). With exclusive-lock (on by default) the lock moves to a
# device's client on that device's first write; the counters leave out each
# job's first 1.5 s.
# librbd's cache is off (BENCH_RBD_CACHE=true turns it on for rbd-nbd; the
# ublk target keeps its own default, off): krbd has none and fio runs with
# O_DIRECT, so the rows compare the data paths.
# Sourced by guest.sh after lib.sh; uses its prepare_dev, start_ublk,
# finish_ublks, DEVICES, SRV_PIDS, SERVERS, OUT, SIZE_MIB, COPY_MODES,
# MODES_RUN.
# shellcheck source=SCRIPTDIR/../tests/e2e/lib/ceph.sh
. "$SRC_DIR/tests/e2e/lib/ceph.sh"

RBD_BENCH_IMAGE=bench
RBD_BENCH_MAPS=()   # "krbd DEV" / "nbd DEV", unmapped at teardown

# rbd_bench_add_device LABEL DEV [PID] [NOTE]: one more device of the rbd
# group; PID (a serving process: rbd-nbd, ublk-tool) gets its CPU, context
# switches and RSS sampled like a ublk server's. The hook for the project's
# RBD target: anything that serves the image as a block device can be added.
rbd_bench_add_device() {
  local label=$1 dev=$2 pid=${3:--} note=${4:-} kind=$1
  prepare_dev "$dev" rbd "$label" "$note"
  case $label in ublk-*) kind=ublk ;; esac
  DEVICES+=("rbd $label $kind - $dev $pid")
  if [ "$pid" != - ]; then
    SRV_PIDS+=("$pid")
    srv_sample "$pid"
    printf '0\trbd\t%s\tidle\t%s\t%s\n' "$label" "$S_RSS" "$(hwm "$pid")" >> "$OUT/memory.tsv"
  fi
}

# rbd_bench_ublk_hook POOL IMAGE: the project's RBD target (ublk-tool serve
# --target=rbd, the flags of tests/e2e/scenarios/rbd-engine.sh) on the same
# image, one export per copy mode, started by guest.sh's start_ublk (1 queue,
# depth 64, its server sampled like every ublk row). User copy only by
# default: librbd reads into and writes from plain user memory, so the
# target refuses zero copy (ublk/rbd_target.h; CopyModeFor() gives user copy
# on 6.12 and 7.x, as the plugin would); BENCH_MODES naming other modes adds
# them (zero_copy is dropped: it would be a second user-copy row). The
# target sets its own librbd options (rbd_cache off, ublk/rbd_cluster.cc)
# and reads no ceph.conf: BENCH_RBD_CACHE=true does not reach it.
# Defined here only if no one defined it before (a caller may serve the
# image some other way and add it with rbd_bench_add_device).
if ! declare -F rbd_bench_ublk_hook >/dev/null; then
  rbd_bench_ublk_hook() {
    local m modes=user_copy key=$E2E_SCRATCH/rbd-bench.key log got
    if [ "$MODES_RUN" != all ]; then
      modes=
      for m in $COPY_MODES; do [ "$m" = zero_copy ] || modes="$modes $m"; done
    fi
    [ -n "${modes// /}" ] || { echo "rbd: no copy mode for the ublk RBD target in '$MODES_RUN'" | tee -a "$OUT/guest.txt"; return; }
    e2e_step "rbd: ublk RBD target ($modes )"
    (umask 077; printf '%s\n' "$CEPH_KEY" > "$key")
    for m in $modes; do
      start_ublk rbd "ublk-$m" "$m" --target=rbd --rbd_mon_host="$CEPH_MON_HOST" \
        --rbd_user="$CEPH_USER" --rbd_key_file="$key" --rbd_pool="$1" --rbd_image="$2"
    done
    finish_ublks
    # The copy mode the export really got (READY line), and no key in the log.
    for m in $modes; do
      log=$E2E_SCRATCH/serve-rbd-ublk-$m.log
      got=$(sed -n 's/^READY .* copy_mode=\([a-z_]*\).*/\1/p' "$log" 2>/dev/null | head -1)
      echo "rbd_ublk_$m=$got" >> "$OUT/guest.txt"
      [ -z "$got" ] || [ "$got" = "${m%_ring}" ] \
        || e2e_check_failed "rbd: ublk-$m was served with copy_mode=$got"
      if grep -qF "$CEPH_KEY" "$log" 2>/dev/null; then
        e2e_check_failed "rbd: the cephx key appears in $log"
      fi
    done
  }
fi

rbd_bench_setup() {
  local cdir dev pid cache=${BENCH_RBD_CACHE:-false} t0
  e2e_step "rbd: single-node Ceph"
  cdir=$(ceph_pick_dir)
  t0=$(ceph_now)
  ceph_start "$cdir" || { e2e_check_failed "rbd: ceph_start failed: no rbd rows"; return 1; }
  {
    echo "rbd_ceph_start_s=$(ceph_secs "$t0")"
    echo "rbd_ceph_dir=$cdir ($(findmnt -n -o FSTYPE -T "$cdir"))"
    echo "rbd_ceph_version=$(ceph-osd --version 2>/dev/null | head -1)"
    echo "rbd_cache=$cache"
  } >> "$OUT/guest.txt"
  # rbd-nbd reads [client] of the config (the ublk target reads no config).
  printf '\n[client]\nrbd_cache = %s\n' "$cache" >> "$CEPH_CONF"
  rbd create --size "${SIZE_MIB}M" "$CEPH_POOL/$RBD_BENCH_IMAGE" \
    || { e2e_check_failed "rbd: rbd create failed"; return 1; }
  echo "rbd_image_features=$(rbd info "$CEPH_POOL/$RBD_BENCH_IMAGE" | sed -n 's/^\s*features: //p')" >> "$OUT/guest.txt"

  e2e_step "rbd: krbd map and fill the image"
  if dev=$(ceph_rbd_map_krbd "$RBD_BENCH_IMAGE"); then
    RBD_BENCH_MAPS+=("krbd $dev")
    dd if=/dev/zero of="$dev" bs=4M count=$((SIZE_MIB / 4)) oflag=direct status=none \
      || e2e_check_failed "rbd: filling the image through $dev failed"
    rbd_bench_add_device krbd "$dev" - "rbd device map -t krbd ($(uname -r))"
  else
    e2e_check_failed "rbd: krbd map failed: no krbd baseline"
  fi

  e2e_step "rbd: rbd-nbd map"
  if ! command -v rbd-nbd >/dev/null; then
    echo "rbd: rbd-nbd not installed: no rbd-nbd rows" | tee -a "$OUT/guest.txt"
  elif ! ceph_load_modules nbd; then
    e2e_check_failed "rbd: no nbd module: no rbd-nbd rows"
  elif dev=$(timeout 120 rbd-nbd map "$CEPH_POOL/$RBD_BENCH_IMAGE"); then
    RBD_BENCH_MAPS+=("nbd $dev")
    pid=$(rbd-nbd list-mapped 2>/dev/null | awk -v d="$dev" '$NF == d || $6 == d {print $1; exit}')
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || pid=$(pgrep -x rbd-nbd | head -1)
    rbd_bench_add_device rbd-nbd "$dev" "${pid:--}" "rbd-nbd $(rbd-nbd --version 2>/dev/null | head -1)"
  else
    e2e_check_failed "rbd: rbd-nbd map failed"
  fi

  rbd_bench_ublk_hook "$CEPH_POOL" "$RBD_BENCH_IMAGE"
}

rbd_bench_teardown() {
  local m kind dev
  for m in "${RBD_BENCH_MAPS[@]}"; do
    read -r kind dev <<< "$m"
    case $kind in
      krbd) ceph_rbd_unmap_krbd "$dev" || e2e_check_failed "rbd: unmap $dev" ;;
      nbd) timeout 60 rbd-nbd unmap "$dev" || e2e_check_failed "rbd: rbd-nbd unmap $dev" ;;
    esac
  done
  cp "$CEPH_DIR/log/osd.0.log" "$OUT/logs/" 2>/dev/null
  ceph_stop
}
