# shellcheck shell=bash
# bench/profile.sh: the profile part of `make bench`, sourced by guest.sh
# while the data-path devices are still up (same boot, after the repeats).
#
# 1. CPU profiles: `perf record -a -g -e cpu-clock` (software event: TCG has
#    no PMU) during fio 4k randread QD32 on null_blk, the ublk null export,
#    tmpfs loop and the tmpfs ublk export (first copy mode); `perf report`
#    splits the samples by process and user/kernel and lists the top symbols.
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

PF_S=${PF_S:-8}

# pf_dev GROUP LABEL: "dev pid" of a device set up by guest.sh, or nothing.
pf_dev() {
  local d group label kind mode dev pid
  for d in "${DEVICES[@]}"; do
    read -r group label kind mode dev pid <<< "$d"
    [ "$group" = "$1" ] && [ "$label" = "$2" ] && { echo "$dev $pid"; return; }
  done
}

# pf_fio DEV RW BS QD SECONDS [OUT_JSON]
pf_fio() {
  fio --name=pf --filename="$1" --rw="$2" --bs="$3" --iodepth="$4" --ioengine=libaio \
    --direct=1 --time_based --runtime="$5" --size="${SIZE_MIB}M" --norandommap \
    --randrepeat=0 --output-format=json --output="${6:-/dev/null}" > /dev/null 2>&1
}

# pf_profile NAME DEV PID: fio 4k randread QD32 for PF_S+4 s; perf samples
# the whole guest for PF_S s in the middle of it.
pf_profile() {
  local name=$1 dev=$2 pid=$3 data=$E2E_SCRATCH/perf-$1.data fpid
  pf_fio "$dev" randread 4k 32 $((PF_S + 5)) "$PF_OUT/fio-$name.json" &
  fpid=$!
  sleep 3
  perf record -a -g -e cpu-clock -F 1000 -o "$data" -- sleep "$PF_S" > "$PF_OUT/$name.record.log" 2>&1 \
    || e2e_check_failed "perf record $name: $(tail -2 "$PF_OUT/$name.record.log")"
  wait "$fpid"
  perf report -i "$data" --stdio --no-children --sort comm,dso -g none --percent-limit 0.5 \
    > "$PF_OUT/$name.dso.txt" 2>/dev/null
  perf report -i "$data" --stdio --no-children --sort comm,sym -g none --percent-limit 0.7 \
    > "$PF_OUT/$name.sym.txt" 2>/dev/null
  if [ "$pid" != - ]; then
    perf report -i "$data" --stdio --no-children --pid="$pid" --sort sym -g caller,0.5,callee \
      --percent-limit 2 > "$PF_OUT/$name.srv.txt" 2>/dev/null
  fi
  rm -f "$data"
  echo "  [$(now)s] profile $name: $(grep -c . "$PF_OUT/$name.sym.txt") lines"
}

PF_SYSCALLS="io_uring_enter pread64 pwrite64 read write futex"

# pf_syscalls NAME DEV PID RW: fio 4k QD32 for 10 s; perf stat counts the
# server's syscalls over 5 s in the middle; the device's completed I/Os over
# the same 5 s.
pf_syscalls() {
  local name=$1 b fpid s0 s1 ev=() c out=$E2E_SCRATCH/pf-stat.txt
  b=$(basename "$2")
  for c in $PF_SYSCALLS; do ev+=(-e "syscalls:sys_enter_$c"); done
  pf_fio "$2" "$4" 4k 32 11 &
  fpid=$!
  sleep 3
  s0=$(pf_stat "$b")
  perf stat -x, "${ev[@]}" -e raw_syscalls:sys_enter -e context-switches -p "$3" -o "$out" -- sleep 5 \
    > /dev/null 2>&1
  s1=$(pf_stat "$b")
  wait "$fpid"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$4" "$s0" "$s1" \
    "$(awk -F, '$3 != "" && $1 ~ /^[0-9]+$/ {printf "%s%s=%s", sep, $3, $1; sep=" "}' "$out")" \
    >> "$PF_OUT/syscalls.tsv"
}

# pf_stat DEV: "reads read_merges read_sectors writes write_merges write_sectors" of /sys/block/DEV/stat
pf_stat() {
  local r rm rs rt w wm ws rest
  read -r r rm rs rt w wm ws rest < "/sys/block/$1/stat"
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
    local m x
    m=${COPY_MODES%% *}
    # shellcheck disable=SC2086 # $x is "dev pid"
    x=$(pf_dev null null_blk); [ -n "$x" ] && pf_profile null-null_blk $x
    x=$(pf_dev null "ublk-$m"); [ -n "$x" ] && pf_profile "null-ublk-$m" $x
    x=$(pf_dev tmpfs loop); [ -n "$x" ] && pf_profile tmpfs-loop $x
    x=$(pf_dev tmpfs "ublk-$m"); [ -n "$x" ] && pf_profile "tmpfs-ublk-$m" $x
  fi
  local l dev pid
  printf 'run\trw\tbefore\tafter\tcounts\n' > "$PF_OUT/syscalls.tsv"
  if command -v perf > /dev/null; then
    mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
    local g md rw
    for g in null tmpfs; do
      for md in $COPY_MODES; do
        read -r dev pid <<< "$(pf_dev "$g" "ublk-$md")"
        [ -n "$dev" ] || continue
        for rw in randread randwrite; do pf_syscalls "$g-ublk-$md" "$dev" "$pid" "$rw"; done
      done
    done
    echo "  [$(now)s] syscall counts: $(($(wc -l < "$PF_OUT/syscalls.tsv") - 1)) runs"
  fi
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
}
