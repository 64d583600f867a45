# bench/guest.sh: the guest half of `make bench` (bench/run.sh boots the e2e
# guest once with tests/e2e/run-in-guest.sh and runs this script in it).
#
# usage (in the guest): bench/guest.sh RUNTIME_S REPEATS SIZE_MIB
#
# For every repeat, every group (backing file on tmpfs, backing file on ext4
# on the virtio data disk, null devices) and every device of the group (the
# kernel baseline and a ublk export per copy mode), runs five fio workloads
# (libaio, direct=1, time_based) and records, per run: fio's JSON, the guest's
# /proc/stat deltas (CPU ticks, context switches) and, for ublk, the serving
# process's CPU ticks, context switches and VmRSS/VmHWM. Repeats are
# interleaved (repeat 1 of every device, then repeat 2) so that a drift of
# the shared host's load shows as noise between repeats instead of as a bias
# against one device.
#
# Output in $E2E_RESULT_DIR/bench (shared with the host): runs.tsv,
# devices.tsv, memory.tsv, guest.txt, fio/*.json, logs/. Exit 0 only if every
# run produced a result.
. "$E2E_LIB"
e2e_require_ublk_tool

RUNTIME=${1:-10}
REPEATS=${2:-2}
SIZE_MIB=${3:-256}
OUT=$E2E_RESULT_DIR/bench
rm -rf "$OUT"
mkdir -p "$OUT/fio" "$OUT/logs"

WORKLOADS="randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 randread-4k-qd1:randread:4k:1 seqread-128k-qd8:read:128k:8 seqwrite-128k-qd8:write:128k:8"
COPY_MODES="user_copy get_data"

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
  echo "ublk_features=$("$UBLK_TOOL" features 2>/dev/null | tr '\n' ' ')"
  for p in /sys/module/null_blk/parameters/*; do
    echo "null_blk.$(basename "$p")=$(cat "$p" 2>/dev/null)"
  done
} > "$OUT/guest.txt"

printf 'repeat\tgroup\tdevice\tkind\tcopy_mode\tworkload\tfio_json\twin_s\tcpu_busy_ticks\tcpu_total_ticks\tctxt\tsrv_cpu_ticks\tsrv_ctxt\tsrv_rss_kb\tsrv_hwm_kb\n' > "$OUT/runs.tsv"
printf 'repeat\tgroup\tdevice\tdev\tlogical_block_size\tphysical_block_size\tscheduler\tnr_hw_queues\tnote\n' > "$OUT/devices.tsv"
printf 'repeat\tgroup\tdevice\tpoint\tvmrss_kb\tvmhwm_kb\n' > "$OUT/memory.tsv"

# The samplers use bash builtins only: a fork+exec costs tens of ms under TCG.
# cpu_sample: prints "busy total ctxt" from /proc/stat (busy excludes idle and iowait).
cpu_sample() {
  local k u n s i w q sq st rest b=0 t=0 c=0
  while read -r k u n s i w q sq st rest; do
    case $k in
      cpu) t=$((u + n + s + i + w + q + sq + st)); b=$((t - i - w)) ;;
      ctxt) c=$u ;;
    esac
  done < /proc/stat
  echo "$b $t $c"
}
# srv_sample PID: prints "cpu_ticks ctxt rss_kb hwm_kb" of a process (all threads).
srv_sample() {
  local pid=$1 f k v rest ticks=0 ctx=0 rss=0 hwm=0 fields
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || { echo "- - - -"; return; }
  # utime and stime are fields 14 and 15; the comm field has no spaces here.
  read -r -a fields < "/proc/$pid/stat"
  ticks=$(( fields[13] + fields[14] ))
  for f in /proc/"$pid"/task/*/status; do
    while read -r k v rest; do
      case $k in voluntary_ctxt_switches:|nonvoluntary_ctxt_switches:) ctx=$((ctx + v)) ;; esac
    done < "$f"
  done
  while read -r k v rest; do
    case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; esac
  done < "/proc/$pid/status"
  echo "$ticks $ctx $rss $hwm"
}
# now: guest uptime in seconds (builtin only).
now() { local u rest; read -r u rest < /proc/uptime; echo "$u"; }

# prepare_dev DEV REPEAT GROUP LABEL NOTE: scheduler none, records block sizes.
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
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$4" "$dev" \
    "$(cat "/sys/block/$b/queue/logical_block_size")" \
    "$(cat "/sys/block/$b/queue/physical_block_size")" "$sched" \
    "$(ls "/sys/block/$b/mq" 2>/dev/null | wc -l)" "$5" >> "$OUT/devices.tsv"
}

