// ublk-csi: the CSI plugin binary. Wires the real implementations together
// (nothing else constructs globals), serves until SIGTERM/SIGINT.
#include <grp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "csi/controller_service.h"
#include "csi/crash_loop_guard.h"
#include "csi/endpoint.h"
#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/file_system.h"
#include "csi/health.h"
#include "csi/http_server.h"
#include "csi/identity_service.h"
#include "csi/liveness.h"
#include "csi/no_export_backend.h"
#include "csi/node_service.h"
#include "csi/plugin_server.h"
#include "csi/rbd_admin.h"
#include "csi/rbd_params.h"
#include "csi/record_store.h"
#include "csi/recovery_manager.h"
#include "csi/startup_marks.h"
#include "csi/ublk_volume_backend.h"
#include "csi/version.h"
#include "csi/volume_manager.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/clock.h"
#include "ublk/errno.h"
#include "ublk/fault_memory.h"
#include "ublk/features.h"
#include "ublk/kernel_real.h"
#include "ublk/memory.h"
#include "ublk/rbd_cluster.h"
#include "ublk/rbd_target.h"
#include "ublk/status_macros.h"
#include "ublk/uapi.h"
#include "ublk/worker_pool.h"

DEFINE_string(endpoint, "unix:///csi/csi.sock",
              "CSI endpoint: unix:///absolute/path or tcp://host:port");
DEFINE_string(mode, "node",
              "node: the node plugin (DaemonSet): driver ublk.csi.io (node-local volumes; "
              "Identity, Controller, Node) on --endpoint, and with --rbd-endpoint the node side "
              "of rbd.ublk.csi.io | controller: the central controller of rbd.ublk.csi.io (a "
              "Deployment): Identity and Controller for Ceph RBD volumes only, no devices, no "
              "ublk driver needed; requires --rbd");
DEFINE_string(rbd_endpoint, "",
              "--mode=node with --rbd: a second CSI endpoint (e.g. unix:///csi/rbd.sock) on which "
              "this process answers as driver rbd.ublk.csi.io (Identity and Node, RBD volumes "
              "only), for the node-driver-registrar of that driver; empty = none");
DEFINE_string(node_id, "", "this node's name (Kubernetes node name); required with --mode=node");
DEFINE_string(data_dir, "/var/lib/ublk-csi", "directory holding volume backing files and records");
DEFINE_string(metrics_address, "127.0.0.1:9810",
              "host:port for /metrics, /healthz and /readyz (an IPv6 host with or without "
              "brackets); empty disables. Loopback by default: in a pod, pass the pod IP "
              "(the chart does) so kubelet's probes and Prometheus reach it");
DEFINE_int32(http_threads, 8, "threads serving /metrics, /healthz and /readyz");
DEFINE_string(http_request_timeout, "3s",
              "longest an HTTP client may take to send its request: a slow or half-open "
              "client holds one of --http-threads at most this long");
DEFINE_string(socket_group, "",
              "unix CSI socket: empty = mode 0600 (owner only); a group name or gid = mode "
              "0660 with that group");
DEFINE_int32(grpc_max_threads, 64,
             "threads serving CSI calls; a call that finds none free fails with "
             "RESOURCE_EXHAUSTED (the sidecars and kubelet retry) instead of starting more");
DEFINE_int32(grpc_max_concurrent_streams, 32, "CSI calls in flight on one connection");
DEFINE_int32(grpc_max_message_bytes, 4 << 20, "largest CSI request or response message");
DEFINE_string(grpc_keepalive_time, "60s",
              "ping a CSI connection after this much silence; a connection that does not "
              "answer within --grpc-keepalive-timeout is closed");
DEFINE_string(grpc_keepalive_timeout, "20s", "see --grpc-keepalive-time");
DEFINE_string(grpc_max_connection_idle, "0s",
              "close CSI connections without calls for this long; 0s = never (the default: "
              "the CSI sidecars exit when the plugin closes their connection)");
DEFINE_string(liveness_timeout, "2s",
              "/healthz and Probe fail when a new connection to the CSI endpoint cannot "
              "complete a call within this bound (keep it below the probes' timeouts)");
DEFINE_string(liveness_cache, "3s", "a liveness result is reused for this long");
DEFINE_string(log_level, "info", "error | warning | info | debug | trace");
DEFINE_bool(rbd, false,
            "serve Ceph RBD volumes (StorageClass parameter backend: rbd) besides node-local "
            "file volumes: one rados connection per cluster, shared by I/O and admin calls");
DEFINE_string(rbd_clusters_file, "",
              "with --rbd: a file of \"clusterID monitors\" lines (e.g. a ConfigMap); a "
              "DeleteVolume of an RBD volume without a record here (a replaced controller pod) "
              "reaches its cluster through it instead of leaving the image");
DEFINE_string(rbd_connect_timeout, "10s",
              "how long connecting to a Ceph cluster may take before UNAVAILABLE");
// 120 s, not 30: an OSD that dies is marked down after its heartbeat grace
// (20 s) and its PGs peer before I/O resumes; a 30 s bound turned such a
// failover into EIO and a read-only filesystem (ceph-csi#2204 with rbd-nbd's
// 30 s io-timeout; they went to 0). Bounded still: a call on a cluster that
// never answers must not hold a volume's lock and a server thread forever.
DEFINE_string(rbd_op_timeout, "120s",
              "an RBD I/O or admin call still unanswered after this long fails (EIO for I/O; "
              "counted in ublk_csi_rbd_op_timeouts_total); 0 = wait forever, as krbd does");
