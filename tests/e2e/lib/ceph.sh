# A single-node Ceph cluster for e2e scenarios (issue 21): one monitor and one
# OSD (bluestore on a sparse file), loopback only, cephx on, no systemd, no
# mgr (RBD I/O, image create/remove/snapshot/clone/resize/trash need none),
# pool "rbd" initialised for RBD with one replica. Debian bookworm's Ceph
# 16.2.x (ceph-mon ceph-osd ceph-common rbd-nbd, scripts/install-deps.sh).
#
# Sourced by a scenario in the guest (also works on a host with those
# packages, as root):  . "$SRC_DIR/tests/e2e/lib/ceph.sh"
#
#   ceph_start DIR   make and start the cluster with all its state in DIR
#                    (the OSD's sparse block file too: put DIR on the
#                    scenario's data disk, "# e2e-disk: 8G", to keep written
#                    data out of the guest's RAM; on tmpfs it works while the
#                    data written stays small). Exports:
#                      CEPH_CONF      DIR/ceph.conf (mon_host, keyring: the
#                                     ceph, rbd and rados tools need nothing more)
#                      CEPH_MON_HOST  [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
#                                     (CEPH_ADDR instead of 127.0.0.1 if set)
#                                     (the value of librados' mon_host)
#                      CEPH_USER      admin (the cephx id, without "client.")
#                      CEPH_KEY       its cephx key (base64)
#                      CEPH_POOL      rbd
#                      CEPH_ADMIN_KEYRING DIR/keyring (client.admin only; not
#                                     CEPH_KEYRING: Ceph reads that variable
#                                     and it would override the daemons' own)
#                    and prints how long it took. Returns non-zero (with the
#                    daemon's log tail) if a step fails.
#   ceph_stop        SIGTERM both daemons, SIGKILL after 20 s; keeps DIR.
#   ceph_osd_kill9   kill -9 the OSD (I/O to it stalls; clients retry).
#   ceph_osd_start   start the OSD again on its existing store and wait
#                    until it is up in the osdmap.
#   ceph_mon_stop    SIGTERM the monitor and wait for it to exit.
#   ceph_mon_start   start the monitor again on its existing store and wait
#                    until it answers.
#   ceph_wait_osd_up [S]   waits until osd.0 is up (default 60 s).
#   ceph_pick_dir    prints a DIR for ceph_start: tmpfs if it takes O_DIRECT,
#                    else the data disk.
#   ceph_rbd_map_krbd IMAGE  `rbd map` (kernel driver, no udev): prints /dev/rbdN.
#   ceph_rbd_unmap_krbd DEV  its unmap (without noudev both wait for udev
#                    events forever: the guest has no udev).
#   ceph_load_modules rbd|nbd  modprobe (the e2e initramfs carries both).
#
# Knobs (environment, before ceph_start): CEPH_MON_PORT (v2, default 3300),
# CEPH_MON_PORT_V1 (default 6789) to run next to another cluster on a host;
# CEPH_ADDR (default 127.0.0.1): the address the monitor and the OSD bind
# (public_network is that address alone), e.g. a Kubernetes node's IP, which
# pods reach and their own loopback is not;
# CEPH_OSD_SIZE (sparse block file, default 4G); CEPH_OSD_MEMORY (osd
# memory target, default 512M: the guest has 2 GiB).

CEPH_DIR=
CEPH_MON_PID=
CEPH_OSD_PID=

ceph_log() { echo "ceph: $*"; }

ceph_now() { date +%s.%N; }
ceph_secs() { awk -v a="$1" -v b="$(ceph_now)" 'BEGIN { printf "%.1f", b - a }'; }

# The ceph/rbd/rados tools with the cluster's config and a bounded wait.
ceph_cmd() { timeout "${CEPH_CMD_TIMEOUT:-60}" ceph --conf "$CEPH_CONF" "$@"; }

ceph_log_tail() { # NAME (mon.a | osd.0)
  [ -f "$CEPH_DIR/log/$1.log" ] || return 0
  echo "ceph: last lines of $CEPH_DIR/log/$1.log:"
  tail -n "${2:-25}" "$CEPH_DIR/log/$1.log" | sed 's/^/  | /'
  [ -s "$CEPH_DIR/log/$1.out" ] && { echo "ceph: $1 stdout/stderr:"; tail -n 10 "$CEPH_DIR/log/$1.out" | sed 's/^/  | /'; }
  return 0
}

# The daemons run under "env -u CEPH_KEYRING -u CEPH_ARGS" (env execs them:
# $! is the daemon's pid): Ceph takes those from the environment over the
# config file, and a scenario's CEPH_KEYRING made a restarted OSD
# authenticate with the admin keyring and fail.

