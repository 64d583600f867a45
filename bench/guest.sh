# shellcheck shell=bash
# bench/guest.sh: the guest half of `make bench` (bench/run.sh boots the e2e
# guest once with tests/e2e/run-in-guest.sh and runs this script in it).
#
# usage (in the guest): bench/guest.sh RUNTIME_S REPEATS SIZE_MIB [PARTS] [GROUPS] [WORKLOADS] [MODES] [PF_SYSCALLS] [PLUGIN_ARGS] [ALT_ARGS] [ALT_BIN]
# PARTS: words out of "data profile plugin" (default: all three); data = the
# fio comparisons below, profile = perf profiles (bench/profile.sh), plugin =
# the plugin's memory, recovery and control plane (bench/plugin.sh),
# recovery = only the plugin part's two kill -9 recoveries (66, 256 exports);
# recprofile with recovery: perf and thread-wait samples across each kill.
# GROUPS: words out of "tmpfs ext4 null rbd" (default: the first three); rbd
# = one RBD image on a single-node Ceph in the guest (bench/rbd.sh): krbd
# (the baseline), rbd-nbd and ublk-tool's RBD target in user copy.
# WORKLOADS: names out of WORKLOADS below ("all" or empty: every one).
# MODES: copy modes to run ("all" or empty: every mode the kernel has).
# PF_SYSCALLS: 0 skips the profile part's syscall counts (default 1).
# PLUGIN_ARGS: more ublk-csi flags for the plugin part (they override its own).
# ALT_ARGS: with PARTS recovery, an A/B of each recovery: A B A B, B with these flags.
# ALT_BIN: the same A/B, B running this ublk-csi binary instead of BUILD_DIR's.
# Copy modes: user_copy and get_data, and zero_copy first where ublk-tool
# knows it and the kernel offers it (`ublk-tool features --copy_mode=zero_copy`).
#
# Sets up every device once: per backing (a file on tmpfs, a file on ext4 on
# the virtio data disk) a kernel loop device with direct I/O and a ublk file
# export per copy mode over the same file; null_blk and a ublk null export per
# copy mode. Then, per repeat, runs ONE fio invocation (fio's start-up takes
# seconds under TCG) with five stonewalled jobs per device, one job at a time
# (libaio, direct=1, time_based, RUNTIME s each). Repeats are
# interleaved (repeat 1 of every device, then repeat 2) so that a drift of the
# shared host's load shows as noise between repeats instead of as a bias
# against one device. Idle devices stay set up meanwhile (an idle ublk server
# sleeps in io_uring_enter).
#
# While fio runs, sampler() (bench/lib.sh) records the guest's /proc/stat and
# every ublk server's CPU time, context switches and RSS every 0.5 s; fio's
# per-second IOPS logs (epoch timestamps) tell the host where each job's I/O
# phase was, and report.py takes the counters over a window inside it.
#
# Output in $E2E_RESULT_DIR/bench (shared with the host): runs.tsv,
# devices.tsv, memory.tsv, guest.txt, fio/*.json, ts/*, logs/. Exit 0 only if
# every device came up and every run produced a result.
# shellcheck source=SCRIPTDIR/../tests/e2e/lib/guest.sh
. "$E2E_LIB"
BENCH_DIR=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source=SCRIPTDIR/lib.sh
. "$BENCH_DIR/lib.sh"
# shellcheck source=SCRIPTDIR/plugin.sh
. "$BENCH_DIR/plugin.sh"
e2e_require_ublk_tool