DEFINE_string(backend, "ublk",
              "volume backend: ublk (real devices) | fake (no devices: a symlink stands in "
              "for /dev/ublkbN; control-plane demos and tests only)");
DEFINE_string(mounter, "real",
              "real (mount(2), mkfs, blkid) | fake (in-memory mount table; demos and tests only)");
DEFINE_int32(max_volumes, 0,
             "max_volumes_per_node reported to Kubernetes; 0 = the backend's limit (ublks_max)");
DEFINE_int32(rbd_max_volumes, 0,
             "max_volumes_per_node reported for rbd.ublk.csi.io (--rbd-endpoint); 0 = the "
             "backend's limit (ublks_max), which the node-local driver counts too: set both "
             "flags so that they add up to at most ublks_max");
DEFINE_string(default_volume_size, "1Gi", "size of a volume whose CreateVolume names none");
DEFINE_double(overcommit_ratio, 1.0,
              "thin provisioning: volume sizes admitted per byte of data-dir capacity (free + "
              "used by volumes); 1 = never promise more than the disk holds; a StorageClass "
              "parameter overcommitRatio overrides it per class");
DEFINE_int32(workers, 0,
             "ublk worker threads shared by all exports; 0 = one per CPU, at least 4 (a killed "
             "server's devices are released per worker: more workers, faster recovery)");
constexpr int32_t kMaxBusyPollRounds = 65536;
DEFINE_int32(busy_poll_rounds, static_cast<int32_t>(ublk::WorkerOptions{}.busy_poll_rounds),
             "after a wait that brought work, this many non-blocking io_uring reaps before a "
             "worker sleeps again: a request arriving meanwhile needs no wake-up (0..65536; 0: "
             "sleep at once, the least CPU on a node with sparse I/O)");
DEFINE_bool(pin_workers, false,
            "pin worker i to the i-th CPU the plugin may run on (its cpuset): measured faster "
            "where a target's I/O goes through io_uring's io-wq threads (tmpfs backing in zero "
            "copy); off: the scheduler places the workers");
DEFINE_int32(queue_depth, 64,
             "requests in flight per ublk queue of a new export (1..4096); a recovered export "
             "keeps the depth it was created with");
DEFINE_int64(buffer_pool_slots, 0,
             "bounce-buffer slots per worker; 0 = derived from the node-wide 64 MiB budget");
DEFINE_int64(buffer_pool_slot_size, 128 * 1024, "bytes per bounce-buffer slot (max I/O size)");
DEFINE_int32(fault_injection_fail_buffer_pool_mmap_seconds, 0,
             "TESTS ONLY: every buffer-pool mmap fails with ENOMEM for this many seconds after "
             "start (the degrade-to-heap path under memory pressure); 0 = off");
DEFINE_string(memory_limit, "",
              "memory the plugin keeps under (e.g. 256Mi); empty = its cgroup's memory.max/high");
DEFINE_string(memory_headroom, "8Mi", "kept free below the limit: I/O buffers beyond it wait");
DEFINE_int32(recovery_concurrency, ublk_csi::kDefaultRecoveryConcurrency,
             "volumes whose exports are re-attached or re-created at once after a start");

DEFINE_string(emulate_kernel, "none",
              "none | 6.1: on a newer kernel, behave as on Linux 6.1 (no GET_FEATURES, legacy "
              "command numbers, get-data copy mode); for CI coverage of old-kernel paths");

DEFINE_string(copy_mode, "auto",
              "how request data moves between kernel and plugin: auto | zero_copy | user_copy | "
              "get_data. auto picks zero_copy where ublk_drv has UBLK_F_AUTO_BUF_REG (Linux "
              "6.16+), else user_copy (6.5+), else get_data. Forcing a mode is the operators' "
              "kill switch (e.g. --copy_mode=user_copy to turn zero copy off); forcing one the "
              "kernel lacks stops the plugin at start with an error naming the mode and the "
              "kernel's features. Applies to devices created from now on: a device recovered "
              "after a plugin restart keeps the mode it was created in");

namespace ublk_csi {
namespace {

// How long each start-up step took (one INFO line once the plugin serves):
// every step before recovery starts delays every volume's recovery.
StartupMarks& Startup() {
  static StartupMarks* marks = new StartupMarks();  // first called at the top of main()
  return *marks;
}

absl::Status ApplyLogLevel(const std::string& level) {
  FLAGS_logtostderr = true;
  if (level == "error") {
    FLAGS_minloglevel = google::GLOG_ERROR;
  } else if (level == "warning") {
    FLAGS_minloglevel = google::GLOG_WARNING;
  } else if (level == "info" || level == "debug" || level == "trace") {
    FLAGS_minloglevel = google::GLOG_INFO;
    FLAGS_v = level == "debug" ? 1 : level == "trace" ? 2 : 0;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-level=", level, ": expected one of error, warning, info, debug, trace"));
  }
  return absl::OkStatus();
}

absl::Status CheckDataDir(const std::string& dir) {
  struct stat st;
  if (dir.empty() || dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("--data-dir=", dir, ": must be an absolute path"));
  }
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir=", dir, ": not an existing directory"));
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("--data-dir=", dir, ": not writable"));
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& s) {
  LOG(ERROR) << s;
  std::fprintf(stderr, "ublk-csi: %s\n", std::string(s.message()).c_str());
  return 2;
}