ceph_load_modules() {
  local m
  for m in "$@"; do
    [ -d "/sys/module/$m" ] && continue
    modprobe "$m" || { ceph_log "modprobe $m failed (not in this kernel's module set?)"; return 1; }
  done
}

# ceph_mon_answers: the monitor has a quorum and answers a command.
ceph_mon_answers() { CEPH_CMD_TIMEOUT=10 ceph_cmd mon stat >/dev/null 2>&1; }

ceph_osd_is_up() {
  CEPH_CMD_TIMEOUT=10 ceph_cmd osd dump 2>/dev/null | grep -q '^osd\.0 up'
}

ceph_wait_osd_up() {
  local t=${1:-60} i=0
  while ! ceph_osd_is_up; do
    i=$((i + 1))
    if [ $i -ge "$t" ]; then ceph_log "osd.0 not up after ${t} s"; ceph_log_tail osd.0; return 1; fi
    sleep 1
  done
}

# The monitor logs "mon.a is new leader" when it has formed its quorum of
# one: waiting for a new such line costs no process start.
ceph_mon_leader_count() { grep -c 'mon.a is new leader' "$CEPH_DIR/log/mon.a.log" 2>/dev/null; }

ceph_mon_start() { # [TIMEOUT_S]
  local before t=${1:-60} i=0
  before=$(ceph_mon_leader_count)
  env -u CEPH_KEYRING -u CEPH_ARGS ceph-mon --conf "$CEPH_CONF" -i a -f >"$CEPH_DIR/log/mon.a.out" 2>&1 &
  CEPH_MON_PID=$!
  while [ "$(ceph_mon_leader_count)" -le "${before:-0}" ]; do
    if ! kill -0 "$CEPH_MON_PID" 2>/dev/null; then
      ceph_log "ceph-mon exited"; ceph_log_tail mon.a; CEPH_MON_PID=; return 1
    fi
    i=$((i + 1))
    [ $i -lt $((t * 5)) ] || { ceph_log "mon.a not leader after ${t} s"; ceph_log_tail mon.a; return 1; }
    sleep 0.2
  done
}

# The OSD logs "state: booting -> active" once the monitor has marked it up:
# waiting for a new such line is cheaper than polling the monitor with the
# python `ceph` tool (seconds per call under TCG).
ceph_osd_active_count() { grep -c 'state: booting -> active' "$CEPH_DIR/log/osd.0.log" 2>/dev/null; }

ceph_osd_start() { # [TIMEOUT_S]
  local before t=${1:-90} i=0
  before=$(ceph_osd_active_count)
  env -u CEPH_KEYRING -u CEPH_ARGS ceph-osd --conf "$CEPH_CONF" -i 0 -f >"$CEPH_DIR/log/osd.0.out" 2>&1 &
  CEPH_OSD_PID=$!
  while [ "$(ceph_osd_active_count)" -le "${before:-0}" ]; do
    if ! kill -0 "$CEPH_OSD_PID" 2>/dev/null; then
      ceph_log "ceph-osd exited"; ceph_log_tail osd.0; CEPH_OSD_PID=; return 1
    fi
    i=$((i + 1))
    [ $i -lt $((t * 5)) ] || { ceph_log "osd.0 not active after ${t} s"; ceph_log_tail osd.0; return 1; }
    sleep 0.2
  done
}

