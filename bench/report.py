#!/usr/bin/python3
"""Turns the raw output of bench/guest.sh into bench/results/RESULTS.md,
runs.tsv (one line per fio run, the numbers behind every table) and
iops-ratios.dat (input of iops-ratios.gp).

usage: report.py --raw DIR --host HOST_INFO --out DIR
"""
import argparse
import csv
import json
import os
import statistics
import sys

CLK_TCK = 100  # USER_HZ of the Debian guest kernel: /proc/stat and /proc/PID/stat ticks
SRV_FIELDS = 4  # per ublk server in a sample line: cpu_ticks slices rss_kb threads (bench/lib.sh)
WORKLOADS = ["randread-4k-qd32", "randwrite-4k-qd32", "randread-4k-qd1",
             "seqread-128k-qd8", "seqwrite-128k-qd8"]
GROUPS = [("tmpfs", "loop", "file on tmpfs", 1.0),
          ("ext4", "loop", "file on ext4 (virtio disk, cache=none)", 1.0),
          ("null", "null_blk", "null", 0.9),
          ("rbd", "krbd", "RBD image (single-node Ceph in the guest)", 1.0)]
# user_copy_ring, _pin_*, _null_zeros, _pollN: A/B variants, by name only (guest.sh)
MODE_ORDER = ["zero_copy", "user_copy", "user_copy_ring", "user_copy_pin_same",
              "user_copy_pin_split", "user_copy_null_zeros", "user_copy_poll0", "user_copy_poll8",
              "user_copy_poll32", "user_copy_poll128", "user_copy_poll512", "zero_copy_poll0",
              "get_data", "get_data_poll0", "zero_copy_pinned", "user_copy_pinned", "get_data_pinned",
              "zero_copy_poll0_pinned", "user_copy_poll0_pinned", "zero_copy_kpoll",
              "zero_copy_kpoll_pinned",
              # The kernel's selftest server (kublk), by name only (guest.sh start_selftest).
              "selftest_copy", "selftest_user_copy", "selftest_zero_copy", "selftest_auto_zc",
              "selftest_batch", "selftest_batch_auto_zc"]
UBLK = ["ublk-" + m for m in MODE_ORDER]  # narrowed in main() to the modes that ran


def kv(path):
    d = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    d[k] = v
    return d


def tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


_fio_cache = {}


def fio_metrics(path, jobname, workload):
    if path not in _fio_cache:
        with open(path) as f:
            text = f.read()
        # fio may print notes before the JSON document.
        _fio_cache[path] = json.loads(text[text.index("{"):])
    doc = _fio_cache[path]
    job = next(j for j in doc["jobs"] if j["jobname"] == jobname)
    side = job["write"] if "write" in workload else job["read"]
    pct = side.get("clat_ns", {}).get("percentile", {})
    return {
        "iops": side["iops"],
        "mibs": side["bw"] / 1024.0,
        "ios": side["total_ios"],
        "p50_us": pct.get("50.000000", 0) / 1000.0,
        "p99_us": pct.get("99.000000", 0) / 1000.0,
        "mean_us": side.get("clat_ns", {}).get("mean", 0) / 1000.0,
        "fio_usr": job["usr_cpu"],
        "fio_sys": job["sys_cpu"],
        "fio_ctx": job["ctx"],
    }


def io_phase(path):
    """(first, last) epoch seconds of a fio IOPS log (log_unix_epoch=1)."""
    ts = []
    with open(path) as f:
        for line in f:
            parts = line.split(",")
            if parts and parts[0].strip().isdigit():
                ts.append(int(parts[0]) / 1000.0)
    if not ts:
        raise ValueError("empty IOPS log")
    # Each entry ends a 1 s averaging interval: the I/O phase began ~1 s before the first.
    return min(ts) - 1.0, max(ts)


def samples(path):
    out = []
    with open(path) as f:
        for line in f:
            p = line.split()
            # epoch busy total ctxt, then cpu_ticks slices rss_kb threads per ublk server
            if len(p) >= 4 and (len(p) - 4) % SRV_FIELDS == 0:
                out.append([float(p[0])] + [None if x == "-" else float(x) for x in p[1:]])
    return out


