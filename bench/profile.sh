# shellcheck shell=bash
# bench/profile.sh: the profile part of `make bench`, sourced by guest.sh
# while the data-path devices are still up (same boot, after the repeats).
#
# 1. CPU profiles: `perf record -a -g -e cpu-clock` (software event: TCG has
#    no PMU) for PF_S s while fio 4k randread QD32 runs on null_blk, each
#    ublk null export, tmpfs loop and the tmpfs ublk export (first copy
#    mode; and the selftest server's, if any); `perf report` splits the samples by process and user/kernel and
#    lists the top symbols.
# 2. Syscalls per I/O of each ublk server (file on tmpfs and null, every copy
#    mode, 4k randread and randwrite QD32): `perf stat` of the syscall
#    tracepoints on the server's pid against the I/Os the device completed
#    in the same interval (/sys/block/X/stat).
# 3. I/O shapes for the ext4 128k rows: /sys/block/X/stat of the device and
#    of the virtio disk under it before and after fio 128k seq read/write on
#    ext4 loop and ext4 ublk (requests, merges, sectors per request), and
#    every device's queue limits (max_sectors_kb, max_segments, ...).
#
# usage: profile_bench OUT_DIR (uses DEVICES from guest.sh)
# Writes OUT_DIR/profile/: NAME.dso.txt, NAME.sym.txt, NAME.srv.txt,
# syscalls.tsv, iostat.tsv, limits.tsv.

PF_S=${PF_S:-6}

# pf_dev GROUP LABEL: "dev pid" of a device set up by guest.sh, or nothing.
pf_dev() {
  local d group label dev pid
  for d in "${DEVICES[@]}"; do
    read -r group label _ _ dev pid <<< "$d"
    [ "$group" = "$1" ] && [ "$label" = "$2" ] && { echo "$dev $pid"; return; }
  done
}

# pf_fio DEV RW BS QD SECONDS [OUT_JSON]
pf_fio() {
  fio --name=pf --filename="$1" --rw="$2" --bs="$3" --iodepth="$4" --ioengine=libaio \
    --direct=1 --time_based --runtime="$5" --size="${SIZE_MIB}M" --norandommap \
    --randrepeat=0 --output-format=json --output="${6:-/dev/null}" > /dev/null 2>&1
}

# pf_wait_io DEV: returns once DEV completed I/O within the last ~0.5 s
# (fio's start-up takes seconds under TCG on a loaded host).
pf_wait_io() {
  local a b
  a=$(pf_stat "$1")
  for _ in $(seq 240); do
    sleep 0.5
    b=$(pf_stat "$1")
    [ "$a" != "$b" ] && return 0
    a=$b
  done
  return 1
}

# pf_bg_fio DEV RW BS QD [OUT_JSON]: fio for up to 120 s in the background
# (PF_FIO = its pid); the caller ends it with SIGINT, which writes its report.
pf_bg_fio() {
  pf_fio "$1" "$2" "$3" "$4" 120 "${5:-/dev/null}" &
  PF_FIO=$!
  pf_wait_io "$(basename "$1")" || e2e_check_failed "no I/O on $1 after 120 s"
}

pf_end_fio() { kill -INT "$PF_FIO" 2>/dev/null; wait "$PF_FIO" 2>/dev/null; }

# pf_profile NAME DEV PID: fio 4k randread QD32 runs; once its I/O flows,
# perf samples the whole guest for PF_S s (perf's workload, `sleep`, starts
# only once the events are enabled, so the window is all recorded).
pf_profile() {
  local name=$1 dev=$2 pid=$3 data=$E2E_SCRATCH/perf-$1.data
  pf_bg_fio "$dev" randread 4k 32 "$PF_OUT/fio-$name.json"
  perf record -a -g -e cpu-clock -F 1000 -o "$data" -- sleep "$PF_S" > "$PF_OUT/$name.record.log" 2>&1 \
    || e2e_check_failed "perf record $name: $(tail -2 "$PF_OUT/$name.record.log")"
  pf_end_fio
  perf report -i "$data" --stdio --no-children --sort comm,dso -g none --percent-limit 0.5 \
    > "$PF_OUT/$name.dso.txt" 2>/dev/null
  perf report -i "$data" --stdio --no-children --sort comm,sym -g none --percent-limit 0.7 \
    > "$PF_OUT/$name.sym.txt" 2>/dev/null
  rm -f "$data"
  echo "  [$(now)s] profile $name: $(grep -c . "$PF_OUT/$name.sym.txt") lines"
}

PF_SYSCALL_NAMES="io_uring_enter pread64 pwrite64 read write futex"

# pf_syscalls NAME DEV PID RW: fio 4k QD32 runs; perf stat counts the
# server's syscalls while its workload snapshots the device's stat, sleeps
# 5 s and snapshots it again (counting is on for the whole workload).
pf_syscalls() {
  local name=$1 b ev=() c out=$E2E_SCRATCH/pf-stat.txt
  b=$(basename "$2")
  for c in $PF_SYSCALL_NAMES; do ev+=(-e "syscalls:sys_enter_$c"); done
  pf_bg_fio "$2" "$4" 4k 32
  perf stat -x, "${ev[@]}" -e raw_syscalls:sys_enter -e context-switches -p "$3" -o "$out" -- \
    sh -c "cat /sys/block/$b/stat > $E2E_SCRATCH/s0; sleep 5; cat /sys/block/$b/stat > $E2E_SCRATCH/s1" \
    > /dev/null 2>&1
  pf_end_fio
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$4" "$(pf_stat_file "$E2E_SCRATCH/s0")" \
    "$(pf_stat_file "$E2E_SCRATCH/s1")" \
    "$(awk -F, '$3 != "" && $1 ~ /^[0-9]+$/ {printf "%s%s=%s", sep, $3, $1; sep=" "}' "$out")" \
    >> "$PF_OUT/syscalls.tsv"
}