absl::StatusOr<absl::Duration> ParseDurationFlag(const char* name, const std::string& value,
                                                 bool allow_zero) {
  absl::Duration d;
  if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration() ||
      (!allow_zero && d == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, ": expected a ",
                                                   allow_zero ? "" : "positive ",
                                                   "duration such as 500ms, 3s, 5m"));
  }
  return d;
}

absl::StatusOr<gid_t> ParseGroup(const std::string& group) {
  uint32_t gid = 0;
  if (absl::SimpleAtoi(group, &gid)) return static_cast<gid_t>(gid);
  struct group grp;
  struct group* found = nullptr;
  std::vector<char> buf(16384);
  if (::getgrnam_r(group.c_str(), &grp, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--socket-group=", group, ": no such group (give a name or a numeric gid)"));
  }
  return found->gr_gid;
}

// Every flag checked before anything is created, so a bad one stops the
// plugin with a clear message and no side effect.
struct PluginConfig {
  Endpoint endpoint;
  // --mode=controller: the central RBD controller (driver rbd.ublk.csi.io).
  bool controller = false;
  // --mode=node: the endpoint of the node side of rbd.ublk.csi.io, if any.
  std::optional<Endpoint> rbd_endpoint;
  ublk::FeatureOptions feature_options;
  int64_t default_volume_bytes = 0;
  PluginServerOptions grpc;
  HttpServerOptions http;
  absl::Duration liveness_timeout;
  absl::Duration liveness_cache;
};

// --mode and the flags that go with it: a combination an operator could get
// wrong stops the plugin at start, naming the flags.
absl::Status ParseModeFlags(PluginConfig* c) {
  if (FLAGS_mode != "node" && FLAGS_mode != "controller") {
    return absl::InvalidArgumentError(
        absl::StrCat("--mode=", FLAGS_mode, ": expected node or controller"));
  }
  c->controller = FLAGS_mode == "controller";
  if (c->controller) {
    if (!FLAGS_rbd) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--mode=controller needs --rbd: the controller serves Ceph RBD volumes only (driver ",
          kRbdPluginName, "); node-local volumes are provisioned by the node plugins"));
    }
    if (!FLAGS_rbd_endpoint.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--rbd-endpoint is for --mode=node; with --mode=controller, --endpoint serves ",
          kRbdPluginName));
    }
    return absl::OkStatus();
  }
  if (FLAGS_node_id.empty()) return absl::InvalidArgumentError("--node-id is required");
  if (FLAGS_rbd_endpoint.empty()) return absl::OkStatus();
  if (!FLAGS_rbd) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rbd-endpoint=", FLAGS_rbd_endpoint,
                     " needs --rbd (the endpoint serves Ceph RBD volumes)"));
  }
  absl::StatusOr<Endpoint> rbd = ParseEndpoint(FLAGS_rbd_endpoint);
  if (!rbd.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--rbd-endpoint: ", rbd.status().message()));
  }
  if (rbd->GrpcTarget() == c->endpoint.GrpcTarget()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rbd-endpoint=", FLAGS_rbd_endpoint, " is --endpoint too: drivers ",
                     kPluginName, " and ", kRbdPluginName, " each need an endpoint of their own"));
  }
  c->rbd_endpoint = *std::move(rbd);
  return absl::OkStatus();
}

