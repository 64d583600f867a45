// ublk-csi: the CSI plugin binary. Wires the real implementations together
// (nothing else constructs globals), serves until SIGTERM/SIGINT.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "csi/controller_service.h"
#include "csi/endpoint.h"
#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/node_service.h"
#include "csi/record_store.h"
#include "csi/ublk_volume_backend.h"
#include "csi/volume_manager.h"
#include "csi/health.h"
#include "csi/http_server.h"
#include "csi/identity_service.h"
#include "csi/mmap_fault_memory.h"
#include "csi/plugin_server.h"
#include "csi/recovery_manager.h"
#include "csi/version.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/errno.h"
#include "ublk/features.h"
#include "ublk/kernel_real.h"
#include "ublk/uapi.h"
#include "ublk/clock.h"
#include "ublk/memory.h"
#include "ublk/worker_pool.h"

DEFINE_string(endpoint, "unix:///csi/csi.sock",
              "CSI endpoint: unix:///absolute/path or tcp://host:port");
DEFINE_string(node_id, "", "this node's name (Kubernetes node name); required");
DEFINE_string(data_dir, "/var/lib/ublk-csi",
              "directory holding volume backing files and records");
DEFINE_string(metrics_address, "0.0.0.0:9810",
              "host:port for /metrics, /healthz and /readyz; empty disables");
DEFINE_string(log_level, "info", "error | warning | info | debug | trace");
DEFINE_string(backend, "ublk",
              "volume backend: ublk (real devices) | fake (no devices: a symlink stands in "
              "for /dev/ublkbN; control-plane demos and tests only)");
DEFINE_string(mounter, "real",
              "real (mount(2), mkfs, blkid) | fake (in-memory mount table; demos and tests only)");
DEFINE_int32(max_volumes, 0,
             "max_volumes_per_node reported to Kubernetes; 0 = the backend's limit (ublks_max)");
DEFINE_string(default_volume_size, "1Gi", "size of a volume whose CreateVolume names none");
DEFINE_int32(workers, 0, "ublk worker threads shared by all exports; 0 = one per CPU");
DEFINE_int64(buffer_pool_slots, 0,
             "bounce-buffer slots per worker; 0 = derived from the node-wide 64 MiB budget");
DEFINE_int64(buffer_pool_slot_size, 128 * 1024, "bytes per bounce-buffer slot (max I/O size)");
DEFINE_int32(fault_injection_fail_buffer_pool_mmap_seconds, 0,
             "TESTS ONLY: every buffer-pool mmap fails with ENOMEM for this many seconds after "
             "start (the degrade-to-heap path under memory pressure); 0 = off");
