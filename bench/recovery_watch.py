#!/usr/bin/python3
"""Recovery watcher of bench/plugin.sh (runs in the guest).

Opens every device first (O_DIRECT), writes DIR/armed, then waits for DIR/go
(the epoch of the kill -9). At once it issues one 4 KiB O_DIRECT read per
device, each in its own thread: a read of a quiesced device blocks until a
server serves it again, so its completion time is when that device serves
again. Meanwhile it polls /readyz of the restarted plugin (its pid appears in
DIR/pid), the plugin's VmRSS/VmHWM and ublk_csi_buffer_pool_bytes (/readyz at 10 Hz,
the others at 2 Hz). Ends when
every read completed and /readyz answered 200 (or at --timeout); writes a
JSON summary with times relative to the kill (kill_to_*) and to the new
process's exec (start_to_*: DIR/exec holds the epoch its subshell took right
before exec; /proc/PID/stat's starttime, 10 ms ticks, cross-checks it), and
the times of the new process's own log lines (--log, glog, main thread =
pid): first line (main reached), "recovery: N ... volume(s)" (records
loaded, backend built), "recovery done:".
"""
import argparse
import json
import mmap
import os
import re
import statistics
import sys
import threading
import time
import urllib.request


def metric_sum(text, name):
    s = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                s += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return s


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fork_epoch(pid):
    """The epoch at which PID was forked, from /proc/PID/stat starttime
    (clock ticks since boot) and the current boot-to-epoch offset."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (OSError, ValueError, IndexError):
        return None
    offset = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return ticks / os.sysconf("SC_CLK_TCK") + offset


GLOG = re.compile(r"^([IWEF])(\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+(\d+) \S+\] (.*)$")


def log_marks(path, pid, after):
    """Epochs of the first glog line of thread PID (the main thread) at or
    after AFTER, of its "recovery: N staged" line and of "recovery done:"
    (any thread of that process: recovery threads log it; their lines come
    after the first main-thread line)."""
    marks = {}
    year = time.localtime(after).tm_year
    seen_main = False
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return marks
    for line in lines:
        m = GLOG.match(line)
        if not m:
            continue
        _, yy, mo, dd, hh, mi, ss, us, tid, msg = m.groups()
        t = time.mktime((int(yy) if yy else year, int(mo), int(dd), int(hh), int(mi), int(ss), 0, 0, -1)) + int(us) / 1e6
        if t < after - 0.001:
            continue
        if not seen_main:
            if int(tid) != pid:
                continue
            seen_main = True
            marks["first_log"] = (t, msg)
        if msg.startswith("recovery: ") and "volume(s)" in msg and "recovery_begin" not in marks:
            marks["recovery_begin"] = (t, msg)
        if msg.startswith("recovery done:") and "recovery_done" not in marks:
            marks["recovery_done"] = (t, msg)
        if msg.startswith("ublk-csi ") and " serving node " in msg and "serving" not in marks:
            marks["serving"] = (t, msg)
        if msg.startswith("start-up: ") and "startup" not in marks:
            marks["startup"] = (t, msg)
    return marks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devs", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", help="the plugin's log (glog lines)")
    ap.add_argument("--wchan", help="write where the new process's threads wait (50 Hz samples "
                    "of each thread's state and wchan until all served) to this file")
    ap.add_argument("--timeout", type=float, default=180)
    a = ap.parse_args()
    devs = [d.strip() for d in open(a.devs) if d.strip()]
    fds = [os.open(d, os.O_RDONLY | os.O_DIRECT) for d in devs]
    done = [None] * len(devs)
    errors = [None] * len(devs)

    start = threading.Event()

    def reader(i):
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        start.wait()
        try:
            os.preadv(fds[i], [buf], 0)
        except OSError as e:
            errors[i] = str(e)
        done[i] = time.time()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(len(devs))]
    for t in threads:
        t.start()
    open(os.path.join(a.dir, "armed"), "w").close()
    go = os.path.join(a.dir, "go")
    while not os.path.exists(go):
        time.sleep(0.01)
    t_kill = float(open(go).read())
    start.set()
    t_issued = time.time()
    pid = None
    t_fork = None
    t_ready = None
    hwm = rss_max = 0
    pool_max = 0.0
    deadline = t_kill + a.timeout
    polls = 0
    wchan_counts = {}
    wchan_stop = threading.Event()
    wchan_thread = None

    def wchan_sampler():
        while not wchan_stop.is_set():
            p = pid
            if p is not None:
                try:
                    tids = os.listdir(f"/proc/{p}/task")
                except OSError:
                    tids = []
                for tid in tids:
                    try:
                        with open(f"/proc/{p}/task/{tid}/stat") as f:
                            st = f.read()
                        with open(f"/proc/{p}/task/{tid}/wchan") as f:
                            wc = f.read().strip() or "-"
                    except OSError:
                        continue
                    comm = st[st.index("(") + 1:st.rindex(")")]
                    state = st[st.rindex(")") + 2]
                    k = (int(tid), comm, state, wc if state != "R" else "-")
                    wchan_counts[k] = wchan_counts.get(k, 0) + 1
            wchan_stop.wait(0.02)

    while time.time() < deadline:
        if pid is None and os.path.exists(os.path.join(a.dir, "pid")):
            txt = open(os.path.join(a.dir, "pid")).read().strip()
            pid = int(txt) if txt else None
            if pid is not None:
                t_fork = fork_epoch(pid)
                if a.wchan:
                    wchan_thread = threading.Thread(target=wchan_sampler, daemon=True)
                    wchan_thread.start()
        if pid is not None and polls % 5 == 0:
            # RSS and /metrics at 2 Hz: a /metrics scrape walks every volume
            # (and this script parses it), a real cost under TCG that a
            # Prometheus scraping every 15-30 s does not add to a recovery.
            h, r = status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS")
            hwm = max(hwm, h or 0)
            rss_max = max(rss_max, r or 0)
            try:
                text = urllib.request.urlopen(f"http://{a.metrics}/metrics", timeout=1).read().decode()
                pool_max = max(pool_max, metric_sum(text, "ublk_csi_buffer_pool_bytes"))
            except OSError:
                pass
        if pid is not None:
            polls += 1
            if t_ready is None:
                try:
                    if urllib.request.urlopen(f"http://{a.metrics}/readyz", timeout=1).status == 200:
                        t_ready = time.time()
                except OSError:
                    pass
        if t_ready is not None and all(d is not None for d in done):
            break
        time.sleep(0.1)
    served = [d - t_kill for d in done if d is not None]
    # START_USER_RECOVERY refused with EBUSY (the dead server's char devices
    # not released yet) and retried, over the whole recovery.
    busy_retries = None
    try:
        text = urllib.request.urlopen(f"http://{a.metrics}/metrics", timeout=5).read().decode()
        busy_retries = metric_sum(text, 'ublk_csi_recovery_resume_total{event="busy_retry"}')
    except OSError:
        pass
    t_exec = None
    for _ in range(50):  # written right after the restart; normally there long since
        try:
            txt = open(os.path.join(a.dir, "exec")).read().strip()
            if txt:
                t_exec = float(txt)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)

    def since(t0, t):
        return round(t - t0, 3) if t0 is not None and t is not None else None

    marks = log_marks(a.log, pid, t_exec if t_exec else t_kill) if a.log and pid else {}
    start_served = sorted(d - t_exec for d in done if d is not None) if t_exec else []
    if wchan_thread is not None:
        wchan_stop.set()
        wchan_thread.join()
        with open(a.wchan, "w") as f:
            f.write("samples\ttid\tcomm\tstate\twchan\n")
            for (tid, comm, st, wc), n in sorted(wchan_counts.items(), key=lambda x: -x[1]):
                f.write(f"{n}\t{tid}\t{comm}\t{st}\t{wc}\n")
    res = {
        "devices": len(devs),
        "served": len(served),
        "read_errors": [f"{devs[i]}: {e}" for i, e in enumerate(errors) if e],
        "reads_issued_s": round(t_issued - t_kill, 3),
        "kill_to_ready_s": round(t_ready - t_kill, 3) if t_ready else None,
        "kill_to_all_served_s": round(max(served), 3) if len(served) == len(devs) else None,
        "kill_to_first_served_s": round(min(served), 3) if served else None,
        "kill_to_median_served_s": round(statistics.median(served), 3) if served else None,
        "new_pid_vmhwm_kb": status_kb(pid, "VmHWM") if pid else None,
        "new_pid_vmrss_kb": status_kb(pid, "VmRSS") if pid else None,
        "max_vmrss_sampled_kb": rss_max,
        "max_pool_bytes_sampled": pool_max,
        "busy_retries": busy_retries,
        "kill_to_exec_s": since(t_kill, t_exec),
        "kill_to_fork_stat_s": since(t_kill, t_fork),
        "start_to_first_served_s": round(start_served[0], 3) if start_served else None,
        "start_to_median_served_s": round(statistics.median(start_served), 3) if start_served else None,
        "start_to_all_served_s": round(start_served[-1], 3)
        if len(start_served) == len(devs) and start_served else None,
        "start_to_ready_s": since(t_exec, t_ready),
        "start_served_sorted_s": [round(x, 3) for x in start_served],
    }
    for k, (t, msg) in marks.items():
        res[f"start_to_{k}_s"] = since(t_exec, t)
        res[f"log_{k}"] = msg
    json.dump(res, open(a.out, "w"), indent=1)
    print("recovery:", json.dumps(res))
    ok = res["kill_to_ready_s"] is not None and res["kill_to_all_served_s"] is not None \
        and not res["read_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