absl::StatusOr<PluginConfig> ParseFlags() {
  PluginConfig c;
  RETURN_IF_ERROR(ApplyLogLevel(FLAGS_log_level));
  ASSIGN_OR_RETURN(c.endpoint, ParseEndpoint(FLAGS_endpoint));
  RETURN_IF_ERROR(ParseModeFlags(&c));
  RETURN_IF_ERROR(CheckDataDir(FLAGS_data_dir));
  ASSIGN_OR_RETURN(c.feature_options.emulate_kernel,
                   ublk::ParseKernelEmulation(FLAGS_emulate_kernel));
  ASSIGN_OR_RETURN(c.feature_options.force_copy_mode, ublk::ParseCopyModeFlag(FLAGS_copy_mode));
  absl::StatusOr<int64_t> default_size = ParseSize(FLAGS_default_volume_size);
  if (!default_size.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default-volume-size: ", default_size.status().message()));
  }
  c.default_volume_bytes = *default_size;
  for (const auto& [flag, value] : {std::pair{"--max-volumes", FLAGS_max_volumes},
                                    std::pair{"--rbd-max-volumes", FLAGS_rbd_max_volumes}}) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, "=", value, ": must not be negative (0: ublks_max)"));
    }
  }
  if (FLAGS_recovery_concurrency < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--recovery-concurrency=", FLAGS_recovery_concurrency, ": must be at least 1"));
  }
  if (FLAGS_grpc_max_threads < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--grpc-max-threads=", FLAGS_grpc_max_threads, ": must be at least 2"));
  }
  if (FLAGS_grpc_max_concurrent_streams < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--grpc-max-concurrent-streams=", FLAGS_grpc_max_concurrent_streams, ": must be positive"));
  }
  if (FLAGS_grpc_max_message_bytes < 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--grpc-max-message-bytes=", FLAGS_grpc_max_message_bytes, ": must be at least 1024"));
  }
  if (FLAGS_http_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http-threads=", FLAGS_http_threads, ": must be positive"));
  }
  c.grpc.max_threads = FLAGS_grpc_max_threads;
  c.grpc.max_concurrent_streams = FLAGS_grpc_max_concurrent_streams;
  c.grpc.max_message_bytes = FLAGS_grpc_max_message_bytes;
  c.http.threads = FLAGS_http_threads;
  ASSIGN_OR_RETURN(c.grpc.keepalive_time,
                   ParseDurationFlag("grpc-keepalive-time", FLAGS_grpc_keepalive_time, false));
  ASSIGN_OR_RETURN(
      c.grpc.keepalive_timeout,
      ParseDurationFlag("grpc-keepalive-timeout", FLAGS_grpc_keepalive_timeout, false));
  ASSIGN_OR_RETURN(
      c.grpc.max_connection_idle,
      ParseDurationFlag("grpc-max-connection-idle", FLAGS_grpc_max_connection_idle, true));
  ASSIGN_OR_RETURN(c.http.request_timeout,
                   ParseDurationFlag("http-request-timeout", FLAGS_http_request_timeout, false));
  ASSIGN_OR_RETURN(c.liveness_timeout,
                   ParseDurationFlag("liveness-timeout", FLAGS_liveness_timeout, false));
  ASSIGN_OR_RETURN(c.liveness_cache,
                   ParseDurationFlag("liveness-cache", FLAGS_liveness_cache, true));
  if (!FLAGS_socket_group.empty()) {
    ASSIGN_OR_RETURN(gid_t gid, ParseGroup(FLAGS_socket_group));
    c.grpc.socket_group = gid;
  }
  if (!FLAGS_metrics_address.empty()) {
    RETURN_IF_ERROR(NormalizeHttpAddress(FLAGS_metrics_address).status());
  }
  if (FLAGS_queue_depth < 1 || FLAGS_queue_depth > static_cast<int32_t>(ublk::kMaxQueueDepth)) {
    return absl::InvalidArgumentError(absl::StrCat("--queue-depth=", FLAGS_queue_depth,
                                                   ": out of range 1..", ublk::kMaxQueueDepth));
  }
  if (FLAGS_busy_poll_rounds < 0 || FLAGS_busy_poll_rounds > kMaxBusyPollRounds) {
    return absl::InvalidArgumentError(absl::StrCat("--busy-poll-rounds=", FLAGS_busy_poll_rounds,
                                                   ": out of range 0..", kMaxBusyPollRounds));
  }
  return c;
}

// Every idle connection, backing file and device costs a descriptor, and the
// soft limit (often 1024) is far below the hard one a container gets. Never
// fatal: the plugin runs on with the soft limit it has.
void RaiseOpenFileLimit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    PLOG(WARNING) << "getrlimit(RLIMIT_NOFILE)";
    return;
  }
  if (rl.rlim_cur >= rl.rlim_max) {
    LOG(INFO) << "RLIMIT_NOFILE: " << rl.rlim_cur << " (soft = hard)";
    return;
  }
  const rlim_t before = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    PLOG(WARNING) << "raising RLIMIT_NOFILE soft limit from " << before << " to " << rl.rlim_max
                  << " failed; staying at " << before;
    return;
  }
  LOG(INFO) << "raised RLIMIT_NOFILE soft limit from " << before << " to " << rl.rlim_max;
}

// The storage backend and what it owns. Members are declared in this order
// so they are destroyed backend first (it detaches every export:
// USER_RECOVERY devices stay quiesced for the next process), then the worker
// pool.
struct BackendParts {
  // Counts starts whose recovery did not complete; after a few, this start
  // recovers one volume at a time without buffer pools (crash_loop_guard.h).
  std::shared_ptr<CrashLoopGuard> guard;
  bool conservative = false;
  std::unique_ptr<ublk::RealMemorySource> memory;
  std::unique_ptr<HeapOnlyMemorySource> heap_only;
  ublk::RealClock clock;
  std::unique_ptr<ublk::FaultInjectingMemorySource> fault_memory;
  // --rbd: outlive the backend, whose RBD targets use them.
  std::unique_ptr<ublk::RbdClient> rbd_client;
  std::unique_ptr<ublk::RadosConnections> rbd_connections;
  std::unique_ptr<ublk::RbdMetrics> rbd_metrics;
  std::unique_ptr<RbdAdmin> rbd_admin;
  std::map<std::string, std::string> rbd_clusters;  // --rbd-clusters-file
  std::unique_ptr<ublk::WorkerPool> pool;
  std::unique_ptr<VolumeBackend> backend;
  bool online_resize = true;  // the fake backend resizes anything
};