# run_workloads REPEAT GROUP LABEL KIND COPY_MODE DEV SRV_PID
# Counters are sampled over a window inside the I/O phase, [2 s, RUNTIME-1 s]
# after fio starts, so fio's own start-up and exit (seconds under TCG) do not
# count against the device; with RUNTIME < 6 the window is the whole run
# (win_s "-": per-I/O numbers then use fio's total I/O count).
run_workloads() {
  local rep=$1 group=$2 label=$3 kind=$4 mode=$5 dev=$6 pid=$7 w name rw bs qd json
  local c0 c1 s0 s1 t0 t1 win fpid rc
  for w in $WORKLOADS; do
    IFS=: read -r name rw bs qd <<< "$w"
    json=fio/r$rep-$group-$label-$name.json
    [ "$RUNTIME" -ge 6 ] || { c0=$(cpu_sample); s0=$(srv_sample "$pid"); }
    timeout $((RUNTIME + 90)) fio --name="$name" --filename="$dev" --ioengine=libaio \
      --direct=1 --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 --time_based \
      --runtime="$RUNTIME" --size="${SIZE_MIB}M" --norandommap --randrepeat=0 \
      --output-format=json --output="$OUT/$json" > "$OUT/logs/fio-last.log" 2>&1 &
    fpid=$!
    win=-
    if [ "$RUNTIME" -ge 6 ]; then
      sleep 2
      c0=$(cpu_sample); s0=$(srv_sample "$pid"); t0=$(now)
      sleep $((RUNTIME - 3))
      c1=$(cpu_sample); s1=$(srv_sample "$pid"); t1=$(now)
      win=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    fi
    wait "$fpid"; rc=$?
    if [ $rc != 0 ]; then
      e2e_check_failed "r$rep $group $label $name: fio exited with $rc: $(tail -3 "$OUT/logs/fio-last.log")"
      continue
    fi
    [ "$RUNTIME" -ge 6 ] || { c1=$(cpu_sample); s1=$(srv_sample "$pid"); }
    local after
    after=$(srv_sample "$pid")
    # shellcheck disable=SC2086
    set -- $c0 $c1 $s0 $s1 $after
    local srv_cpu=- srv_ctx=- rss=- hwm=-
    if [ "$7" != - ] && [ "${11}" != - ]; then
      srv_cpu=$(( ${11} - $7 )); srv_ctx=$(( ${12} - $8 )); rss=${17}; hwm=${18}
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$group" "$label" \
      "$kind" "$mode" "$name" "$json" "$win" $(( $4 - $1 )) $(( $5 - $2 )) $(( $6 - $3 )) \
      "$srv_cpu" "$srv_ctx" "$rss" "$hwm" >> "$OUT/runs.tsv"
    echo "  [$(now)s] r$rep $group $label $name: done"
  done
}

# bench_ublk REPEAT GROUP LABEL COPY_MODE SERVE_ARGS...
bench_ublk() {
  local rep=$1 group=$2 label=$3 mode=$4 note
  shift 4
  if ! ublk_serve "r$rep-$group-$label" "$@" --copy_mode="$mode" --queues=1 --depth=64; then
    e2e_check_failed "r$rep $group $label: export did not come up"
    return
  fi
  cp "$SRV_LOG" "$OUT/logs/r$rep-$group-$label.serve.log"
  note="ublk-tool $*"
  grep -q "O_DIRECT refused" "$SRV_LOG" && note="$note; backing O_DIRECT refused: buffered"
  prepare_dev "$SRV_DEV" "$rep" "$group" "$label" "$note"
  sleep 1
  set -- $(srv_sample "$SRV_PID")
  printf '%s\t%s\t%s\tidle\t%s\t%s\n' "$rep" "$group" "$label" "$3" "$4" >> "$OUT/memory.tsv"
  run_workloads "$rep" "$group" "$label" ublk "$mode" "$SRV_DEV" "$SRV_PID"
  set -- $(srv_sample "$SRV_PID")
  printf '%s\t%s\t%s\tafter-io\t%s\t%s\n' "$rep" "$group" "$label" "$3" "$4" >> "$OUT/memory.tsv"
  ublk_stop TERM || e2e_check_failed "r$rep $group $label: clean stop"
  cp "$SRV_LOG" "$OUT/logs/r$rep-$group-$label.serve.log"
}

# bench_loop REPEAT GROUP FILE
bench_loop() {
  local rep=$1 group=$2 file=$3 dev dio
  if ! dev=$(losetup --direct-io=on --find --show "$file"); then
    e2e_check_failed "r$rep $group: losetup --direct-io=on $file failed"
    return
  fi
  dio=$(cat "/sys/block/$(basename "$dev")/loop/dio" 2>/dev/null)
  [ "$dio" = 1 ] || e2e_check_failed "r$rep $group: $dev has dio=$dio, want 1"
  prepare_dev "$dev" "$rep" "$group" loop "losetup --direct-io=on (dio=$dio)"
  run_workloads "$rep" "$group" loop loop - "$dev" ""
  losetup -d "$dev" || e2e_check_failed "r$rep $group: losetup -d $dev"
}

# Backing files, written in full so that no run reads holes or allocates.
TMPFS_FILE=$E2E_SCRATCH/bench-backing.img
e2e_step "backing file on tmpfs ($SIZE_MIB MiB)"
dd if=/dev/zero of="$TMPFS_FILE" bs=1M count="$SIZE_MIB" status=none || e2e_fail "write $TMPFS_FILE"
EXT4_FILE=
if [ -n "${E2E_DATA_DIR:-}" ]; then
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

t_start=$(e2e_t)
for rep in $(seq "$REPEATS"); do
  e2e_step "repeat $rep: tmpfs"
  bench_loop "$rep" tmpfs "$TMPFS_FILE"
  for m in $COPY_MODES; do
    bench_ublk "$rep" tmpfs "ublk-$m" "$m" --target=file --backing="$TMPFS_FILE"
  done
  if [ -n "$EXT4_FILE" ]; then
    e2e_step "repeat $rep: ext4"
    bench_loop "$rep" ext4 "$EXT4_FILE"
    for m in $COPY_MODES; do
      bench_ublk "$rep" ext4 "ublk-$m" "$m" --target=file --backing="$EXT4_FILE"
    done
  fi
  e2e_step "repeat $rep: null"
  prepare_dev /dev/nullb0 "$rep" null null_blk "null_blk module defaults"
  run_workloads "$rep" null null_blk null_blk - /dev/nullb0 ""
  for m in $COPY_MODES; do
    bench_ublk "$rep" null "ublk-$m" "$m" --target=null --size=$((SIZE_MIB * 1048576))
  done
done
echo "bench_seconds=$(awk -v a="$t_start" -v b="$(e2e_t)" 'BEGIN {print b - a}')" >> "$OUT/guest.txt"
e2e_finish