DEFINE_int32(recovery_concurrency, 8,
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

int Run() {
  if (absl::Status s = ApplyLogLevel(FLAGS_log_level); !s.ok()) return Fail(s);
  if (FLAGS_node_id.empty()) return Fail(absl::InvalidArgumentError("--node-id is required"));
  absl::StatusOr<Endpoint> endpoint = ParseEndpoint(FLAGS_endpoint);
  if (!endpoint.ok()) return Fail(endpoint.status());
  if (absl::Status s = CheckDataDir(FLAGS_data_dir); !s.ok()) return Fail(s);
  ublk::FeatureOptions feature_options;
  {
    absl::StatusOr<ublk::KernelEmulation> emulation =
        ublk::ParseKernelEmulation(FLAGS_emulate_kernel);
    if (!emulation.ok()) return Fail(emulation.status());
    feature_options.emulate_kernel = *emulation;
    absl::StatusOr<std::optional<ublk::CopyMode>> mode = ublk::ParseCopyModeFlag(FLAGS_copy_mode);
    if (!mode.ok()) return Fail(mode.status());
    feature_options.force_copy_mode = *mode;
  }

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

  absl::StatusOr<std::unique_ptr<RecordStore>> store = RecordStore::Open(FLAGS_data_dir, registry.get());
  if (!store.ok()) return Fail(store.status());

  // Declared in this order so they are destroyed backend first (it detaches
  // every export: USER_RECOVERY devices stay quiesced for the next process),
  // then the worker pool.
  std::unique_ptr<ublk::RealMemorySource> memory;
  ublk::RealClock clock;
  std::unique_ptr<MmapFaultMemorySource> fault_memory;
  std::unique_ptr<ublk::WorkerPool> pool;
  std::unique_ptr<VolumeBackend> backend;
  bool online_resize = true;  // the fake backend resizes anything
  if (FLAGS_backend == "fake") {
    const std::string dev_dir = FLAGS_data_dir + "/fake-devices";
    if (::mkdir(dev_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Fail(absl::FailedPreconditionError(absl::StrCat("mkdir ", dev_dir, ": ", ublk::Errno(errno))));
    }
    LOG(WARNING) << "--backend=fake: no block devices are created; " << dev_dir
                 << "/ublkbN are symlinks to the backing files";
    backend = std::make_unique<FakeVolumeBackend>(dev_dir, 64);
  } else if (FLAGS_backend == "ublk") {
    memory = std::make_unique<ublk::RealMemorySource>();
    ublk::WorkerPoolOptions wopts;
    wopts.worker_count = FLAGS_workers;
    wopts.memory = memory.get();
    if (FLAGS_fault_injection_fail_buffer_pool_mmap_seconds > 0) {
      fault_memory = std::make_unique<MmapFaultMemorySource>(
          *memory, clock,
          absl::Now() + absl::Seconds(FLAGS_fault_injection_fail_buffer_pool_mmap_seconds));
      LOG(WARNING) << "FAULT INJECTION: every buffer-pool mmap fails for "
                   << FLAGS_fault_injection_fail_buffer_pool_mmap_seconds << " s";
      wopts.memory = fault_memory.get();
    }
    if (FLAGS_buffer_pool_slot_size <= 0) {
      return Fail(absl::InvalidArgumentError("--buffer-pool-slot-size must be positive"));
    }
    wopts.buffer_slot_size = static_cast<size_t>(FLAGS_buffer_pool_slot_size);
    if (FLAGS_buffer_pool_slots < 0) {
      return Fail(absl::InvalidArgumentError("--buffer-pool-slots must not be negative"));
    }
    if (FLAGS_buffer_pool_slots > 0) {
      wopts.buffer_slots_per_worker = static_cast<size_t>(FLAGS_buffer_pool_slots);
    }
    absl::StatusOr<std::unique_ptr<ublk::WorkerPool>> created =
        ublk::WorkerPool::Create(wopts, registry.get());
    if (!created.ok()) return Fail(created.status());
    pool = std::move(*created);
    // No driver (or an unusable one) does not stop the plugin: Usable(),
    // Probe and /readyz say why, and every export call fails with it.
    auto ublk_backend = UblkVolumeBackend::Open(
        [](ublk::CmdEncoding enc) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
          auto dev = ublk::RealControlDevice::Open(enc);
          if (!dev.ok()) return dev.status();
          return std::unique_ptr<ublk::ControlDevice>(std::move(*dev));
        },
        feature_options, pool.get());
    // A live ublk device can only grow with UPDATE_SIZE (Linux 6.14+); on
    // older kernels expansion is offline: the device takes the grown backing
    // file's size when it is staged again, then NodeExpandVolume grows the fs.
    const ublk::KernelFeatures* kf = ublk_backend->features();
    if (kf == nullptr && feature_options.force_copy_mode.has_value()) {
      // A forced mode the kernel cannot give (or no kernel to ask): the
      // operator asked for something this node cannot do; say so and stop.
      return Fail(absl::FailedPreconditionError(
          absl::StrCat("--copy_mode=", FLAGS_copy_mode, ": ", ublk_backend->Usable().message())));
    }
    if (kf != nullptr) {
      ublk::RegisterKernelInfoMetric(*kf, *registry);
    }
    online_resize = kf != nullptr && (kf->features & UBLK_F_UPDATE_SIZE) != 0;
    backend = std::move(ublk_backend);
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--backend=", FLAGS_backend, ": expected ublk or fake")));
  }

  std::unique_ptr<Mounter> mounter;
  if (FLAGS_mounter == "real") {
    mounter = std::make_unique<RealMounter>();
  } else if (FLAGS_mounter == "fake") {
    LOG(WARNING) << "--mounter=fake: nothing is mounted or formatted";
    mounter = std::make_unique<FakeMounter>();
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--mounter=", FLAGS_mounter, ": expected real or fake")));
  }

  absl::StatusOr<int64_t> default_size = ParseSize(FLAGS_default_volume_size);
  if (!default_size.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--default-volume-size: ", default_size.status().message())));
  }
  if (FLAGS_recovery_concurrency < 1) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--recovery-concurrency=", FLAGS_recovery_concurrency, ": must be at least 1")));
  }
  std::unique_ptr<VolumeManager> manager;
  std::unique_ptr<RecoveryManager> recovery;
  std::unique_ptr<ControllerService> controller;
  std::unique_ptr<NodeService> node;
  std::vector<grpc::Service*> services;
  PluginCapabilities caps;
  {
    VolumeManagerOptions opts;
    opts.node_id = FLAGS_node_id;
    opts.max_volumes_override = FLAGS_max_volumes;
    opts.default_volume_bytes = *default_size;
    manager = std::make_unique<VolumeManager>(opts, store->get(), backend.get(), mounter.get());
    if (absl::Status s = manager->Load(); !s.ok()) return Fail(s);
    controller = std::make_unique<ControllerService>(manager.get());
    node = std::make_unique<NodeService>(manager.get());
    services = {controller.get(), node.get()};
    caps = {.controller_service = true, .volume_accessibility_constraints = true,
            .online_expansion = online_resize, .offline_expansion = !online_resize};
    health.SetBackend(backend->Usable());
    if (!health.Backend().ok()) LOG(WARNING) << "backend unusable: " << health.Backend();
  }
  if (manager != nullptr && health.Backend().ok()) {
    // In the background: the servers start now, answer Probe/readyz "not
    // ready" and NodeStage of a volume not yet recovered UNAVAILABLE.
    RecoveryOptions ro;
    ro.concurrency = FLAGS_recovery_concurrency;
    recovery = std::make_unique<RecoveryManager>(manager.get(), &health, registry.get(), ro);
    recovery->Start();
  } else {
    health.SetRecoveryDone();
  }

  IdentityService identity(caps, &health);
  services.insert(services.begin(), &identity);
  PluginServer server(*endpoint, services);
  if (absl::Status s = server.Start(); !s.ok()) return Fail(s);

  std::unique_ptr<HttpServer> http;
  if (!FLAGS_metrics_address.empty()) {
    // ublk_csi_exports is counted from the volumes' state at each scrape, so
    // volumes staged or deleted after recovery show too.
    RecoveryManager* rm = recovery.get();
    auto started = HttpServer::Start(
        FLAGS_metrics_address, registry, &health, [] { return absl::OkStatus(); },
        [rm] {
          if (rm != nullptr) rm->RefreshExportGauge();
        });
    if (!started.ok()) return Fail(started.status());
    http = std::move(*started);
  }
  LOG(INFO) << "ublk-csi " << kVersion << " serving node " << FLAGS_node_id << " (backend "
            << FLAGS_backend << ", mounter " << FLAGS_mounter << ")";

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LOG(INFO) << "received " << strsignal(sig) << ", shutting down";
  // Stop taking calls, then stop recovery (the volumes in progress finish;
  // the rest stay as the kernel has them: QUIESCED devices stay
  // recoverable), then the backend detaches every export as it is destroyed.
  server.Shutdown();
  if (recovery != nullptr) recovery->Stop();
  http.reset();
  LOG(INFO) << "shutdown complete";
  return 0;
}

}  // namespace
}  // namespace ublk_csi

int main(int argc, char** argv) {
  gflags::SetVersionString(ublk_csi::kVersion);
  gflags::SetUsageMessage("ublk-csi --node-id=NODE [--endpoint=unix:///csi/csi.sock] ...");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  if (argc > 1) {
    std::fprintf(stderr, "ublk-csi: unexpected argument '%s'\n", argv[1]);
    return 2;
  }
  return ublk_csi::Run();
}