// Why the worker pool did not start, with what to look at when io_uring
// itself was refused (ENOSYS: a seccomp profile, such as a container
// runtime's default; EPERM: kernel.io_uring_disabled or a seccomp profile).
absl::Status WorkerPoolUnavailable(const absl::Status& s) {
  std::string hint;
  if (s.code() == absl::StatusCode::kUnimplemented ||
      s.code() == absl::StatusCode::kPermissionDenied) {
    hint =
        " (io_uring refused: check the container's seccomp profile, which must allow "
        "io_uring_setup/io_uring_enter/io_uring_register, and sysctl kernel.io_uring_disabled)";
  }
  return absl::FailedPreconditionError(absl::StrCat("cannot serve volumes: ", s.message(), hint));
}

absl::Status BuildFakeBackend(BackendParts* parts) {
  const std::string dev_dir = FLAGS_data_dir + "/fake-devices";
  if (::mkdir(dev_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(absl::StrCat("mkdir ", dev_dir, ": ", ublk::Errno(errno)));
  }
  LOG(WARNING) << "--backend=fake: no block devices are created; " << dev_dir
               << "/ublkbN are symlinks to the backing files";
  parts->backend = std::make_unique<FakeVolumeBackend>(dev_dir, 64);
  return absl::OkStatus();
}

absl::Status BuildUblkBackend(const ublk::FeatureOptions& feature_options,
                              prometheus::Registry* registry, BackendParts* parts) {
  parts->memory = std::make_unique<ublk::RealMemorySource>();
  parts->heap_only = std::make_unique<HeapOnlyMemorySource>(*parts->memory, parts->conservative);
  ublk::WorkerPoolOptions wopts;
  wopts.worker_count = FLAGS_workers;
  wopts.busy_poll_rounds = static_cast<unsigned>(FLAGS_busy_poll_rounds);
  wopts.pin_workers = FLAGS_pin_workers;
  wopts.memory = parts->heap_only.get();
  wopts.budget = ublk::MemoryBudgetOptions{};  // admits buffers within the cgroup's limit
  absl::StatusOr<int64_t> headroom = ParseSize(FLAGS_memory_headroom);
  if (!headroom.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--memory_headroom: ", headroom.status().message()));
  }
  wopts.budget->headroom = static_cast<uint64_t>(*headroom);
  absl::StatusOr<int64_t> limit =
      FLAGS_memory_limit.empty() ? absl::StatusOr<int64_t>(0) : ParseSize(FLAGS_memory_limit);
  if (!limit.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--memory_limit: ", limit.status().message()));
  }
  if (*limit > 0) wopts.budget->limit_override = static_cast<uint64_t>(*limit);
  if (FLAGS_fault_injection_fail_buffer_pool_mmap_seconds > 0) {
    parts->fault_memory = std::make_unique<ublk::FaultInjectingMemorySource>(*parts->heap_only);
    parts->fault_memory->FailMapUntil(
        parts->clock,
        parts->clock.Now() + absl::Seconds(FLAGS_fault_injection_fail_buffer_pool_mmap_seconds));
    LOG(WARNING) << "FAULT INJECTION: every buffer-pool mmap fails for "
                 << FLAGS_fault_injection_fail_buffer_pool_mmap_seconds << " s";
    wopts.memory = parts->fault_memory.get();
  }
  if (FLAGS_buffer_pool_slot_size <= 0) {
    return absl::InvalidArgumentError("--buffer-pool-slot-size must be positive");
  }
  wopts.buffer_slot_size = static_cast<size_t>(FLAGS_buffer_pool_slot_size);
  if (FLAGS_buffer_pool_slots < 0) {
    return absl::InvalidArgumentError("--buffer-pool-slots must not be negative");
  }
  if (FLAGS_buffer_pool_slots > 0) {
    wopts.buffer_slots_per_worker = static_cast<size_t>(FLAGS_buffer_pool_slots);
  }
  // No driver (or an unusable one), and no worker pool (io_uring refused by
  // a seccomp profile or the io_uring_disabled sysctl), do not stop the
  // plugin: an exit would only be restarted into the same refusal, a crash
  // loop. It stays up, not ready: Usable(), Probe and /readyz say why, and
  // every export call fails with it. Only a bad option is fatal.
  UblkVolumeBackendOptions bopts;
  RETURN_IF_ERROR(ublk::WorkerPool::ValidateOptions(wopts));
  absl::StatusOr<std::unique_ptr<ublk::WorkerPool>> pool =
      ublk::WorkerPool::Create(wopts, registry);
  if (pool.ok()) {
    parts->pool = std::move(*pool);
  } else {
    bopts.worker_pool_status = WorkerPoolUnavailable(pool.status());
    LOG(ERROR) << bopts.worker_pool_status << "; staying up, not ready";
  }
  bopts.queue_depth = static_cast<uint16_t>(FLAGS_queue_depth);
  bopts.clock = &parts->clock;
  bopts.registry = registry;
  bopts.rbd_connections = parts->rbd_connections.get();
  bopts.rbd_metrics = parts->rbd_metrics.get();
  ublk::RealClock* clock = &parts->clock;
  auto ublk_backend = UblkVolumeBackend::Open(
      [clock](ublk::CmdEncoding enc) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
        auto dev = ublk::RealControlDevice::Open(enc, ublk::kUblkControlPath, clock);
        if (!dev.ok()) return dev.status();
        return std::unique_ptr<ublk::ControlDevice>(std::move(*dev));
      },
      feature_options, parts->pool.get(), bopts);
  // A live ublk device can only grow with UPDATE_SIZE (Linux 6.16+); on
  // older kernels expansion is offline: the device takes the grown backing
  // file's size when it is staged again, then NodeExpandVolume grows the fs.
  const ublk::KernelFeatures* kf = ublk_backend->features();
  if (kf == nullptr && feature_options.force_copy_mode.has_value()) {
    // A forced mode the kernel cannot give (or no kernel to ask): the
    // operator asked for something this node cannot do; say so and stop.
    return absl::FailedPreconditionError(
        absl::StrCat("--copy_mode=", FLAGS_copy_mode, ": ", ublk_backend->Usable().message()));
  }
  if (kf != nullptr) ublk::RegisterKernelInfoMetric(*kf, *registry);
  parts->online_resize = kf != nullptr && (kf->features & UBLK_F_UPDATE_SIZE) != 0;
  parts->backend = std::move(ublk_backend);
  return absl::OkStatus();
}