RUNTIME=${1:-10}
REPEATS=${2:-2}
SIZE_MIB=${3:-256}
PARTS=${4:-data profile plugin}
GROUPS_RUN=${5:-tmpfs ext4 null}
WORKLOADS_RUN=${6:-all}
MODES_RUN=${7:-all}
# shellcheck disable=SC2034 # read by profile.sh
PF_SYSCALLS=${8:-1}
# shellcheck disable=SC2034 # read by plugin.sh
PLUGIN_EXTRA_ARGS=${9:-}
# shellcheck disable=SC2034 # read by plugin.sh
PLUGIN_ALT_ARGS=${10:-}
# shellcheck disable=SC2034 # read by plugin.sh
PLUGIN_ALT_BIN=${11:-}
has_part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
has_group() { case " $GROUPS_RUN " in *" $1 "*) return 0 ;; esac; return 1; }
[ "$RUNTIME" -ge 4 ] || e2e_fail "RUNTIME must be >= 4 s (the counter window leaves out 1.5 s of each job)"
OUT=$E2E_RESULT_DIR/bench
rm -rf "$OUT"
mkdir -p "$OUT/fio" "$OUT/ts" "$OUT/logs" "$E2E_SCRATCH/fio-cwd"
FIFO=$E2E_SCRATCH/sampler.fifo
mkfifo "$FIFO" || e2e_fail "mkfifo $FIFO"

# name:rw:bs:iodepth
WORKLOADS="randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 randread-4k-qd1:randread:4k:1 seqread-128k-qd8:read:128k:8 seqwrite-128k-qd8:write:128k:8"
COPY_MODES="user_copy get_data"
if "$UBLK_TOOL" features --copy_mode=zero_copy 2>/dev/null | grep -q '^copy_mode=zero_copy$'; then
  COPY_MODES="zero_copy $COPY_MODES"
fi
# keep_words LIST WANTED: the words of LIST that are in WANTED ("all": LIST).
keep_words() {
  local w out=
  [ "$2" = all ] && { echo "$1"; return; }
  for w in $1; do
    case " $2 " in *" ${w%%:*} "*) out="$out $w" ;; esac
  done
  echo "${out# }"
}
WORKLOADS=$(keep_words "$WORKLOADS" "$WORKLOADS_RUN")
COPY_MODES=$(keep_words "$COPY_MODES" "$MODES_RUN")
# Only when asked for by name (BENCH_MODES="user_copy user_copy_ring"): the
# A/B variants of user copy (see start_ublk).
for m in user_copy_ring user_copy_pin_same user_copy_pin_split user_copy_null_zeros; do
  case " $MODES_RUN " in *" $m "*) COPY_MODES="$COPY_MODES $m" ;; esac
done
# MODE_pollN: copy mode MODE with N busy-poll rounds (0: none, the old default).
# MODE_pinned: copy mode MODE, its worker pinned to CPU 0 (see start_ublk).
# MODE_kpoll: MODE polling even while io-wq threads serve its I/O (pinned only).
for m in $MODES_RUN; do
  case $m in *_poll[0-9]* | *_pinned | *_kpoll) COPY_MODES="$COPY_MODES $m" ;; esac
done
COPY_MODES=${COPY_MODES# }
# selftest_*: the kernel's own selftest ublk server (kublk, built on the host
# by bench/selftest-server.sh into BUILD_DIR/bench-cache/selftest) as a
# baseline beside ours in every group (null target, or its loop target over
# the group's backing file), by name only; see start_selftest.
SELFTEST_MODES=
for m in $MODES_RUN; do
  case $m in selftest_*) SELFTEST_MODES="$SELFTEST_MODES $m" ;; esac
done
SELFTEST_SERVER=${BUILD_DIR:-}/bench-cache/selftest/kublk
if [ -n "$SELFTEST_MODES" ] && [ ! -x "$SELFTEST_SERVER" ]; then
  e2e_fail "$SELFTEST_SERVER is missing: bench/selftest-server.sh builds it (bench/run.sh does when BENCH_MODES names selftest_ modes)"
fi
[ -n "$COPY_MODES$SELFTEST_MODES" ] || e2e_fail "no copy mode left of '$MODES_RUN' on this kernel"
[ -n "$WORKLOADS" ] || e2e_fail "no workload left of '$WORKLOADS_RUN'"