# pf_stat DEV: "reads read_merges read_sectors writes write_merges write_sectors" of /sys/block/DEV/stat
pf_stat() { pf_stat_file "/sys/block/$1/stat"; }
pf_stat_file() {
  local r rm rs w wm ws rest
  read -r r rm rs _ w wm ws rest < "$1"
  echo "$r $rm $rs $w $wm $ws"
}

# pf_iostat NAME DEV RW: fio 128k QD8 for PF_S s; stat deltas of DEV and vda.
pf_iostat() {
  local name=$1 b a0 a1 v0 v1
  b=$(basename "$2")
  a0=$(pf_stat "$b"); v0=$(pf_stat vda)
  pf_fio "$2" "$3" 128k 8 "$PF_S" "$PF_OUT/fio-io-$name.json"
  a1=$(pf_stat "$b"); v1=$(pf_stat vda)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$b" "$a0" "$a1" "$v0" "$v1" >> "$PF_OUT/iostat.tsv"
}

profile_bench() {
  PF_OUT=$1/profile
  mkdir -p "$PF_OUT"
  e2e_step "profiles (perf cpu-clock) and I/O shapes"
  if ! command -v perf > /dev/null; then
    echo "no perf in the host root (apt-get install linux-perf): no profiles" | tee "$PF_OUT/skipped"
  else
    echo -1 > /proc/sys/kernel/perf_event_paranoid
    echo 0 > /proc/sys/kernel/kptr_restrict
    perf --version > "$PF_OUT/perf-version.txt" 2>&1
    local m x md
    m=${COPY_MODES%% *}
    # shellcheck disable=SC2086 # $x is "dev pid"
    x=$(pf_dev null null_blk); [ -n "$x" ] && pf_profile null-null_blk $x
    for md in $COPY_MODES $SELFTEST_MODES; do
      x=$(pf_dev null "ublk-$md"); [ -n "$x" ] && pf_profile "null-ublk-$md" $x
    done
    x=$(pf_dev tmpfs loop); [ -n "$x" ] && pf_profile tmpfs-loop $x
    # Ours in the first copy mode, then the kernel's selftest server on the
    # same file (its loop target).
    for md in $m $SELFTEST_MODES; do
      x=$(pf_dev tmpfs "ublk-$md"); [ -n "$x" ] && pf_profile "tmpfs-ublk-$md" $x
    done
  fi
  local l dev pid
  printf 'run\tdev\tbefore\tafter\tvda_before\tvda_after\n' > "$PF_OUT/iostat.tsv"
  for l in loop "ublk-${COPY_MODES%% *}"; do
    read -r dev _ <<< "$(pf_dev ext4 "$l")"
    [ -n "$dev" ] || continue
    pf_iostat "ext4-$l-seqread" "$dev" read
    pf_iostat "ext4-$l-seqwrite" "$dev" write
  done
  printf 'dev\tmax_sectors_kb\tmax_hw_sectors_kb\tmax_segments\tmax_segment_size\tnr_requests\tread_ahead_kb\tminimum_io_size\toptimal_io_size\n' > "$PF_OUT/limits.tsv"
  for dev in /sys/block/ublkb* /sys/block/loop[0-9]* /sys/block/nullb0 /sys/block/vda; do
    [ -d "$dev/queue" ] || continue
    [ "$(cat "$dev/size")" != 0 ] || continue
    printf '%s' "$(basename "$dev")"
    for x in max_sectors_kb max_hw_sectors_kb max_segments max_segment_size nr_requests read_ahead_kb minimum_io_size optimal_io_size; do
      printf '\t%s' "$(cat "$dev/queue/$x" 2>/dev/null)"
    done
    echo
  done >> "$PF_OUT/limits.tsv"
  # Last: enabling the syscall tracepoints patches kernel text, and on the
  # 6.12 guest under multi-threaded TCG that once ended in an int3 Oops in
  # syscall_trace_enter (fio mid-syscall; 2026-11-27): what ran before it is
  # already written. PF_SYSCALLS=0 skips it.
  [ "${PF_SYSCALLS:-1}" = 1 ] || return 0
  printf 'run\trw\tbefore\tafter\tcounts\n' > "$PF_OUT/syscalls.tsv"
  if command -v perf > /dev/null; then
    mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
    local g md rw
    for g in null tmpfs; do
      for md in $COPY_MODES $SELFTEST_MODES; do
        read -r dev pid <<< "$(pf_dev "$g" "ublk-$md")"
        [ -n "$dev" ] || continue
        for rw in randread randwrite; do pf_syscalls "$g-ublk-$md" "$dev" "$pid" "$rw"; done
      done
    done
    echo "  [$(now)s] syscall counts: $(($(wc -l < "$PF_OUT/syscalls.tsv") - 1)) runs"
  fi
}