ceph_stop_pid() { # PID NAME
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    ceph_log "$2 (pid $pid) still running 20 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

ceph_mon_stop() { ceph_stop_pid "$CEPH_MON_PID" mon.a; CEPH_MON_PID=; }

ceph_osd_kill9() {
  [ -n "$CEPH_OSD_PID" ] || { ceph_log "ceph_osd_kill9: no OSD running"; return 1; }
  kill -KILL "$CEPH_OSD_PID" 2>/dev/null
  wait "$CEPH_OSD_PID" 2>/dev/null
  CEPH_OSD_PID=
}

ceph_stop() {
  ceph_stop_pid "$CEPH_OSD_PID" osd.0; CEPH_OSD_PID=
  ceph_mon_stop
}

ceph_start() { # DIR
  local dir=$1 t0 fsid osd_uuid mon_v2=${CEPH_MON_PORT:-3300} mon_v1=${CEPH_MON_PORT_V1:-6789}
  t0=$(ceph_now)
  mkdir -p "$dir" || return 1
  CEPH_DIR=$(realpath "$dir")
  rm -rf "${CEPH_DIR:?}"/{mon,osd,run,log,keyring,ceph.conf,monmap}
  mkdir -p "$CEPH_DIR"/{mon/ceph-a,osd/ceph-0,run,log}
  # The guest's loopback interface starts down.
  ip link set lo up 2>/dev/null
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  local addr=${CEPH_ADDR:-127.0.0.1} public_net=127.0.0.0/8
  [ "$addr" = 127.0.0.1 ] || public_net=$addr/32
  CEPH_MON_HOST="[v2:$addr:$mon_v2,v1:$addr:$mon_v1]"
  CEPH_CONF=$CEPH_DIR/ceph.conf
  CEPH_ADMIN_KEYRING=$CEPH_DIR/keyring
  cat > "$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon_host = $CEPH_MON_HOST
public_network = $public_net
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $CEPH_ADMIN_KEYRING
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$name.asok
log_file = $CEPH_DIR/log/\$name.log
log_to_stderr = false
err_to_stderr = false
mon_cluster_log_file = $CEPH_DIR/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
ms_async_op_threads = 2
# One monitor: no need to batch map changes for a second (osd new, pool
# create, the OSD boot each wait for a proposal).
paxos_propose_interval = 0.05

[mon]
mon_data = $CEPH_DIR/mon/ceph-\$id
mon_initial_members = a

[mon.a]
# ceph-mon --mkfs names the mon of mon_host with this address "a".
public_addrv = $CEPH_MON_HOST

[osd]
osd_data = $CEPH_DIR/osd/ceph-\$id
keyring = $CEPH_DIR/osd/ceph-\$id/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "${CEPH_OSD_SIZE:-4G}")
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_memory_target = $(numfmt --from=iec "${CEPH_OSD_MEMORY:-512M}")
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
# The guest has no host name ("(none)" is no valid crush name).
crush_location = root=default host=e2e-ceph
EOF
  # Every Ceph process start costs seconds under TCG (~5 s each: the
  # libraries are large), so: keys are made here in bash, not by
  # ceph-authtool; the monitor and the OSD stores are made side by side; one
  # python process (librados bindings) does every monitor command and waits
  # until the pool takes a write.
  # Keys: mon., client.admin and osd.0 all go into the monitor's initial
  # auth database at mkfs, so no `ceph auth` round trip is needed later.
  CEPH_KEY=$(ceph_gen_key)
  printf '[mon.]\n\tkey = %s\n\tcaps mon = "allow *"\n' "$(ceph_gen_key)" > "$CEPH_DIR/mon.keyring"
  printf '[client.admin]\n\tkey = %s\n\tcaps mon = "allow *"\n\tcaps osd = "allow *"\n\tcaps mgr = "allow *"\n' \
    "$CEPH_KEY" > "$CEPH_ADMIN_KEYRING"
  printf '[osd.0]\n\tkey = %s\n\tcaps mon = "allow profile osd"\n\tcaps osd = "allow *"\n\tcaps mgr = "allow profile osd"\n' \
    "$(ceph_gen_key)" > "$CEPH_DIR/osd/ceph-0/keyring"
  cat "$CEPH_ADMIN_KEYRING" "$CEPH_DIR/osd/ceph-0/keyring" >> "$CEPH_DIR/mon.keyring"
  ( env -u CEPH_KEYRING -u CEPH_ARGS ceph-osd --conf "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$CEPH_DIR/log/osd.0.out" 2>&1 ) &
  local mkfs_pid=$! rc
  # No monmaptool: --mkfs builds the map from mon_host, fsid and
  # mon_initial_members in the config (one process start less).
  env -u CEPH_KEYRING -u CEPH_ARGS ceph-mon --conf "$CEPH_CONF" --mkfs -i a --keyring "$CEPH_DIR/mon.keyring" >"$CEPH_DIR/log/mon.a.out" 2>&1 \
    || { ceph_log "ceph-mon --mkfs failed"; ceph_log_tail mon.a; wait $mkfs_pid; return 1; }
  ceph_mon_start 60 || { wait $mkfs_pid; return 1; }
  ceph_log "mon.a started after $(ceph_secs "$t0") s"
  # The monitor commands: the OSD's id (its key is already known), the pool.
  local setup_log=$CEPH_DIR/log/setup.log ready=$CEPH_DIR/run/osd-created setup_pid
  rm -f "$ready"
  CEPH_CONF=$CEPH_CONF CEPH_READY_FILE=$ready CEPH_OSD_UUID=$osd_uuid timeout 300 /usr/bin/python3 -c "$CEPH_SETUP_PY" \
    >"$setup_log" 2>&1 &
  setup_pid=$!
  wait $mkfs_pid; rc=$?
  [ $rc = 0 ] || { ceph_log "ceph-osd --mkfs failed ($rc)"; ceph_log_tail osd.0; kill $setup_pid 2>/dev/null; return 1; }
  ceph_log "osd.0 store made after $(ceph_secs "$t0") s"
  while [ ! -e "$ready" ]; do
    if ! kill -0 $setup_pid 2>/dev/null; then
      ceph_log "cluster setup failed:"; sed 's/^/  | /' "$setup_log"; return 1
    fi
    sleep 0.2
  done
  ceph_osd_start 120 || { kill $setup_pid 2>/dev/null; return 1; }
  ceph_log "osd.0 up after $(ceph_secs "$t0") s"
  wait $setup_pid; rc=$?
  [ $rc = 0 ] || { ceph_log "cluster setup failed ($rc):"; sed 's/^/  | /' "$setup_log"; ceph_log_tail osd.0; return 1; }
  CEPH_USER="admin"
  CEPH_POOL=rbd
  export CEPH_CONF CEPH_MON_HOST CEPH_USER CEPH_KEY CEPH_POOL CEPH_ADMIN_KEYRING
  ceph_log "cluster ready in $(ceph_secs "$t0") s (mon_host $CEPH_MON_HOST, pool $CEPH_POOL, conf $CEPH_CONF)"
}