e2e_step "guest facts"
{
  echo "guest_kernel=$(uname -r)"
  echo "guest_nproc=$(nproc)"
  echo "guest_cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "guest_mem_kb=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)"
  echo "fio=$(fio --version)"
  echo "losetup=$(losetup --version)"
  echo "runtime_s=$RUNTIME"
  echo "repeats=$REPEATS"
  echo "size_mib=$SIZE_MIB"
  echo "parts=$PARTS"
  echo "groups=$GROUPS_RUN"
  echo "copy_modes=$COPY_MODES"
  [ -n "$SELFTEST_MODES" ] && echo "selftest_server=kublk of $(cat "$SELFTEST_SERVER.stamp" 2>/dev/null | cut -d' ' -f1-2):$SELFTEST_MODES"
  echo "workloads=$WORKLOADS"
  "$UBLK_TOOL" features 2>&1 | sed 's/^/ublk_features./'
  for p in /sys/module/null_blk/parameters/*; do
    echo "null_blk.$(basename "$p")=$(cat "$p" 2>/dev/null)"
  done
} > "$OUT/guest.txt"

printf 'repeat\tgroup\tdevice\tkind\tcopy_mode\tworkload\tfio_json\tjobname\tiops_log\tsamples\n' > "$OUT/runs.tsv"
printf 'group\tdevice\tdev\tlogical_block_size\tphysical_block_size\tscheduler\tnr_hw_queues\tnote\n' > "$OUT/devices.tsv"
printf 'repeat\tgroup\tdevice\tpoint\tvmrss_kb\tvmhwm_kb\n' > "$OUT/memory.tsv"

# Devices, in run order: "group label kind copy_mode dev pid".
DEVICES=()
SERVERS=()

# prepare_dev DEV GROUP LABEL NOTE: scheduler none, records block sizes.
prepare_dev() {
  local dev=$1 b sched
  b=$(basename "$dev")
  if [ -w "/sys/block/$b/queue/scheduler" ]; then
    echo none > "/sys/block/$b/queue/scheduler" 2>/dev/null \
      || e2e_check_failed "$dev: cannot set scheduler none"
  fi
  sched=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "/sys/block/$b/queue/scheduler" 2>/dev/null)
  [ -n "$sched" ] || sched=$(cat "/sys/block/$b/queue/scheduler" 2>/dev/null)
  [ "$sched" = none ] || e2e_check_failed "$dev: scheduler is '$sched', want none"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$dev" \
    "$(cat "/sys/block/$b/queue/logical_block_size")" \
    "$(cat "/sys/block/$b/queue/physical_block_size")" "$sched" \
    "$(ls "/sys/block/$b/mq" 2>/dev/null | wc -l)" "$4" >> "$OUT/devices.tsv"
}

# start_ublk GROUP LABEL COPY_MODE SERVE_ARGS...: starts a ublk-tool server in
# the background (servers start in parallel: each takes seconds under TCG);
# finish_ublks waits for all of them.
PENDING=()
# pin_cpu server|fio-same|fio-split: the CPU of the pinned A/B modes.
pin_cpu() {
  local last=$(( $(nproc) - 1 ))
  case $1 in
    server | fio-same) echo "$last" ;;
    fio-split) echo 0 ;;
  esac
}
start_ublk() {
  local group=$1 label=$2 mode=$3 log ready
  shift 3
  log=$E2E_SCRATCH/serve-$group-$label.log
  ready=$E2E_SCRATCH/ready-$group-$label
  rm -f "$ready"
  # user_copy_ring: user copy with the copies as SQEs on the worker's ring
  # instead of a pread/pwrite per request (an A/B row; slower, see README).
  # user_copy_null_zeros: user copy with the null target's default (zeros).
  # MODE_pollN (user_copy_poll0, zero_copy_poll0, ...): copy mode MODE with
  # N busy-poll rounds before a worker sleeps (--busy_poll_rounds; the
  # default is 128), _poll0 none.
  # MODE_pinned (zero_copy_pinned, zero_copy_poll0_pinned, ...): MODE with the worker
  # pinned (--pin_workers: worker 0 on the first CPU) and fio left to the
  # scheduler, as the selftest server pins its queue thread (to the first
  # CPU of the queue's affinity).
  # MODE_kpoll (zero_copy_kpoll_pinned): MODE with
  # --poll_while_on_kernel_threads, a pinned worker's polling of sessions
  # 15-17 (a file on tmpfs in zero copy: it spins while io-wq threads copy;
  # an unpinned worker always does, so zero_copy_kpoll is zero_copy).
  # user_copy_pin_same / _pin_split: the server pinned to the last CPU, and
  # fio's job on the same CPU / on CPU 0 (run_repeat), against the unpinned
  # default (where the scheduler places both).
  local base=${mode%_pinned} mode_args pin=() kpoll=
  case $base in *_kpoll) base=${base%_kpoll} kpoll=1 ;; esac
  mode_args=(--copy_mode="$base")
  case $base in
    user_copy_ring) mode_args=(--copy_mode=user_copy --user_copy_on_ring=true) ;;
    user_copy_pin_*) mode_args=(--copy_mode=user_copy); pin=(taskset -c "$(pin_cpu server)") ;;
    # The null target as volumes-safe code would run it: READs answer zeros,
    # WRITEs' data is copied out of the kernel (then dropped).
    user_copy_null_zeros) mode_args=(--copy_mode=user_copy --null_reads=zeros) ;;
    *_poll[0-9]*) mode_args=(--copy_mode="${base%_poll*}" --busy_poll_rounds="${base##*_poll}") ;;
  esac
  case $mode in *_pinned) mode_args+=(--pin_workers) ;; esac
  [ -n "$kpoll" ] && mode_args+=(--poll_while_on_kernel_threads)
  "${pin[@]}" "$UBLK_TOOL" serve "$@" "${mode_args[@]}" --queues=1 --depth=64 --ready_file="$ready" \
    > "$log" 2>&1 &
  PENDING+=("$group|$label|$mode|$!|$log|$ready|ublk-tool serve $* ${mode_args[*]} --queues=1 --depth=64")
}

finish_ublks() {
  local p group label mode pid log ready note dev i
  for p in "${PENDING[@]}"; do
    IFS='|' read -r group label mode pid log ready note <<< "$p"
    dev=
    for i in $(seq 600); do
      if [ -s "$ready" ]; then
        read -r dev _ < "$ready"
        [ -b "$dev" ] && break
        dev=
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$dev" ]; then
      e2e_check_failed "$group $label: export did not come up; its log:"
      sed 's/^/  | /' "$log" | tail -20
      kill -9 "$pid" 2>/dev/null
      continue
    fi
    grep -q "O_DIRECT refused" "$log" && note="$note; backing O_DIRECT refused: buffered I/O"
    prepare_dev "$dev" "$group" "$label" "$note"
    srv_sample "$pid"
    printf '0\t%s\t%s\tidle\t%s\t%s\n' "$group" "$label" "$S_RSS" "$(hwm "$pid")" >> "$OUT/memory.tsv"
    DEVICES+=("$group $label ublk $mode $dev $pid")
    SERVERS+=("$pid|$dev|$log|$group|$label")
    SRV_PIDS+=("$pid")
  done
  PENDING=()
}
SRV_PIDS=()

# start_selftest GROUP MODE ID [FILE]: the kernel's selftest server serving
# /dev/ublkbID (in the foreground, so that its PID is the server's), with the
# same queue shape as start_ublk's exports: a null device in the null group,
# its loop target over FILE in the tmpfs and ext4 groups (kublk opens the
# backing file O_DIRECT, as losetup --direct-io=on does; tmpfs takes O_DIRECT
# since 6.6). Its null target touches no data of its own; what moves the
# bytes is the copy mode: selftest_copy (the
# kernel copies into the server's buffers), selftest_user_copy (-u: pread /
# pwrite on /dev/ublkcN in 2 KiB pieces, for both reads and writes),
# selftest_zero_copy (-z: register, NOP on the buffer, unregister per I/O),
# selftest_auto_zc (--auto_zc: the kernel registers the buffer), and
# selftest_batch / selftest_batch_auto_zc (-b: UBLK_F_BATCH_IO, 7.x).
SELFTEST_IDS=()
# selftest_settled ID PID: the device is up, or its server has exited.
selftest_settled() {
  { [ -b "/dev/ublkb$1" ] && [ -r "/sys/block/ublkb$1/size" ]; } || ! kill -0 "$2"
}
start_selftest() {
  local group=$1 mode=$2 id=$3 file=${4:-} flags=() target=(-t null) pid log granted dev=/dev/ublkb$3
  [ -n "$file" ] && target=(-t loop)
  case $mode in
    selftest_copy) ;;
    selftest_user_copy) flags=(-u) ;;
    selftest_zero_copy) flags=(-z) ;;
    selftest_auto_zc) flags=(--auto_zc) ;;
    selftest_batch) flags=(-b) ;;
    selftest_batch_auto_zc) flags=(-b --auto_zc) ;;
    *) e2e_check_failed "unknown selftest mode '$mode'"; return ;;
  esac
  log=$E2E_SCRATCH/selftest-$group-$mode.log
  # shellcheck disable=SC2086 # $file: no word when the target is null
  "$SELFTEST_SERVER" add "${target[@]}" -q 1 -d 64 -n "$id" --foreground "${flags[@]}" $file > "$log" 2>&1 &
  pid=$!
  e2e_wait_for 60 selftest_settled "$id" "$pid"
  if [ ! -b "$dev" ] || ! kill -0 "$pid" 2>/dev/null; then
    e2e_check_failed "$group: selftest server ($mode) did not serve $dev; its log:"
    sed 's/^/  | /' "$log" | tail -20
    kill -9 "$pid" 2>/dev/null
    return
  fi
  SELFTEST_IDS+=("$id|$pid|$log")
  # The flags the kernel granted: an older kernel drops the ones it does not
  # know (BATCH_IO on 6.12) and kublk serves without them.
  granted=$("$SELFTEST_SERVER" list -n "$id" 2>/dev/null | sed -n 's/.* flags \(0x[0-9a-f]*\).*/\1/p' | head -1)
  prepare_dev "$dev" "$group" "ublk-$mode" \
    "kernel selftest server: kublk add ${target[*]} -q 1 -d 64${flags[*]:+ ${flags[*]}}; device flags ${granted:-unknown}"
  srv_sample "$pid"
  printf '0\t%s\t%s\tidle\t%s\t%s\n' "$group" "ublk-$mode" "$S_RSS" "$(hwm "$pid")" >> "$OUT/memory.tsv"
  DEVICES+=("$group ublk-$mode ublk $mode $dev $pid")
  SRV_PIDS+=("$pid")
}
# start_selftests GROUP [FILE]: start_selftest for every selftest mode asked
# for, on device ids from 200 down across the groups (ublk-tool's exports
# take the lowest free ones).
SELFTEST_ID=200
start_selftests() {
  local m
  for m in $SELFTEST_MODES; do
    start_selftest "$1" "$m" "$SELFTEST_ID" "${2:-}"
    SELFTEST_ID=$((SELFTEST_ID - 1))
  done
}