absl::Status BuildRbd(prometheus::Registry* registry, BackendParts* parts) {
  if (!FLAGS_rbd) {
    if (FLAGS_rbd_clusters_file.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError("--rbd-clusters-file needs --rbd");
  }
  if (!FLAGS_rbd_clusters_file.empty()) {
    std::ifstream in(FLAGS_rbd_clusters_file);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--rbd-clusters-file=", FLAGS_rbd_clusters_file, ": ", ublk::Errno(errno)));
    }
    std::stringstream text;
    text << in.rdbuf();
    ASSIGN_OR_RETURN(parts->rbd_clusters,
                     ParseRbdClusters(text.str(), absl::StrCat("--rbd-clusters-file=",
                                                               FLAGS_rbd_clusters_file)));
    LOG(INFO) << "--rbd-clusters-file: " << parts->rbd_clusters.size() << " cluster(s)";
  }
  ublk::RbdConnectOptions o;
  ASSIGN_OR_RETURN(o.connect_timeout,
                   ParseDurationFlag("rbd-connect-timeout", FLAGS_rbd_connect_timeout, false));
  ASSIGN_OR_RETURN(o.op_timeout, ParseDurationFlag("rbd-op-timeout", FLAGS_rbd_op_timeout, true));
  parts->rbd_client = ublk::NewLibradosClient();
  parts->rbd_connections =
      std::make_unique<ublk::RadosConnections>(*parts->rbd_client, o, registry);
  parts->rbd_metrics = std::make_unique<ublk::RbdMetrics>(registry);
  parts->rbd_admin = NewLibRbdAdmin(parts->rbd_connections.get());
  LOG(INFO) << "--rbd: serving Ceph RBD volumes (connect timeout " << o.connect_timeout
            << ", op timeout " << o.op_timeout << ")";
  return absl::OkStatus();
}

absl::Status BuildBackend(const PluginConfig& config, prometheus::Registry* registry,
                          BackendParts* parts) {
  RETURN_IF_ERROR(BuildRbd(registry, parts));
  if (config.controller) {
    // Images only, never a device: no ublk driver, worker pool or io_uring.
    parts->backend = std::make_unique<NoExportBackend>();
    return absl::OkStatus();
  }
  if (FLAGS_backend == "fake") return BuildFakeBackend(parts);
  if (FLAGS_backend == "ublk") return BuildUblkBackend(config.feature_options, registry, parts);
  return absl::InvalidArgumentError(
      absl::StrCat("--backend=", FLAGS_backend, ": expected ublk or fake"));
}

