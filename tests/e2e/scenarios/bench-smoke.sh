# bench-smoke: one short fio run per target (null, file) on a ublk export, so
# the benchmark path cannot rot. Checks fio succeeds with non-zero IOPS and
# prints the numbers (TCG guest: only ratios within one run mean anything).
# e2e-once: keeps the bench path from rotting; make bench KERNEL=7 measures 7.x
# e2e-timeout: 240
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

fio_run() { # NAME DEV RW
  local out iops
  if ! out=$(timeout 60 fio --name="$1" --filename="$2" --rw="$3" --bs=4k --iodepth=32 \
      --ioengine=io_uring --direct=1 --runtime=3 --time_based --size=64M \
      --output-format=terse 2>&1); then
    e2e_check_failed "$1: fio failed: $(echo "$out" | tail -3)"
    return
  fi
  # terse v3: field 8 = read IOPS, field 49 = write IOPS
  case $3 in *write*) iops=$(echo "$out" | tail -1 | cut -d';' -f49) ;;
             *) iops=$(echo "$out" | tail -1 | cut -d';' -f8) ;; esac
  if [ "${iops:-0}" -gt 0 ] 2>/dev/null; then e2e_ok "$1: $3 4k QD32: $iops IOPS"
  else e2e_check_failed "$1: fio reported no IOPS"; fi
}

fio_run null_blk /dev/nullb0 randread

for target in null file; do
  e2e_step "$target target"
  args=(--target="$target" --size=$((256 * 1024 * 1024)))
  [ $target = file ] && args+=(--backing="$E2E_SCRATCH/bench.img" --create)
  if ublk_serve "bench-$target" "${args[@]}"; then
    fio_run "ublk-$target" "$SRV_DEV" randread
    fio_run "ublk-$target" "$SRV_DEV" randwrite
    ublk_stop TERM || e2e_check_failed "$target: stop"
  else
    e2e_check_failed "$target: export did not come up"
  fi
done
e2e_finish