# add_loop GROUP FILE
add_loop() {
  local group=$1 file=$2 dev dio
  if ! dev=$(losetup --direct-io=on --find --show "$file"); then
    e2e_check_failed "$group: losetup --direct-io=on $file failed"
    return
  fi
  dio=$(cat "/sys/block/$(basename "$dev")/loop/dio" 2>/dev/null)
  [ "$dio" = 1 ] || e2e_check_failed "$group: $dev has dio=$dio, want 1"
  prepare_dev "$dev" "$group" loop "losetup --direct-io=on (sysfs loop/dio=$dio)"
  DEVICES+=("$group loop loop - $dev -")
  LOOPS+=("$dev")
}
LOOPS=()

# run_repeat REPEAT: one fio invocation for every device and workload (one
# fio start-up per repeat: seconds under TCG), all jobs stonewalled so they
# run one at a time. Each job writes a per-second IOPS log with epoch
# timestamps (so the host can tell where its I/O phase was) while sampler()
# records the counters every 0.5 s.
run_repeat() {
  local rep=$1 d group label kind mode dev pid w name rw bs qd jn col
  local tag=r$rep job json rc spid i=0
  job=$E2E_SCRATCH/fio-cwd/$tag.fio
  json=fio/$tag.json
  {
    echo "[global]"
    echo "ioengine=libaio"
    echo "direct=1"
    echo "time_based"
    echo "runtime=$RUNTIME"
    echo "size=${SIZE_MIB}M"
    echo "norandommap"
    echo "randrepeat=0"
    echo "numjobs=1"
    echo "log_avg_msec=1000"
    echo "log_unix_epoch=1"
  } > "$job"
  : > "$OUT/ts/$tag.runs"
  for d in "${DEVICES[@]}"; do
    read -r group label kind mode dev pid <<< "$d"
    col=-
    for i in "${!SRV_PIDS[@]}"; do [ "${SRV_PIDS[$i]}" = "$pid" ] && col=$i; done
    for w in $WORKLOADS; do
      IFS=: read -r name rw bs qd <<< "$w"
      jn=$group.$label.$name
      {
        echo
        echo "[$jn]"
        echo "stonewall"
        echo "filename=$dev"
        echo "rw=$rw"
        echo "bs=$bs"
        echo "iodepth=$qd"
        echo "write_iops_log=$OUT/ts/$tag-$jn"
        case $mode in
          user_copy_pin_same) echo "cpus_allowed=$(pin_cpu fio-same)" ;;
          user_copy_pin_split) echo "cpus_allowed=$(pin_cpu fio-split)" ;;
        esac
      } >> "$job"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$group" "$label" "$kind" "$mode" \
        "$name" "$json" "$jn" "$col" >> "$OUT/ts/$tag.runs"
    done
  done
  cp "$job" "$OUT/logs/"
  sampler "$OUT/ts/$tag.samples" "$FIFO" "${SRV_PIDS[@]}" &
  spid=$!
  ( cd "$E2E_SCRATCH/fio-cwd" && timeout $(( ${#DEVICES[@]} * $(wc -w <<< "$WORKLOADS") * (RUNTIME + 30) )) \
      fio --output-format=json --output="$OUT/$json" "$job" ) > "$OUT/logs/fio-$tag.log" 2>&1
  rc=$?
  # The sampler's own CPU time (it shares the guest's CPUs with the device under test).
  local st
  read -r -a st < "/proc/$spid/stat" && \
    echo "sampler_r${rep}=$(( st[13] + st[14] )) ticks over $(( $(wc -l < "$OUT/ts/$tag.samples") )) samples" >> "$OUT/guest.txt"
  kill "$spid"; wait "$spid" 2>/dev/null
  [ $rc = 0 ] || e2e_check_failed "$tag: fio exited with $rc: $(tail -3 "$OUT/logs/fio-$tag.log")"
  for d in "${DEVICES[@]}"; do
    read -r group label kind mode dev pid <<< "$d"
    [ "$pid" = - ] && continue
    srv_sample "$pid"
    printf '%s\t%s\t%s\tafter-io\t%s\t%s\n' "$rep" "$group" "$label" "$S_RSS" "$(hwm "$pid")" >> "$OUT/memory.tsv"
  done
  # fio names each log PREFIX_iops.N.log (N: the job's index in the file).
  while IFS=$'\t' read -r rep group label kind mode name json jn col; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$group" "$label" "$kind" "$mode" \
      "$name" "$json" "$jn" "ts/$(basename "$(ls "$OUT/ts/$tag-$jn"_iops.*.log 2>/dev/null | head -1)")" \
      "ts/$tag.samples:$col" >> "$OUT/runs.tsv"
  done < "$OUT/ts/$tag.runs"
  echo "  [$(now)s] $tag: done"
}

if has_part data || has_part profile; then
  # Backing files, written in full so that no run reads holes or allocates.
  TMPFS_FILE=$E2E_SCRATCH/bench-backing.img
  if has_group tmpfs || has_part profile; then
    e2e_step "backing file on tmpfs ($SIZE_MIB MiB)"
    dd if=/dev/zero of="$TMPFS_FILE" bs=1M count="$SIZE_MIB" status=none || e2e_fail "write $TMPFS_FILE"
  fi
  EXT4_FILE=
  if [ -n "${E2E_DATA_DIR:-}" ] && has_group ext4; then
    EXT4_FILE=$E2E_DATA_DIR/bench-backing.img
    e2e_step "backing file on ext4 on the virtio disk ($SIZE_MIB MiB)"
    rm -f "$EXT4_FILE"
    dd if=/dev/zero of="$EXT4_FILE" bs=1M count="$SIZE_MIB" oflag=direct conv=fsync status=none \
      || e2e_fail "write $EXT4_FILE"
    echo "data_disk_fs=$(findmnt -n -o FSTYPE,OPTIONS "$E2E_DATA_DIR")" >> "$OUT/guest.txt"
    echo "data_disk_dev=$(findmnt -n -o SOURCE "$E2E_DATA_DIR") scheduler=$(cat /sys/block/vda/queue/scheduler 2>/dev/null)" >> "$OUT/guest.txt"
  else
    echo "no data disk (run-in-guest.sh --data-disk): ext4 rows skipped" | tee -a "$OUT/guest.txt"
  fi
  [ -b /dev/nullb0 ] || modprobe null_blk || e2e_fail "no null_blk"

  e2e_step "devices"
  if has_group tmpfs; then
    add_loop tmpfs "$TMPFS_FILE"
    for m in $COPY_MODES; do start_ublk tmpfs "ublk-$m" "$m" --target=file --backing="$TMPFS_FILE"; done
    finish_ublks
    start_selftests tmpfs "$TMPFS_FILE"
  fi
  if [ -n "$EXT4_FILE" ] && has_group ext4; then
    add_loop ext4 "$EXT4_FILE"
    for m in $COPY_MODES; do start_ublk ext4 "ublk-$m" "$m" --target=file --backing="$EXT4_FILE"; done
    finish_ublks
    start_selftests ext4 "$EXT4_FILE"
  fi
  if has_group rbd; then
    # shellcheck source=SCRIPTDIR/rbd.sh
    . "$BENCH_DIR/rbd.sh"
    rbd_bench_setup
  fi
  if has_group null; then
    prepare_dev /dev/nullb0 null null_blk "null_blk module defaults"
    DEVICES+=("null null_blk null_blk - /dev/nullb0 -")
    # Reads untouched in user copy and zero copy, as null_blk does.
    for m in $COPY_MODES; do
      start_ublk null "ublk-$m" "$m" --target=null --null_reads=untouched --size=$((SIZE_MIB * 1048576))
    done
    finish_ublks
    start_selftests null
  fi

  t_start=$(now)
  has_part data || REPEATS=0
  for rep in $(seq "$REPEATS"); do
    e2e_step "repeat $rep: ${#DEVICES[@]} devices x $(wc -w <<< "$WORKLOADS") workloads x $RUNTIME s"
    run_repeat "$rep"
  done
  echo "bench_seconds=$(awk -v a="$t_start" -v b="$(now)" 'BEGIN {print b - a}')" >> "$OUT/guest.txt"

  if has_part profile; then
    # shellcheck source=SCRIPTDIR/profile.sh
    . "$BENCH_DIR/profile.sh"
    profile_bench "$OUT"
  fi

  e2e_step "teardown"
  for s in "${SERVERS[@]}"; do
    # shellcheck disable=SC2034 # SRV_PID, SRV_DEV, SRV_LOG are ublk_stop's inputs
    IFS='|' read -r SRV_PID SRV_DEV SRV_LOG _ _ <<< "$s"
    cp "$SRV_LOG" "$OUT/logs/" 2>/dev/null
    ublk_stop TERM || e2e_check_failed "$SRV_DEV: clean stop"
  done
  for s in "${SELFTEST_IDS[@]}"; do
    IFS='|' read -r id pid log <<< "$s"
    cp "$log" "$OUT/logs/" 2>/dev/null
    "$SELFTEST_SERVER" del -n "$id" > /dev/null 2>&1 || e2e_check_failed "kublk del -n $id"
    wait "$pid" 2>/dev/null
  done
  for l in "${LOOPS[@]}"; do losetup -d "$l" || e2e_check_failed "losetup -d $l"; done
  has_group rbd && rbd_bench_teardown
fi

if has_part plugin; then
  plugin_bench "$OUT"
elif has_part recovery; then
  plugin_bench "$OUT" recovery "$(has_part recprofile && echo profile)"
fi
e2e_finish