absl::StatusOr<std::unique_ptr<Mounter>> BuildMounter() {
  if (FLAGS_mounter == "real") return std::unique_ptr<Mounter>(std::make_unique<RealMounter>());
  if (FLAGS_mounter == "fake") {
    LOG(WARNING) << "--mounter=fake: nothing is mounted or formatted";
    return std::unique_ptr<Mounter>(std::make_unique<FakeMounter>());
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--mounter=", FLAGS_mounter, ": expected real or fake"));
}

// One CSI endpoint: the driver it answers for, and its services besides
// Identity (which Serve adds). A gRPC service serves one server only, so
// each endpoint has instances of its own over the one VolumeManager.
struct ServedEndpoint {
  Endpoint endpoint;
  Driver driver = Driver::kNodeLocal;
  PluginCapabilities caps;
  std::vector<std::unique_ptr<grpc::Service>> services;
};

// The CSI services over the loaded volumes, and recovery of those volumes
// running in the background.
struct Services {
  std::unique_ptr<VolumeManager> manager;
  std::unique_ptr<RecoveryManager> recovery;
  std::vector<ServedEndpoint> endpoints;
};

// Which endpoint serves what:
//  --mode=node: --endpoint is ublk.csi.io (Controller + Node, every volume:
//    node-local ones, and RBD ones a StorageClass of this driver asks for,
//    as before the second driver); --rbd-endpoint is rbd.ublk.csi.io
//    (Node only, RBD volumes only: the controller Deployment creates them).
//  --mode=controller: --endpoint is rbd.ublk.csi.io (Controller only, RBD
//    volumes only).
void AddEndpoints(const PluginConfig& config, bool online_resize, Services* out) {
  VolumeManager* vm = out->manager.get();
  if (config.controller) {
    ServedEndpoint& ep = out->endpoints.emplace_back();
    ep.endpoint = config.endpoint;
    ep.driver = Driver::kRbd;
    // Expansion as the nodes' kernels allow it is their business
    // (NodeExpandVolume); the image itself grows online.
    ep.caps = {.controller_service = true, .online_expansion = true};
    ep.services.push_back(std::make_unique<ControllerService>(vm, Driver::kRbd));
    return;
  }
  const PluginCapabilities node_caps = {.online_expansion = online_resize,
                                        .offline_expansion = !online_resize};
  ServedEndpoint& main = out->endpoints.emplace_back();
  main.endpoint = config.endpoint;
  main.caps = node_caps;
  main.caps.controller_service = true;
  main.caps.volume_accessibility_constraints = true;
  main.services.push_back(std::make_unique<ControllerService>(vm));
  main.services.push_back(std::make_unique<NodeService>(vm));
  if (config.rbd_endpoint) {
    ServedEndpoint& rbd = out->endpoints.emplace_back();
    rbd.endpoint = *config.rbd_endpoint;
    rbd.driver = Driver::kRbd;
    rbd.caps = node_caps;
    rbd.services.push_back(std::make_unique<NodeService>(vm, Driver::kRbd));
  }
}

absl::Status BuildServices(const PluginConfig& config, RecordStore* store, BackendParts* parts,
                           Mounter* mounter, prometheus::Registry* registry, Health* health,
                           Services* out) {
  VolumeManagerOptions opts;
  opts.node_id = FLAGS_node_id;
  opts.max_volumes_override = FLAGS_max_volumes;
  opts.rbd_max_volumes_override = FLAGS_rbd_max_volumes;
  opts.default_volume_bytes = config.default_volume_bytes;
  opts.overcommit_ratio = FLAGS_overcommit_ratio;
  opts.online_expansion = parts->online_resize;
  opts.registry = registry;
  opts.rbd_admin = parts->rbd_admin.get();
  opts.rbd_cluster_monitors = parts->rbd_clusters;
  out->manager = std::make_unique<VolumeManager>(opts, store, parts->backend.get(), mounter);
  RETURN_IF_ERROR(out->manager->Load());
  Startup().Mark("records loaded");
  AddEndpoints(config, parts->online_resize, out);
  health->SetBackend(parts->backend->Usable());
  if (!health->Backend().ok()) LOG(WARNING) << "backend unusable: " << health->Backend();
  if (registry != nullptr) {
    prometheus::BuildGauge()
        .Name("ublk_csi_backend_usable")
        .Help(
            "1 when the volume backend can serve exports; 0 when it cannot (no ublk_drv, "
            "io_uring refused, ...): the plugin stays up and not ready, /readyz and Probe "
            "say why")
        .Register(*registry)
        .Add({})
        .Set(health->Backend().ok() ? 1 : 0);
  }
  if (health->Backend().ok() && !config.controller) {
    // In the background: the servers start now, answer Probe/readyz "not
    // ready" and NodeStage of a volume not yet recovered UNAVAILABLE.
    RecoveryOptions ro;
    ro.concurrency = parts->conservative ? 1 : FLAGS_recovery_concurrency;
    ro.clock = &parts->clock;
    // Fewer volumes at a time while the memory budget is tight.
    if (parts->pool != nullptr) ro.budget = parts->pool->memory_budget();
    HeapOnlyMemorySource* ho = parts->heap_only.get();
    ro.on_done = [guard = parts->guard, ho](int, int) {
      if (guard != nullptr) {
        if (absl::Status s = guard->Complete(); !s.ok()) LOG(WARNING) << s;
      }
      if (ho != nullptr) ho->SetHeapOnly(false);
    };
    out->recovery = std::make_unique<RecoveryManager>(out->manager.get(), health, registry, ro);
    RecoveryManager* rm = out->recovery.get();
    health->SetServingCheck([rm] { return rm->ServingStatus(); });
    out->recovery->Start();
    Startup().Mark("recovery started");
  } else {
    health->SetRecoveryDone();
  }
  return absl::OkStatus();
}

// Serves CSI and HTTP until SIGTERM/SIGINT (blocked in `stop_signals`),
// then shuts down in order.
int Serve(const PluginConfig& config, const sigset_t& stop_signals,
          std::shared_ptr<prometheus::Registry> registry, Health* health, Services* services) {
  ublk::RealClock clock;
  // Live when every endpoint completes a call (one process serves them all).
  std::vector<Endpoint> endpoints;
  for (const ServedEndpoint& ep : services->endpoints) endpoints.push_back(ep.endpoint);
  LivenessCheck liveness(
      [endpoints](absl::Duration timeout) {
        const absl::Time deadline = absl::Now() + timeout;
        for (const Endpoint& ep : endpoints) {
          RETURN_IF_ERROR(
              DialGetPluginInfo(ep, std::max(deadline - absl::Now(), absl::Milliseconds(1))));
        }
        return absl::OkStatus();
      },
      &clock, config.liveness_timeout, config.liveness_cache, registry.get());
  auto live = [&liveness] { return liveness.Check(); };
  std::vector<std::unique_ptr<IdentityService>> identities;
  std::vector<std::unique_ptr<PluginServer>> servers;
  for (ServedEndpoint& ep : services->endpoints) {
    identities.push_back(std::make_unique<IdentityService>(ep.caps, health, live, ep.driver));
    std::vector<grpc::Service*> grpc_services = {identities.back().get()};
    for (const auto& svc : ep.services) grpc_services.push_back(svc.get());
    PluginServerOptions grpc_options = config.grpc;
    // The listener's metrics are the first endpoint's (one set per registry).
    grpc_options.registry = servers.empty() ? registry.get() : nullptr;
    servers.push_back(std::make_unique<PluginServer>(ep.endpoint, grpc_services, grpc_options));
    if (absl::Status s = servers.back()->Start(); !s.ok()) return Fail(s);
    LOG(INFO) << ep.endpoint.GrpcTarget() << " serves driver " << DriverName(ep.driver);
  }
  Startup().Mark("CSI server");

  std::unique_ptr<HttpServer> http;
  if (!FLAGS_metrics_address.empty()) {
    // ublk_csi_exports is counted from the volumes' state at each scrape, so
    // volumes staged or deleted after recovery show too.
    RecoveryManager* rm = services->recovery.get();
    VolumeManager* vm = services->manager.get();
    auto started = HttpServer::Start(
        FLAGS_metrics_address, registry, health, live,
        [rm, vm] {
          if (rm != nullptr) rm->RefreshExportGauge();
          if (vm != nullptr) vm->RefreshPoolMetrics();
        },
        config.http);
    if (!started.ok()) return Fail(started.status());
    http = std::move(*started);
    Startup().Mark("HTTP server");
  }
  LOG(INFO) << "start-up: " << Startup().Summary();
  if (config.controller) {
    LOG(INFO) << "ublk-csi " << kVersion << " serving as the controller of " << kRbdPluginName;
  } else {
    LOG(INFO) << "ublk-csi " << kVersion << " serving node " << FLAGS_node_id << " (backend "
              << FLAGS_backend << ", mounter " << FLAGS_mounter << ")";
  }

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LOG(INFO) << "received " << strsignal(sig) << ", shutting down";
  // Stop taking calls, then stop recovery (the volumes in progress finish;
  // the rest stay as the kernel has them: QUIESCED devices stay
  // recoverable), then the backend detaches every export as it is destroyed.
  for (auto& server : servers) server->Shutdown();
  if (services->recovery != nullptr) services->recovery->Stop();
  http.reset();
  LOG(INFO) << "shutdown complete";
  return 0;
}

int Run() {
  absl::StatusOr<PluginConfig> config = ParseFlags();
  if (!config.ok()) return Fail(config.status());
  RaiseOpenFileLimit();
  Startup().Mark("flags");

  // SIGTERM/SIGINT are taken synchronously by this thread with sigwait; block
  // them before any other thread starts so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildGauge()
      .Name("ublk_csi_build_info")
      .Help("Build information of the running plugin; value is always 1")
      .Register(*registry)
      .Add({{"version", kVersion}})
      .Set(1);

  Health health;
  health.SetRecoveryPending("loading volume records");

  // Every file in the data dir is written through this one.
  RealFileSystem file_system;
  absl::StatusOr<std::unique_ptr<RecordStore>> store =
      RecordStore::Open(FLAGS_data_dir, registry.get(), &file_system);
  if (!store.ok()) return Fail(store.status());
  Startup().Mark("records dir");
  BackendParts backend;
  // The controller recovers nothing: no guard.
  if (!config->controller) {
    if (auto g = CrashLoopGuard::Begin(FLAGS_data_dir, CrashLoopGuard::kDefaultThreshold,
                                       registry.get(), &file_system);
        g.ok()) {
      backend.guard = std::move(*g);
      backend.conservative = backend.guard->conservative();
    } else {
      LOG(WARNING) << g.status() << "; recovering without the crash-loop guard";
    }
    Startup().Mark("crash-loop guard");
  }
  if (absl::Status s = BuildBackend(*config, registry.get(), &backend); !s.ok()) return Fail(s);
  Startup().Mark("backend");
  absl::StatusOr<std::unique_ptr<Mounter>> mounter = BuildMounter();
  if (!mounter.ok()) return Fail(mounter.status());
  Services services;
  if (absl::Status s = BuildServices(*config, store->get(), &backend, mounter->get(),
                                     registry.get(), &health, &services);
      !s.ok()) {
    return Fail(s);
  }
  return Serve(*config, stop_signals, registry, &health, &services);
}

}  // namespace
}  // namespace ublk_csi

int main(int argc, char** argv) {
  if (absl::StatusOr<absl::Duration> d = ublk_csi::TimeSinceProcessStart(); d.ok()) {
    ublk_csi::Startup().SetBeforeMain(*d);
  }
  gflags::SetVersionString(ublk_csi::kVersion);
  gflags::SetUsageMessage(
      "ublk-csi --node-id=NODE [--endpoint=unix:///csi/csi.sock] [--rbd "
      "--rbd-endpoint=unix:///csi/rbd.sock] ...\n"
      "ublk-csi --mode=controller --rbd [--endpoint=unix:///csi/csi.sock] ...");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  if (argc > 1) {
    std::fprintf(stderr, "ublk-csi: unexpected argument '%s'\n", argv[1]);
    return 2;
  }
  return ublk_csi::Run();
}
