# shellcheck shell=bash
# bench/lib.sh: the counter sampler of bench/guest.sh. Bash builtins only (no
# fork, no exec per sample): under TCG a fork+exec costs tens of ms and would
# perturb the device being measured.

# cpu_sample: sets S_BUSY S_TOTAL (ticks of all CPUs in /proc/stat; busy
# excludes idle and iowait) and S_CTXT (context switches since boot).
cpu_sample() {
  local k u n s i w q sq st rest
  while read -r k u n s i w q sq st rest; do
    case $k in
      cpu) S_TOTAL=$((u + n + s + i + w + q + sq + st)); S_BUSY=$((S_TOTAL - i - w)) ;;
      ctxt) S_CTXT=$u; break ;;
    esac
  done < /proc/stat
}

# srv_sample PID: sets S_SRV_TICKS (CPU time of the whole process in clock
# ticks: utime + stime of /proc/PID/stat, which keeps the time of threads that
# have exited, such as io_uring's io-wq workers), S_SRV_SLICES (times a live
# thread was put on a CPU, summed over /proc/PID/task/*/schedstat: the slices
# of a thread that exits drop out of this sum), S_SRV_THREADS (the threads
# summed) and S_RSS (KiB, /proc/PID/statm); all "-" when PID is "-" or gone.
# One short line per file: a bash read loop over /proc/PID/status of every
# thread costs seconds per sample under TCG.
srv_sample() {
  local pid=${1:--} f run slices res rest line
  local -a st
  S_SRV_TICKS=- S_SRV_SLICES=- S_SRV_THREADS=- S_RSS=-
  [ -d "/proc/$pid" ] || return 0
  read -r line < "/proc/$pid/stat" || return 0
  # Fields after "(comm) ": st[0] is field 3 (state), so utime (14) is st[11].
  read -r -a st <<< "${line##*) }"
  S_SRV_TICKS=$((st[11] + st[12]))
  S_SRV_SLICES=0 S_SRV_THREADS=0
  for f in /proc/"$pid"/task/*/schedstat; do
    read -r run _ slices rest < "$f" || continue
    S_SRV_SLICES=$((S_SRV_SLICES + slices)); S_SRV_THREADS=$((S_SRV_THREADS + 1))
  done
  read -r _ res rest < "/proc/$pid/statm" && S_RSS=$((res * 4))
}

# hwm PID: prints VmHWM (KiB) of PID, or "-".
hwm() {
  local k v rest
  [ -r "/proc/${1:--}/status" ] || { echo -; return; }
  while read -r k v rest; do
    case $k in VmHWM:) echo "$v"; return ;; esac
  done < "/proc/$1/status"
  echo -
}

# sampler OUT_FILE FIFO PID...: every 0.5 s appends "epoch_s busy total ctxt"
# followed by "srv_ticks srv_slices rss_kb srv_threads" for each PID (in argument
# order) to OUT_FILE until killed. FIFO (made with mkfifo beforehand) only
# serves as a builtin sleep (read -t).
sampler() {
  local out=$1 fifo=$2 pid line
  shift 2
  exec 8<>"$fifo"
  while :; do
    cpu_sample
    line="$EPOCHREALTIME $S_BUSY $S_TOTAL $S_CTXT"
    for pid in "$@"; do
      srv_sample "$pid"
      line="$line $S_SRV_TICKS $S_SRV_SLICES $S_RSS $S_SRV_THREADS"
    done
    echo "$line"
    read -r -t 0.5 -u 8 _
  done >> "$out"
}

# now: guest uptime in seconds.
now() { local u rest; read -r u rest < /proc/uptime; echo "$u"; }