# ceph_gen_key: a new cephx secret as a keyring holds it: base64 of
# type (le16 1 = AES), created (le32 sec, le32 nsec: 0), length (le16 16)
# and 16 random bytes.
ceph_gen_key() {
  { printf '\001\000\000\000\000\000\000\000\000\000\020\000'; head -c 16 /dev/urandom; } | base64 -w0
}

# The monitor commands of ceph_start, in one process. Signals CEPH_READY_FILE
# once osd.0 exists (the caller starts the OSD then) and returns when an
# object can be written to the pool (the PGs are active).
CEPH_SETUP_PY='
import json, os, sys, time, rados
def cmd(c, **kw):
    kw["prefix"] = c
    rc, out, err = cl.mon_command(json.dumps(kw), b"", timeout=60)
    if rc != 0:
        sys.exit("%s: %s (%d)" % (c, err, rc))
    return out
cl = rados.Rados(conffile=os.environ["CEPH_CONF"], name="client.admin")
cl.connect(timeout=120)
osd_id = json.loads(cmd("osd new", uuid=os.environ["CEPH_OSD_UUID"], format="json"))["osdid"]
if osd_id != 0:
    sys.exit("osd new gave id %r, want 0" % osd_id)
cmd("osd pool create", pool="rbd", pg_num=8, pgp_num=8)
cmd("osd pool application enable", pool="rbd", app="rbd")
open(os.environ["CEPH_READY_FILE"], "w").close()
print("osd.0 created, pool rbd made", flush=True)
io = cl.open_ioctx("rbd")
io.set_locator_key("")
io.write_full("ceph_start_probe", b"x")
io.remove_object("ceph_start_probe")
print("pool rbd takes writes", flush=True)
'

# ceph_pick_dir: where a scenario's cluster should live: on the guest's tmpfs
# if it takes O_DIRECT (bluestore opens its block file with it; no disk
# flushes, a faster start; written data costs RAM), else on the data disk
# (E2E_DATA_DIR, "# e2e-disk: SIZE"), else the scratch dir anyway.
ceph_pick_dir() {
  local probe=${E2E_SCRATCH:-/tmp}/.ceph-odirect.$$
  if dd if=/dev/zero of="$probe" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
    rm -f "$probe"; echo "${E2E_SCRATCH:-/tmp}/ceph"; return
  fi
  rm -f "$probe"
  if [ -n "${E2E_DATA_DIR:-}" ]; then echo "$E2E_DATA_DIR/ceph"; else echo "${E2E_SCRATCH:-/tmp}/ceph"; fi
}

# ceph_rbd_unmap_krbd DEV: unmaps a krbd device (noudev, as mapped).
ceph_rbd_unmap_krbd() {
  timeout 120 rbd --conf "$CEPH_CONF" device unmap -t krbd -o noudev "$1"
}

# ceph_rbd_map_krbd IMAGE [rbd map options]: maps POOL/IMAGE with the kernel
# driver and prints the device. noudev: the guest has no udev (devtmpfs makes
# the node).
ceph_rbd_map_krbd() {
  local img=$1 dev
  shift
  ceph_load_modules rbd || return 1
  dev=$(timeout 120 rbd --conf "$CEPH_CONF" device map -t krbd -o noudev "$@" "$CEPH_POOL/$img") || return 1
  echo "$dev"
}