def window(smp, start, end):
    """First and last sample inside [start + 1.5 s, end - 0.5 s]: a window inside the
    job's I/O phase that leaves out its start-up and wind-down."""
    inside = [x for x in smp if start + 1.5 <= x[0] <= end - 0.5]
    if len(inside) < 2:
        return None
    return inside


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_runs(raw):
    runs = []
    smp_cache = {}
    for r in tsv(os.path.join(raw, "runs.tsv")):
        path = os.path.join(raw, r["fio_json"])
        try:
            m = fio_metrics(path, r["jobname"], r["workload"])
        except (OSError, ValueError, KeyError, StopIteration) as e:
            print(f"report: {path} {r['workload']}: {e!r}", file=sys.stderr)
            continue
        m.update({
            "repeat": int(r["repeat"]), "group": r["group"], "device": r["device"],
            "kind": r["kind"], "copy_mode": r["copy_mode"], "workload": r["workload"],
            "win_s": None, "guest_busy_pct": None, "guest_cpu_us_per_io": None,
            "guest_ctx_per_io": None, "srv_cpu_us_per_io": None, "srv_ctx_per_io": None,
            "srv_rss_kb": None, "srv_hwm_kb": None,
        })
        try:
            start, end = io_phase(os.path.join(raw, r["iops_log"]))
            spath, col = r["samples"].rsplit(":", 1)
            sp = os.path.join(raw, spath)
            if sp not in smp_cache:
                smp_cache[sp] = samples(sp)
            w = window(smp_cache[sp], start, end)
        except (OSError, ValueError) as e:
            print(f"report: {r['iops_log']}: {e!r}", file=sys.stderr)
            w = None
        if w:
            a, b = w[0], w[-1]
            secs = b[0] - a[0]
            # I/Os completed in the window, from fio's mean IOPS over the job.
            ios = max(m["iops"] * secs, 1)
            busy, total, ctxt = b[1] - a[1], b[2] - a[2], b[3] - a[3]
            m.update({
                "win_s": secs,
                "guest_busy_pct": 100.0 * busy / total if total else None,
                "guest_cpu_us_per_io": busy * 1e6 / CLK_TCK / ios,
                "guest_ctx_per_io": ctxt / ios,
            })
            c = 4 + SRV_FIELDS * int(col) if col != "-" else None
            if c is not None and len(a) > c + 3 and a[c] is not None and b[c] is not None:
                # Slices are summed over live threads only: a thread that
                # exits (or starts) inside the window makes the sum meaningless.
                same_threads = a[c + 3] == b[c + 3] and b[c + 1] >= a[c + 1]
                m.update({
                    "srv_cpu_us_per_io": (b[c] - a[c]) * 1e6 / CLK_TCK / ios,
                    "srv_ctx_per_io": (b[c + 1] - a[c + 1]) / ios if same_threads else None,
                    "srv_rss_kb": b[c + 2],
                    "srv_hwm_kb": max(x[c + 2] for x in w if x[c + 2] is not None),
                })
        else:
            print(f"report: no counter window for r{r['repeat']} {r['group']} {r['device']} "
                  f"{r['workload']}", file=sys.stderr)
        runs.append(m)
    return runs


def pick(runs, group, device, workload):
    return sorted((r for r in runs if r["group"] == group and r["device"] == device
                   and r["workload"] == workload), key=lambda r: r["repeat"])


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def pct(vals, p):
    """Nearest-rank percentile (as ublk-csi-ctl bench prints it)."""
    v = sorted(vals)
    if not v:
        return None
    k = max(1, min(len(v), int(-(-p * len(v) // 100))))
    return v[k - 1]


def fio_summary(path):
    try:
        with open(path) as f:
            text = f.read()
        doc = json.loads(text[text.index("{"):])
    except (OSError, ValueError):
        return None
    j = doc["jobs"][0]
    return {"iops": j["read"]["iops"] + j["write"]["iops"],
            "mibs": (j["read"]["bw"] + j["write"]["bw"]) / 1024.0,
            "ios": j["read"]["total_ios"] + j["write"]["total_ios"],
            "error": j.get("error", 0)}


def recovery_section(d, w, mib, guest):
    recs = []
    names = sorted((f[len("recovery-"):-len(".json")] for f in os.listdir(d)
                    if f.startswith("recovery-") and f.endswith(".json")),
                   key=lambda n: (int(n.split("-")[0]) if n.split("-")[0].isdigit() else 0, n))
    for n in names:
        try:
            with open(os.path.join(d, f"recovery-{n}.json")) as f:
                recs.append((n, json.load(f), fio_summary(os.path.join(d, f"fio-recovery-{n}.json"))))
        except (OSError, ValueError):
            pass
    w("### Recovery: kill -9 with 66 and 256 exports under fio, restart at once")
    w("")
    if not recs:
        w("No recovery result (see the guest log).")
        w("")
        return
    w("fio randrw 4k QD16 on 8 of the exports runs across the kill. Right after the kill one")
    w("4 KiB O_DIRECT read per device is issued (threads armed beforehand); a read of a")
    w("quiesced device blocks until the new process serves it, so its completion is the")
    w("moment that device serves again. **start** = the new process's exec (the epoch its")
    w("subshell takes right before `exec ublk-csi`, right after `wait` saw the old one")
    w("die); **kill** = the `kill -9`. Log marks are the new process's own glog lines.")
    w("Targets (issue 20): 66 volumes serving < 1 s after the start, 256 < 2 s.")
    if any("-" in n for n, _, _ in recs):
        w("")
        alt_bin = guest.get("plugin_alt_bin", "")
        w(f"A/B in this boot (`BENCH_RECOVERY_AB`): N-A1, N-B1, N-A2, N-B2 in that order; "
          f"B adds `{guest.get('plugin_alt_args', '?')}`"
          + (f" and runs `{alt_bin}`" if alt_bin else "") + ".")
    w("")

    def t(rec, key):
        v = rec.get(key)
        return "-" if v is None else f"{v:.3f}"

    def both(rec, key, bold=False):
        a, b = t(rec, "start_to_" + key), t(rec, "kill_to_" + key)
        return f"**{a}** / {b}" if bold else f"{a} / {b}"

    w("| seconds (from start / from kill) | " + " | ".join(f"{n} exports" for n, _, _ in recs) + " |")
    w("|---|" + "---|" * len(recs))
    row = lambda label, f: w(f"| {label} | " + " | ".join(f(r, fr) for _, r, fr in recs) + " |")
    row("exports served again / read errors",
        lambda r, fr: f"{r['served']} of {r['devices']} / {len(r['read_errors'])}")
    row("exec of the new process after the kill (stat starttime)",
        lambda r, fr: f"{t(r, 'kill_to_exec_s')} ({t(r, 'kill_to_fork_stat_s')})")
    row("first log line of the new process (main reached)",
        lambda r, fr: t(r, "start_to_first_log_s"))
    row("records loaded, backend built (`recovery: N volume(s)`)",
        lambda r, fr: t(r, "start_to_recovery_begin_s"))
    row("first device serving", lambda r, fr: both(r, "first_served_s"))
    row("median device serving", lambda r, fr: both(r, "median_served_s"))
    row("**last device serving**", lambda r, fr: both(r, "all_served_s", True))
    row("`recovery done` logged", lambda r, fr: t(r, "start_to_recovery_done_s"))
    row("START_USER_RECOVERY refused (EBUSY) and retried",
        lambda r, fr: "-" if r.get("busy_retries") is None else f"{r['busy_retries']:.0f}")
    row("/readyz ready", lambda r, fr: both(r, "ready_s", True))
    row("new process VmHWM at the end (peak RSS)",
        lambda r, fr: f"{mib(r['new_pid_vmhwm_kb'])} MiB (VmRSS {mib(r['new_pid_vmrss_kb'])})")
    row("largest pool bytes sampled (2 Hz)",
        lambda r, fr: f"{r['max_pool_bytes_sampled'] / 1048576:.0f} MiB")
    row("fio across the kill: I/Os, errors",
        lambda r, fr: f"{fr['ios']}, error {fr['error']}" if fr else "?")
    row("plugin log", lambda r, fr: f"`{r.get('log_recovery_done', '')}`")
    w("")
    for n, r, _ in recs:
        if r.get("log_startup"):
            w(f"- {n} exports, the new process's `start-up:` line: `{r['log_startup']}`")
    if any(r.get("log_startup") for _, r, _ in recs):
        w("")
    floor = []
    if os.path.exists(os.path.join(d, "floor.tsv")):
        with open(os.path.join(d, "floor.tsv")) as f:
            floor = [l.rstrip("\n").split("\t") for l in f if l.count("\t") == 2]
    if floor:
        per = {}
        for r in floor:
            per.setdefault(r[0], []).append(float(r[2]))
        w("The floor in this guest (TCG), wall ms of a whole fork+exec+exit from bash, 5 runs "
          "(median, min-max): " + "; ".join(
              f"`{k.replace('--', ' --')}` {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
              for k, v in per.items()) + ".")
        w("")


def plugin_section(raw, w, guest):
    d = os.path.join(raw, "plugin")
    mem = tsv(os.path.join(d, "memory.tsv"))
    if not mem:
        return False
    mib = lambda kb: "-" if kb in (None, "", "-") else f"{float(kb) / 1024:.1f}"
    w("## The plugin: memory, recovery, control plane")
    w("")
    w(f"One `ublk-csi` process (`{guest.get('plugin_args', '--backend=ublk')}`, the")
    w("default worker count unless the flags say otherwise (one per CPU, at least 4), the")
    w("default node-wide buffer-pool budget of 64 MiB split over the workers (128 KiB slots,")
    w("mapped lazily on a worker's first copy-mode I/O)) serves every volume: 16 MiB")
    w("block volumes on the guest's tmpfs, made by `ublk-csi-ctl bench` (CreateVolume,")
    w("NodeStageVolume, NodePublishVolume). Copy mode: the plugin's automatic choice.")
    w(f"Guest time of this part: {guest.get('plugin_seconds', '?')} s.")
    w("")
    w("### Memory against exports and against I/O in flight")
    w("")
    w("VmRSS / VmHWM from /proc/PID/status at the end of the phase; peak = largest VmRSS of")
    w("4 Hz samples during the fio run; pool = `ublk_csi_buffer_pool_bytes` (sum over")
    w("workers); slots = largest `ublk_csi_buffer_pool_slots_in_use` polled (~2 Hz) during fio. fio: libaio,")
    rt = "?"
    for f in sorted(os.listdir(d)):
        if f.startswith("fio-") and f != "fio-recovery.json" and f.endswith(".json"):
            try:
                with open(os.path.join(d, f)) as fh:
                    t = fh.read()
                rt = json.loads(t[t.index("{"):])["global options"].get("runtime", "?")
                break
            except (OSError, ValueError, KeyError):
                pass
    w(f"direct, one job per export, {rt} s.")
    w("")
    w("| phase | exports | I/O in flight | fio IOPS | VmRSS MiB | VmHWM MiB | peak VmRSS MiB "
      "| pool MiB | slots in use |")
    w("|---|--:|---|--:|--:|--:|--:|--:|--:|")
    for m in mem:
        iops = "-"
        if m["phase"].startswith("io:"):
            fs = fio_summary(os.path.join(d, f"fio-{m['phase'][3:]}-{m['exports']}.json"))
            iops = fmt(fs["iops"]) if fs else "?"
        pool = m["pool_bytes"]
        w(f"| {m['phase']} | {m['exports']} | {m['io']} | {iops} | {mib(m['vmrss_kb'])} | "
          f"{mib(m['vmhwm_kb'])} | {mib(m['peak_rss_kb'])} | "
          f"{'-' if pool in ('', '-') else f'{float(pool) / 1048576:.0f}'} | {m['slots_in_use']} |")
    w("")
    recovery_section(d, w, mib, guest)
    cp = tsv(os.path.join(d, "cp-samples.tsv"))
    if cp:
        w("### Control plane: latency through the gRPC unix socket")
        w("")
        w("`ublk-csi-ctl bench` (one process, one channel, connected before timing) creates,")
        w("then stages (block: no mkfs), then publishes each volume of a batch, timing every")
        w("call in the client. The batches grow the plugin from 0 to 256 exports (1, 15, 48,")
        w("2, 190 volumes); all calls pooled, then per batch (p50).")
        w("")
        batches = []
        for r in cp:
            if r["batch"] not in batches:
                batches.append(r["batch"])
        w("| call | calls | p50 ms | p99 ms | mean ms | max ms | " +
          " | ".join(f"p50 {b}" for b in batches) + " |")
        w("|---|--:|--:|--:|--:|--:|" + "--:|" * len(batches))
        for call in ["CreateVolume", "NodeStageVolume", "NodePublishVolume"]:
            v = [float(r["us"]) / 1000 for r in cp if r["call"] == call]
            if not v:
                continue
            per = [pct([float(r["us"]) / 1000 for r in cp if r["call"] == call and r["batch"] == b], 50)
                   for b in batches]
            w(f"| {call} | {len(v)} | {pct(v, 50):.1f} | {pct(v, 99):.1f} | "
              f"{statistics.mean(v):.1f} | {max(v):.1f} | " +
              " | ".join(fmt(x, 1) for x in per) + " |")
        w("")
    return True


def plugin_only(raw, out, host, guest):
    """RESULTS.md of a run without the data part (BENCH_PARTS=plugin or
    recovery, e.g. `make bench-recovery`): the plugin section alone."""
    L = []
    w = L.append
    w("# ublk-csi plugin benchmark (plugin part only)")
    w("")
    w(f"Generated by bench/run.sh with BENCH_PARTS=\"{guest.get('parts', '?')}\"; do not edit by hand.")
    w("Guest under qemu **TCG**: times are those of an emulated machine on a shared host.")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| date | {host.get('date', '?')} |")
    w(f"| machine | {host.get('host_nproc', '?')} CPUs, {host.get('host_cpu', '?')} |")
    w(f"| load average (1/5/15 min) | before {host.get('load_before', '?')}; after "
      f"{host.get('load_after', '?')}; 1-min samples every 15 s: {host.get('load_samples', '?')} |")
    w(f"| guest | {guest.get('guest_kernel', '?')}, {guest.get('guest_nproc', '?')} vCPUs "
      f"({guest.get('guest_cpu', '?')}), {int(guest.get('guest_mem_kb', '0')) // 1024} MiB, "
      "qemu TCG |")
    w(f"| code | git {host.get('git', '?')} |")
    w(f"| wall time | {host.get('wall_seconds', '?')} s |")
    w("")
    if not plugin_section(raw, w, guest):
        return False
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    return True


def write_profile(raw, out, host, guest):
    d = os.path.join(raw, "profile")
    if not os.path.isdir(d):
        return False
    L = []
    w = L.append
    w("# Profiles and I/O shapes (make bench, BENCH_PARTS=profile)")
    w("")
    w("Generated by bench/report.py; do not edit by hand. Findings: bench/README.md.")
    w("")
    w(f"date {host.get('date', '?')}; guest kernel {guest.get('guest_kernel', '?')} under qemu TCG; "
      f"host load before {host.get('load_before', '?')}, after {host.get('load_after', '?')}; "
      f"git {host.get('git', '?')}; copy modes {guest.get('copy_modes', '?')}.")
    w("")
    skipped = os.path.join(d, "skipped")
    if os.path.exists(skipped):
        w(open(skipped).read().strip())
        w("")
    names = sorted(f[:-len(".dso.txt")] for f in os.listdir(d) if f.endswith(".dso.txt"))
    if names:
        ver = open(os.path.join(d, "perf-version.txt")).read().strip() \
            if os.path.exists(os.path.join(d, "perf-version.txt")) else "?"
        w(f"`perf record -a -g -e cpu-clock -F 1000` ({ver}; a software clock: TCG has no PMU)")
        w("for 6 s while fio 4k randread QD32 runs on each device (recording starts once the")
        w("device completes I/O); `perf report --no-children`. Samples per process and")
        w("user/kernel side, as % of all samples and % of the busy (non-idle: not swapper)")
        w("ones, then the top symbols (% of all samples).")
        w("")
    for n in names:
        fio = fio_summary(os.path.join(d, f"fio-{n}.json"))
        split = {}
        total = 0.0
        with open(os.path.join(d, f"{n}.dso.txt")) as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[0].endswith("%"):
                    pc = float(p[0][:-1])
                    comm = p[1]
                    kern = "[kernel" in line
                    key = (comm, "kernel" if kern else "user")
                    split[key] = split.get(key, 0) + pc
                    total += pc
        syms = []
        with open(os.path.join(d, f"{n}.sym.txt")) as f:
            for line in f:
                p = line.split(None, 3)
                if len(p) >= 4 and p[0].endswith("%"):
                    syms.append((p[0], p[1], p[3].strip()))
        w(f"**{n}** (fio {fmt(fio['iops']) if fio else '?'} IOPS while profiled)")
        w("")
        idle = sum(pc for (comm, _), pc in split.items() if comm == "swapper")
        w("| process | side | % of samples | % of busy samples |")
        w("|---|---|--:|--:|")
        for (comm, side), pc in sorted(split.items(), key=lambda x: -x[1])[:10]:
            busy = "-" if comm == "swapper" or idle >= 100 else f"{100 * pc / (100 - idle):.1f}"
            w(f"| {comm} | {side} | {pc:.1f} | {busy} |")
        w("")
        w("| % | process | symbol |")
        w("|--:|---|---|")
        for pc, comm, sym in syms[:15]:
            w(f"| {pc} | {comm} | `{sym}` |")
        w("")
    sc = tsv(os.path.join(d, "syscalls.tsv"))
    if sc:
        names = []
        rows = []
        for r in sc:
            b0, b1 = [list(map(int, r[k].split())) for k in ("before", "after")]
            ios = (b1[3] - b0[3]) if "write" in r["rw"] else (b1[0] - b0[0])
            counts = {}
            for kv in r["counts"].split():
                k, v = kv.split("=", 1)
                k = k.replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all syscalls")
                counts[k] = int(v)
                if k not in names:
                    names.append(k)
            rows.append((r["run"], r["rw"], ios, counts))
        w("Syscalls of the ublk server per I/O: `perf stat` of the syscall tracepoints on its pid")
        w("over 5 s while fio 4k QD32 runs (from once its I/O flows), divided by the I/Os the device completed")
        w("in the same 5 s (/sys/block/X/stat).")
        w("")
        w("| server | rw | I/Os | " + " | ".join(f"{n}/IO" for n in names) + " |")
        w("|---|---|--:|" + "--:|" * len(names))
        for run, rw, ios, counts in rows:
            w(f"| {run} | {rw} | {ios} | " + " | ".join(
                f"{counts[n] / ios:.2f}" if ios and n in counts else "-" for n in names) + " |")
        w("")
    io = tsv(os.path.join(d, "iostat.tsv"))
    if io:
        w("I/O shapes of the ext4 128k rows: /sys/block/X/stat deltas over fio 128k QD8 (6 s)")
        w("on the device and on the virtio disk (vda) under the ext4 backing file.")
        w("")
        w("| run | device: requests | merges | KiB/request | vda: requests | merges | KiB/request |")
        w("|---|--:|--:|--:|--:|--:|--:|")
        for r in io:
            b0, b1 = [list(map(int, r[k].split())) for k in ("before", "after")]
            v0, v1 = [list(map(int, r[k].split())) for k in ("vda_before", "vda_after")]
            side = 0 if "seqread" in r["run"] else 3
            def shape(x0, x1):
                n = x1[side] - x0[side]
                mg = x1[side + 1] - x0[side + 1]
                sec = x1[side + 2] - x0[side + 2]
                return n, mg, (sec / 2 / n if n else 0)
            dn, dm, dk = shape(b0, b1)
            vn, vm, vk = shape(v0, v1)
            w(f"| {r['run']} ({r['dev']}) | {dn} | {dm} | {dk:.0f} | {vn} | {vm} | {vk:.0f} |")
        w("")
    lim = tsv(os.path.join(d, "limits.tsv"))
    if lim:
        cols = list(lim[0].keys())
        w("Queue limits:")
        w("")
        w("| " + " | ".join(cols) + " |")
        w("|" + "---|" * len(cols))
        for r in lim:
            w("| " + " | ".join(r[c] for c in cols) + " |")
        w("")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "PROFILE.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    return True


def rbd_section(runs, guest, w):
    """The rbd group (BENCH_GROUPS=rbd, bench/rbd.sh): every device that served
    the one RBD image (rbd-nbd, the ublk RBD target) against krbd, and each
    ublk row against rbd-nbd (the other librbd client) where both ran."""
    devs = sorted({r["device"] for r in runs if r["group"] == "rbd"} - {"krbd"})
    if not devs or not any(r["group"] == "rbd" and r["device"] == "krbd" for r in runs):
        return
    w("## RBD: one image through krbd, rbd-nbd and the ublk RBD target")
    w("")
    w(f"Single-node Ceph in the guest (tests/e2e/lib/ceph.sh: one mon, one bluestore OSD on a "
      f"sparse file in {guest.get('rbd_ceph_dir', '?')}), {guest.get('rbd_ceph_version', '?')}; "
      f"cluster start {guest.get('rbd_ceph_start_s', '?')} s. Image features: "
      f"{guest.get('rbd_image_features', '?')}; librbd cache: rbd-nbd "
      f"{guest.get('rbd_cache', '?')}, ublk target false (its own setting). The image is written in full through krbd before the "
      "runs; the devices are mapped side by side, fio runs on one at a time. The OSD, the "
      "monitor and the clients share the guest's 2 vCPUs: these ratios compare client data "
      "paths under one emulated CPU budget, not a networked cluster.")
    w("")
    w("| workload | device | metric | r1 | r2 | krbd r1 | krbd r2 | ratio to krbd | r1 / r2 "
      "| ratio to rbd-nbd (r1 / r2) | client CPU µs/I/O | guest CPU µs/I/O (device / krbd) |")
    w("|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|---|")
    for wl in WORKLOADS:
        metric = "mibs" if "128k" in wl else "iops"
        b = pick(runs, "rbd", "krbd", wl)
        if not b:
            continue
        bmean = statistics.mean(r[metric] for r in b)
        d = 1 if metric == "mibs" else 0
        for dev in devs:
            u = pick(runs, "rbd", dev, wl)
            if not u:
                continue
            umean = statistics.mean(r[metric] for r in u)
            ratio = umean / bmean if bmean else 0
            per = [ur[metric] / br[metric] if br[metric] else 0
                   for ur, br in zip(u, b) if ur["repeat"] == br["repeat"]]
            srv = [r["srv_cpu_us_per_io"] for r in u if r.get("srv_cpu_us_per_io") is not None]
            gu = [r["guest_cpu_us_per_io"] for r in u if r.get("guest_cpu_us_per_io") is not None]
            gb = [r["guest_cpu_us_per_io"] for r in b if r.get("guest_cpu_us_per_io") is not None]
            nbd = pick(runs, "rbd", "rbd-nbd", wl) if dev.startswith("ublk-") else []
            nmean = statistics.mean(r[metric] for r in nbd) if nbd else 0
            if nmean:
                nper = [ur[metric] / nr[metric] if nr[metric] else 0
                        for ur, nr in zip(u, nbd) if ur["repeat"] == nr["repeat"]]
                vs_nbd = (f"{umean / nmean:.2f}x ("
                          + " / ".join(f"{p:.2f}" for p in nper) + ")")
            else:
                vs_nbd = "-"
            w(f"| {wl} | {dev} | {'MiB/s' if metric == 'mibs' else 'IOPS'} | "
              + " | ".join(fmt(r[metric], d) for r in u[:2]) + " |" * (2 - len(u[:2]))
              + " | " + " | ".join(fmt(r[metric], d) for r in b[:2]) + " |" * (2 - len(b[:2]))
              + f" | {ratio:.2f}x | " + " / ".join(f"{p:.2f}" for p in per)
              + f" | {vs_nbd}"
              + f" | {fmt(statistics.mean(srv), 0) if srv else '-'}"
              + f" | {fmt(statistics.mean(gu), 0) if gu else '-'} / {fmt(statistics.mean(gb), 0) if gb else '-'} |")
    w("")
    w("ratio = mean(device) / mean(krbd); ratio to rbd-nbd = mean(ublk) / mean(rbd-nbd), for "
      "the ublk rows. The ublk RBD target serves in user copy: librbd reads and writes plain "
      "user memory, so the target takes no zero copy (ublk/rbd_target.h).")
    w("")
    w("client CPU = the serving process (rbd-nbd, ublk-tool): utime+stime per I/O; krbd "
      "works in the kernel (only the guest CPU column covers it). The OSD's CPU is in the "
      "guest CPU column of every row.")
    w("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    host = kv(a.host)
    guest = kv(os.path.join(a.raw, "guest.txt"))
    runs = load_runs(a.raw)
    profiled = write_profile(a.raw, a.out, host, guest)
    if not runs:
        if plugin_only(a.raw, a.out, host, guest):
            return 0
        if profiled:
            return 0
        print("report: no usable runs", file=sys.stderr)
        return 1
    global UBLK
    UBLK = [d for d in UBLK if any(r["device"] == d for r in runs)]
    devices = tsv(os.path.join(a.raw, "devices.tsv"))
    memory = tsv(os.path.join(a.raw, "memory.tsv"))
    os.makedirs(a.out, exist_ok=True)

    # runs.tsv: every run's numbers, for anyone who wants to recompute.
    cols = ["repeat", "group", "device", "copy_mode", "workload", "iops", "mibs", "p50_us",
            "p99_us", "mean_us", "fio_usr", "fio_sys", "fio_ctx", "win_s", "guest_busy_pct",
            "guest_cpu_us_per_io", "guest_ctx_per_io", "srv_cpu_us_per_io", "srv_ctx_per_io",
            "srv_rss_kb", "srv_hwm_kb"]
    with open(os.path.join(a.out, "runs.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in runs:
            f.write("\t".join(f"{r[c]:.3f}" if isinstance(r[c], float) else
                              ("-" if r[c] is None else str(r[c])) for c in cols) + "\n")

    L = []
    w = L.append
    w("# ublk-csi data-path benchmark")
    w("")
    w("Generated by `make bench` (bench/run.sh); do not edit by hand. Guest under qemu **TCG**:")
    w("absolute numbers mean nothing, only ratios against a kernel baseline measured in the")
    w("same guest boot do. Every comparison ran twice (repeats interleaved across devices).")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| date | {host.get('date', '?')} |")
    w(f"| machine | {host.get('host_nproc', '?')} CPUs, {host.get('host_cpu', '?')} |")
    w(f"| host kernel | {host.get('host_kernel', '?')} |")
    w(f"| load average (1/5/15 min) | before {host.get('load_before', '?')}; after "
      f"{host.get('load_after', '?')}; 1-min samples every 15 s: {host.get('load_samples', '?')} |")
    w(f"| guest | {guest.get('guest_kernel', '?')}, {guest.get('guest_nproc', '?')} vCPUs "
      f"({guest.get('guest_cpu', '?')}), {int(guest.get('guest_mem_kb', '0')) // 1024} MiB, "
      "qemu TCG (`-accel tcg,thread=multi`) |")
    w(f"| tools | {guest.get('fio', '?')}, {guest.get('losetup', '?')} |")
    w(f"| code | git {host.get('git', '?')}; {host.get('ublk_tool', '?')} |")
    w(f"| fio | libaio, direct=1, time_based, {guest.get('runtime_s', '?')} s per run, "
      f"region {guest.get('size_mib', '?')} MiB, numjobs=1, norandommap |")
    w(f"| data disk | {guest.get('data_disk_dev', 'none')} {guest.get('data_disk_fs', '')}; "
      "qemu `-drive if=virtio,cache=none` |")
    w(f"| wall time of make bench | {host.get('wall_seconds', '?')} s (guest bench part "
      f"{guest.get('bench_seconds', '?')} s) |")
    w("")
    w("ublk exports are served by the project's engine through `ublk-tool serve` (one export,")
    w("1 queue, depth 64; `--copy_mode` forced per row). The plugin `ublk-csi` serves exports")
    w("with the same engine (the plugin process is measured in its own section below).")
    w("Baselines: `losetup --direct-io=on` over the")
    w("same backing file; `null_blk` with module defaults. Scheduler `none` on every device.")
    if guest.get("selftest_server"):
        w("`ublk-selftest_*` rows: the kernel's own selftest ublk server (tools/testing/selftests/ublk,")
        w("`kublk add -t null -q 1 -d 64` in the null group, `-t loop` over the same backing file in")
        w("the tmpfs and ext4 groups, in the foreground, flags per row in Devices), built by")
        w(f"bench/selftest-server.sh ({guest['selftest_server'].split(':')[0]}); server columns are its process.")
    w("")

    # Ratio table.
    flagged = []
    dat = []
    w("## Throughput: ublk vs kernel baseline")
    w("")
    w("IOPS for 4k, MiB/s for 128k. ratio = mean(ublk) / mean(baseline); per repeat: "
      "repeat N of ublk / repeat N of the baseline.")
    w("")
    w("| backing | workload | device | metric | ublk r1 | ublk r2 | baseline | base r1 | base r2 "
      "| ratio | ratio r1 / r2 |")
    w("|---|---|---|---|--:|--:|---|--:|--:|--:|---|")
    for group, base, gname, thresh in GROUPS:
        for wl in WORKLOADS:
            metric = "mibs" if "128k" in wl else "iops"
            b = pick(runs, group, base, wl)
            if not b:
                continue
            bmean = statistics.mean(r[metric] for r in b)
            drow = [f"{group}/{wl}"]
            for dev in UBLK:
                u = pick(runs, group, dev, wl)
                if not u:
                    drow += ["NaN"] * 3
                    continue
                umean = statistics.mean(r[metric] for r in u)
                ratio = umean / bmean if bmean else 0
                per = [ur[metric] / br[metric] if br[metric] else 0
                       for ur, br in zip(u, b) if ur["repeat"] == br["repeat"]]
                drow += [f"{ratio:.3f}"] + [f"{p:.3f}" for p in per[:2]] + ["NaN"] * (2 - len(per[:2]))
                mark = " **<**" if ratio < thresh else ""
                w(f"| {gname} | {wl} | {dev} | {'MiB/s' if metric == 'mibs' else 'IOPS'} | "
                  + " | ".join(fmt(r[metric], 1 if metric == 'mibs' else 0) for r in u[:2])
                  + " |" * (2 - len(u[:2]))
                  + f" | {base} | "
                  + " | ".join(fmt(r[metric], 1 if metric == 'mibs' else 0) for r in b[:2])
                  + " |" * (2 - len(b[:2]))
                  + f" | {ratio:.2f}x{mark} | " + " / ".join(f"{p:.2f}" for p in per) + " |")
                if ratio < thresh:
                    flagged.append((group, gname, wl, dev, base, thresh, ratio, per))
            dat.append(drow)
    w("")
    w("**<**: below 1.0x of loop or krbd, or 0.9x of null_blk.")
    w("")

    rbd_section(runs, guest, w)

    w("## Latency at QD1 (4k randread, completion latency)")
    w("")
    w("| backing | device | p50 r1 (µs) | p50 r2 | p99 r1 | p99 r2 | mean r1 | mean r2 |")
    w("|---|---|--:|--:|--:|--:|--:|--:|")
    for group, base, gname, _ in GROUPS:
        others = sorted({r["device"] for r in runs if r["group"] == group} - {base} - set(UBLK))
        for dev in [base] + UBLK + (others if group == "rbd" else []):
            u = pick(runs, group, dev, "randread-4k-qd1")
            if not u:
                continue
            vals = lambda k: [fmt(r[k], 0) for r in u[:2]] + ["-"] * (2 - len(u[:2]))
            w(f"| {gname} | {dev} | " + " | ".join(vals("p50_us")) + " | "
              + " | ".join(vals("p99_us")) + " | " + " | ".join(vals("mean_us")) + " |")
    w("")

    w("## Where the time goes (counters per I/O, mean of the repeats)")
    w("")
    w("Counters are sampled every 0.5 s; each job uses the first and last sample inside its")
    w("I/O phase (from fio's per-second IOPS log) minus its first 1.5 s and last 0.5 s, per")
    w("I/O completed in that window (fio's mean IOPS x window length).")
    w("guest CPU = busy ticks of all vCPUs in /proc/stat (not idle, not iowait)")
    w("per I/O; guest busy % = share of both vCPUs busy; ctx = context switches (/proc/stat ctxt) per I/O; server = the")
    w("ublk-tool process: CPU time (utime + stime of /proc/PID/stat, which keeps the time of")
    w("exited threads such as io_uring's io-wq workers) and times put on a CPU (context switches")
    w("in, summed over its live threads' /proc/PID/task/*/schedstat; \"-\" where a thread started")
    w("or exited inside the window); fio = fio's own usr/sys CPU %. The sampler")
    w("itself (a bash loop, 2 Hz) also runs on the guest's CPUs; its cost is listed at the end.")
    w("")
    w("| backing | workload | device | guest busy % | guest CPU µs/IO | ctx/IO | server CPU µs/IO "
      "| server ctx/IO | fio usr% | fio sys% |")
    w("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for group, base, gname, _ in GROUPS:
        for wl in WORKLOADS:
            for dev in [base] + UBLK:
                u = pick(runs, group, dev, wl)
                if not u:
                    continue
                def m(k):
                    vs = [r[k] for r in u if r[k] is not None]
                    return statistics.mean(vs) if vs else None
                w(f"| {gname} | {wl} | {dev} | {fmt(m('guest_busy_pct'))} | "
                  f"{fmt(m('guest_cpu_us_per_io'), 1)} | {fmt(m('guest_ctx_per_io'), 2)} | "
                  f"{fmt(m('srv_cpu_us_per_io'), 1)} | {fmt(m('srv_ctx_per_io'), 2)} | "
                  f"{fmt(m('fio_usr'), 1)} | {fmt(m('fio_sys'), 1)} |")
    w("")

    w("## Below threshold")
    w("")
    if not flagged:
        w("None: every ublk row is at or above 1.0x of loop or krbd and 0.9x of null_blk.")
    else:
        w("Every row where ublk is below 1.0x of loop or krbd or below 0.9x of null_blk, with its")
        w("counters next to the baseline's (mean of the repeats). An explanation in words, where")
        w("the counters support one, is in bench/README.md.")
        w("")
        w("| backing | workload | device | ratio (r1 / r2) | guest CPU µs/IO ublk vs base "
          "| ctx/IO ublk vs base | server CPU µs/IO |")
        w("|---|---|---|---|---|---|--:|")
        for group, gname, wl, dev, base, thresh, ratio, per in flagged:
            u, b = pick(runs, group, dev, wl), pick(runs, group, base, wl)
            mu = lambda rs, k: statistics.mean(r[k] for r in rs) if rs and all(
                r[k] is not None for r in rs) else None
            w(f"| {gname} | {wl} | {dev} | {ratio:.2f}x ({' / '.join(f'{p:.2f}' for p in per)}) "
              f"vs {base} (< {thresh}) | {fmt(mu(u, 'guest_cpu_us_per_io'), 1)} vs "
              f"{fmt(mu(b, 'guest_cpu_us_per_io'), 1)} | {fmt(mu(u, 'guest_ctx_per_io'), 2)} vs "
              f"{fmt(mu(b, 'guest_ctx_per_io'), 2)} | {fmt(mu(u, 'srv_cpu_us_per_io'), 1)} |")
    w("")

    w("## Devices")
    w("")
    w("All devices were set up once, before repeat 1, and stayed up (idle) while the others ran.")
    w("")
    w("| backing | device | node | logical block | physical block | scheduler | hw queues | note |")
    w("|---|---|---|--:|--:|---|--:|---|")
    for d in devices:
        w(f"| {d['group']} | {d['device']} | {d['dev']} | {d['logical_block_size']} | "
          f"{d['physical_block_size']} | {d['scheduler']} | {d['nr_hw_queues']} | {d['note']} |")
    nb = {k[len('null_blk.'):]: v for k, v in guest.items() if k.startswith("null_blk.")}
    if nb:
        w("")
        w("null_blk parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(nb.items())))
    w("")

    w("## Memory of the serving process (ublk-tool, one export per process)")
    w("")
    w("From /proc/PID/status: VmRSS right after the export is ready (idle, before any I/O),")
    w("VmRSS after each repeat's five workloads, and VmHWM (peak since start). ublk-tool's one")
    w("worker maps its buffer pool (32 slots x 128 KiB = 4 MiB, pre-faulted with")
    w("MADV_POPULATE_WRITE, ublk/memory.cc) on its first copy-mode I/O; the kernel reads the")
    w("partition table through the device during START_DEV, before the export reports READY.")
    w("")
    reps = sorted({int(m["repeat"]) for m in memory if m["repeat"] != "0"})
    w("| backing | device | idle VmRSS KiB | " + " | ".join(
        f"after r{r} VmRSS KiB | after r{r} VmHWM KiB" for r in reps) + " |")
    w("|---|---|--:|" + "--:|--:|" * len(reps))
    for group, base, gname, _ in GROUPS:
        for dev in UBLK:
            pts = {m["repeat"]: m for m in memory if m["group"] == group and m["device"] == dev}
            if not pts:
                continue
            cells = [pts.get("0", {}).get("vmrss_kb", "-")]
            for r in reps:
                x = pts.get(str(r), {})
                cells += [x.get("vmrss_kb", "-"), x.get("vmhwm_kb", "-")]
            w(f"| {gname} | {dev} | " + " | ".join(cells) + " |")
    w("")
    w("Largest VmRSS (KiB, /proc/PID/statm, sampled at 2 Hz) during each workload, repeat 1:")
    w("")
    w("| backing | device | " + " | ".join(WORKLOADS) + " |")
    w("|---|---|" + "--:|" * len(WORKLOADS))
    for group, base, gname, _ in GROUPS:
        for dev in UBLK:
            cells = []
            for wl in WORKLOADS:
                rr = [r for r in pick(runs, group, dev, wl) if r["repeat"] == 1]
                cells.append(fmt(rr[0]["srv_hwm_kb"]) if rr else "-")
            if any(c != "-" for c in cells):
                w(f"| {gname} | {dev} | " + " | ".join(cells) + " |")
    w("")

    if not plugin_section(a.raw, w, guest):
        w("## The plugin")
        w("")
        w("The plugin part (memory with 1-256 exports, recovery of 66 and 256 exports, control-plane")
        w("latency) did not run in this invocation (BENCH_PARTS); see the 6.12 results.")
        w("")
    if os.path.exists(os.path.join(a.out, "PROFILE.md")):
        w("Profiles (perf) and the I/O shapes of the ext4 128k rows: [PROFILE.md](PROFILE.md)")
        w("(`BENCH_PARTS=profile`, its own guest boot; its date is in it).")
        w("")
    samp = {k: v for k, v in guest.items() if k.startswith("sampler_r")}
    if samp:
        w("Sampler cost (its own utime+stime in the guest): " + "; ".join(
            f"repeat {k[len('sampler_r'):]}: {v}" for k, v in sorted(samp.items())) + ".")
        w("")
    w("Raw per-run numbers: [runs.tsv](runs.tsv). Chart: [iops-ratios.png](iops-ratios.png).")

    with open(os.path.join(a.out, "RESULTS.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    with open(os.path.join(a.out, "iops-ratios.dat"), "w") as f:
        f.write("# label" + "".join(f" {d[5:]}_ratio {d[5:]}_r1 {d[5:]}_r2" for d in UBLK)
                + " (ublk IOPS / baseline IOPS)\n")
        for row in dat:
            f.write(" ".join(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
