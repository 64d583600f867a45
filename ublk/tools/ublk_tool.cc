// ublk-tool: drives the engine against the real kernel; the e2e harness runs
// it in a qemu guest. Subcommands:
//   ublk-tool features [--encoding=..] [--copy_mode=..] [--emulate_kernel=6.1]
//   ublk-tool serve --target=file|null --backing=PATH --size=BYTES [--create]
//       [--dev_id=N] [--copy_mode=auto|zero_copy|user_copy|get_data]
//       [--encoding=auto|ioctl|legacy] [--queues=1] [--depth=64] [--recovery]
//       [--ready_file=PATH] [--inject_corruption]
//   ublk-tool serve --target=rbd --rbd_mon_host=H --rbd_user=admin
//       --rbd_key_file=PATH --rbd_pool=rbd --rbd_image=NAME [--rbd_op_timeout_ms=N]
//       (the cephx key is read from a file, never taken on the command line)
//   ublk-tool recover --dev_id=N --target=file|null|rbd --backing=PATH [...]
//   ublk-tool del --dev_id=N
//   ublk-tool info --dev_id=N
// Output is key=value lines (features, info) and one READY line (serve,
// recover). Exit 0 on success, 1 on error, 2 on bad usage.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "ublk/export.h"
#include "ublk/features.h"
#include "ublk/file_target.h"
#include "ublk/kernel_real.h"
#include "ublk/memory.h"
#include "ublk/null_target.h"
#include "ublk/rbd_cluster.h"
#include "ublk/rbd_target.h"
#include "ublk/status_macros.h"
#include "ublk/worker.h"

DEFINE_string(target, "file", "file | null | rbd");
DEFINE_string(rbd_mon_host, "", "rbd target: the cluster's monitors (ceph.conf mon_host)");
DEFINE_string(rbd_user, "admin", "rbd target: cephx user");
DEFINE_string(rbd_key_file, "", "rbd target: file holding the cephx key (base64)");
DEFINE_string(rbd_pool, "rbd", "rbd target: pool");
DEFINE_string(rbd_image, "", "rbd target: image");
DEFINE_int64(rbd_op_timeout_ms, 30000, "rbd target: op timeout (rados_osd_op_timeout); 0: none");
DEFINE_string(null_reads, "zeros",
              "null target: zeros | untouched (null_blk's way: READs complete without data in "
              "user copy and zero copy, user-copy WRITEs without copying theirs; for benchmarks)");
DEFINE_bool(user_copy_on_ring, false,
            "user copy: request data to and from /dev/ublkcN on the worker's io_uring instead of "
            "a synchronous pread/pwrite per request (an A/B: slower, every copy goes to io-wq)");
DEFINE_uint32(busy_poll_rounds, ublk::WorkerOptions{}.busy_poll_rounds,
              "after a wait that brought completions, this many non-blocking reaps before a "
              "worker sleeps again (0: sleep at once)");
DEFINE_bool(poll_while_on_kernel_threads, false,
            "busy-poll even while io-wq threads serve target I/O (a file on tmpfs in zero copy; "
            "WorkerOptions::poll_while_on_kernel_threads)");
DEFINE_bool(pin_workers, false,
            "pin worker i to the i-th CPU this process may run on (WorkerOptions::cpu)");
DEFINE_string(backing, "", "backing file of the file target");
DEFINE_uint64(size, 0, "volume size in bytes (0: the backing file's size)");
DEFINE_bool(create, false, "create (or grow) the backing file, sparse");
DEFINE_int64(dev_id, -1, "ublk device id (-1: any for serve; required otherwise)");
DEFINE_string(copy_mode, "auto",
              "auto | zero_copy | user_copy | get_data (auto: zero copy where the kernel has "
              "UBLK_F_AUTO_BUF_REG, else user copy where it has UBLK_F_USER_COPY, else get-data)");
DEFINE_string(encoding, "auto", "auto | ioctl | legacy");
DEFINE_string(emulate_kernel, "none",
              "none | 6.1: behave as on Linux 6.1 (no GET_FEATURES, legacy commands, get-data) "
              "on a newer kernel; all subcommands");
DEFINE_int32(queues, 1, "number of ublk queues");
DEFINE_int32(depth, 64, "queue depth");
DEFINE_bool(recovery, false, "create with UBLK_F_USER_RECOVERY (+REISSUE where offered)");
DEFINE_string(ready_file, "", "write the block device path here once it is usable");
DEFINE_bool(inject_corruption, false,
            "test only: flip one byte of the first READ that returns data after READY");

namespace ublk {
namespace {

// Flips one byte of the first READ that returns data, once armed.
class CorruptingTarget final : public Target {
 public:
  explicit CorruptingTarget(std::shared_ptr<Target> inner) : inner_(std::move(inner)) {}
  void Arm() { armed_.store(true); }
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  bool supports_discard() const override { return inner_->supports_discard(); }
  const char* name() const override { return inner_->name(); }
  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override {
    auto r = inner_->StartIo(ring, io, user_data);
    if (r.has_value()) Maybe(io, *r);
    return r;
  }
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t res) override {
    auto r = inner_->FinishIo(io, res);
    if (r.has_value()) Maybe(io, *r);
    return r;
  }

 private:
  void Maybe(const TargetIo& io, int32_t res) {
    // Zero copy: the data is in the kernel's pages, not reachable from here.
    if (io.op != UBLK_IO_OP_READ || res <= 0 || io.buf == nullptr || io.buf_index >= 0 ||
        !armed_.load()) {
      return;
    }
    if (armed_.exchange(false)) {
      static_cast<unsigned char*>(io.buf)[0] ^= 0x5a;
      LOG(WARNING) << "inject_corruption: flipped byte at offset " << io.offset;
    }
  }
  std::shared_ptr<Target> inner_;
  std::atomic<bool> armed_{false};
};

absl::StatusOr<FeatureOptions> ParseModes() {
  FeatureOptions o;
  ASSIGN_OR_RETURN(o.emulate_kernel, ParseKernelEmulation(FLAGS_emulate_kernel));
  if (FLAGS_encoding == "ioctl") {
    o.force_encoding = CmdEncoding::kIoctl;
  } else if (FLAGS_encoding == "legacy") {
    o.force_encoding = CmdEncoding::kLegacy;
  } else if (FLAGS_encoding != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("--encoding=", FLAGS_encoding, ": expected auto, ioctl or legacy"));
  }
  ASSIGN_OR_RETURN(o.force_copy_mode, ParseCopyModeFlag(FLAGS_copy_mode));
  return o;
}

absl::StatusOr<KernelFeatures> Detect() {
  ASSIGN_OR_RETURN(FeatureOptions o, ParseModes());
  return DetectFeatures(
      [](CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ControlDevice>> {
        ASSIGN_OR_RETURN(auto dev, RealControlDevice::Open(e));
        return std::unique_ptr<ControlDevice>(std::move(dev));
      },
      o);
}

absl::StatusOr<uint32_t> RequiredDevId() {
  if (FLAGS_dev_id < 0 || FLAGS_dev_id >= INT32_MAX) {
    return absl::InvalidArgumentError("--dev_id=N is required");
  }
  return static_cast<uint32_t>(FLAGS_dev_id);
}

absl::Status Features() {
  ASSIGN_OR_RETURN(KernelFeatures kf, Detect());
  auto max = ReadUblksMax();
  std::printf(
      "kernel_release=%s\nemulate_kernel=%s\nfeatures=%s\nhas_get_features=%d\nencoding=%s\n"
      "copy_mode=%s\n"
      "user_copy=%d\nneed_get_data=%d\nuser_recovery=%d\nuser_recovery_reissue=%d\n"
      "update_size=%d\nzero_copy=%d\nauto_buf_reg=%d\nublks_max=%s\n",
      kf.kernel_release.c_str(), std::string(KernelEmulationName(kf.emulation)).c_str(),
      FeaturesHex(kf.features).c_str(), kf.has_get_features ? 1 : 0,
      std::string(CmdEncodingName(kf.encoding)).c_str(),
      std::string(CopyModeName(kf.copy_mode)).c_str(), (kf.features & UBLK_F_USER_COPY) ? 1 : 0,
      (kf.features & UBLK_F_NEED_GET_DATA) ? 1 : 0, kf.user_recovery ? 1 : 0,
      kf.user_recovery_reissue ? 1 : 0, kf.update_size ? 1 : 0,
      (kf.features & UBLK_F_SUPPORT_ZERO_COPY) ? 1 : 0, kf.auto_buf_reg ? 1 : 0,
      max.ok() ? absl::StrCat(*max).c_str() : "unknown");
  return absl::OkStatus();
}

absl::Status Info() {
  ASSIGN_OR_RETURN(uint32_t id, RequiredDevId());
  ASSIGN_OR_RETURN(KernelFeatures kf, Detect());
  ASSIGN_OR_RETURN(auto control, RealControlDevice::Open(kf.encoding));
  ASSIGN_OR_RETURN(DeviceInfo info, control->GetDeviceInfo(id));
  std::printf(
      "dev_id=%u\nstate=%s\nnr_hw_queues=%u\nqueue_depth=%u\nmax_io_buf_bytes=%u\nflags=%s\n"
      "ublksrv_pid=%d\nublksrv_flags=0x%llx\n",
      info.dev_id, std::string(DeviceStateName(info.state)).c_str(), info.nr_hw_queues,
      info.queue_depth, info.max_io_buf_bytes, FeaturesHex(info.flags).c_str(), info.ublksrv_pid,
      static_cast<unsigned long long>(info.ublksrv_flags));
  auto params = control->GetParams(id);
  if (params.ok()) {
    std::printf("size=%llu\nlogical_block_size=%u\n",
                static_cast<unsigned long long>(params->basic.dev_sectors << 9),
                1u << params->basic.logical_bs_shift);
  }
  return absl::OkStatus();
}

absl::Status Del() {
  ASSIGN_OR_RETURN(uint32_t id, RequiredDevId());
  ASSIGN_OR_RETURN(KernelFeatures kf, Detect());
  ASSIGN_OR_RETURN(auto control, RealControlDevice::Open(kf.encoding));
  RETURN_IF_ERROR(control->DeleteDevice(id));
  std::printf("deleted dev_id=%u\n", id);
  return absl::OkStatus();
}

// The RBD target's connection; lives as long as Serve().
struct RbdState {
  std::unique_ptr<RbdClient> client;
  std::unique_ptr<RadosConnections> connections;
  std::unique_ptr<RbdMetrics> metrics;
};

absl::StatusOr<std::shared_ptr<Target>> MakeRbdTarget(uint64_t size, RbdState& rbd) {
  if (FLAGS_rbd_key_file.empty()) return absl::InvalidArgumentError("--rbd_key_file is required");
  std::ifstream in(FLAGS_rbd_key_file);
  std::string key;
  if (!(in >> key)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rbd_key_file=", FLAGS_rbd_key_file, ": cannot read a key from it"));
  }
  RbdConnectOptions co;
  co.op_timeout = absl::Milliseconds(FLAGS_rbd_op_timeout_ms);
  rbd.client = NewLibradosClient();
  rbd.connections = std::make_unique<RadosConnections>(*rbd.client, co);
  rbd.metrics = std::make_unique<RbdMetrics>(nullptr);
  ASSIGN_OR_RETURN(auto connection,
                   rbd.connections->Get({FLAGS_rbd_mon_host, FLAGS_rbd_user, key}));
  RbdTargetOptions o;
  o.pool = FLAGS_rbd_pool;
  o.image = FLAGS_rbd_image;
  o.size_bytes = size;
  o.metrics = rbd.metrics.get();
  ASSIGN_OR_RETURN(auto t, RbdTarget::Open(std::move(connection), o));
  return std::shared_ptr<Target>(std::move(t));
}

absl::StatusOr<std::shared_ptr<Target>> MakeTarget(uint64_t size, bool create, RbdState& rbd) {
  if (FLAGS_target == "rbd") return MakeRbdTarget(size, rbd);
  if (FLAGS_target == "null") {
    if (size == 0) return absl::InvalidArgumentError("--size is required for the null target");
    if (FLAGS_null_reads != "zeros" && FLAGS_null_reads != "untouched") {
      return absl::InvalidArgumentError(
          absl::StrCat("--null_reads=", FLAGS_null_reads, ": expected zeros or untouched"));
    }
    return std::shared_ptr<Target>(std::make_shared<NullTarget>(
        size,
        FLAGS_null_reads == "zeros" ? NullTarget::Reads::kZeros : NullTarget::Reads::kUntouched));
  }
  if (FLAGS_target != "file") {
    return absl::InvalidArgumentError(
        absl::StrCat("--target=", FLAGS_target, ": expected file, null or rbd"));
  }
  if (FLAGS_backing.empty()) return absl::InvalidArgumentError("--backing=PATH is required");
  if (size == 0) {
    struct stat st {};
    if (stat(FLAGS_backing.c_str(), &st) != 0) {
      return absl::NotFoundError(
          absl::StrCat("backing file ", FLAGS_backing, " missing and no --size given"));
    }
    size = static_cast<uint64_t>(st.st_size);
  }
  ASSIGN_OR_RETURN(auto t, FileTarget::Open(FileTargetOptions{FLAGS_backing, size, create, true}));
  LOG(INFO) << "file target " << FLAGS_backing << ": " << (t->direct() ? "O_DIRECT" : "buffered");
  return std::shared_ptr<Target>(std::move(t));
}

absl::Status WaitForBlockDevice(const std::string& path) {
  for (int i = 0; i < 1000; ++i) {
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) return absl::OkStatus();
    usleep(10000);
  }
  return absl::DeadlineExceededError(absl::StrCat(path, " did not appear within 10 s"));
}

absl::Status WriteReadyFile(const std::string& dev_path) {
  if (FLAGS_ready_file.empty()) return absl::OkStatus();
  std::string tmp = FLAGS_ready_file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << dev_path << "\n";
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (rename(tmp.c_str(), FLAGS_ready_file.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", FLAGS_ready_file));
  }
  return absl::OkStatus();
}

// serve and recover: both end in serving until SIGTERM/SIGINT.
absl::Status Serve(bool recover) {
  // Signals are taken by sigwait() below; block them before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  ASSIGN_OR_RETURN(KernelFeatures kf, Detect());
  LogKernelFeatures(kf);
  ASSIGN_OR_RETURN(auto control, RealControlDevice::Open(kf.encoding));

  uint64_t size = FLAGS_size;
  uint32_t rec_id = 0;
  if (recover) {
    ASSIGN_OR_RETURN(rec_id, RequiredDevId());
    // After the old server is killed the kernel quiesces the device only once
    // its char device is released: give that a moment.
    for (int i = 0; i < 100; ++i) {
      auto info = control->GetDeviceInfo(rec_id);
      if (!info.ok() || info->state == UBLK_S_DEV_QUIESCED) break;
      usleep(100000);
    }
    ASSIGN_OR_RETURN(ublk_params p, control->GetParams(rec_id));
    size = p.basic.dev_sectors << 9;
  }
  // Recovery keeps the device's own copy mode; a new device gets the detected one.
  CopyMode mode = kf.copy_mode;
  if (recover) {
    ASSIGN_OR_RETURN(auto info, control->GetDeviceInfo(rec_id));
    mode = CopyModeOfDevice(info.flags);
  }
  if (FLAGS_inject_corruption && mode == CopyMode::kZeroCopy) {
    // Zero copy never puts read data in this process's memory: the flip
    // could not happen, and a test relying on it would pass for no reason.
    return absl::FailedPreconditionError(
        "--inject_corruption needs read data in the server's memory, which zero_copy never "
        "gives it; pass --copy_mode=user_copy or --copy_mode=get_data");
  }
  if (FLAGS_queues < 1 || FLAGS_queues > 64 || FLAGS_depth < 1 || FLAGS_depth > 4096) {
    return absl::InvalidArgumentError("--queues must be 1..64 and --depth 1..4096");
  }
  RbdState rbd;
  ASSIGN_OR_RETURN(std::shared_ptr<Target> inner, MakeTarget(size, FLAGS_create && !recover, rbd));
  auto corrupting = FLAGS_inject_corruption ? std::make_shared<CorruptingTarget>(inner) : nullptr;
  std::shared_ptr<Target> target = corrupting ? std::shared_ptr<Target>(corrupting) : inner;

  RealMemorySource memory;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<Worker*> worker_ptrs;
  const int nworkers =
      std::max(1, std::min<int>(FLAGS_queues, std::thread::hardware_concurrency()));
  const std::vector<int> cpus = FLAGS_pin_workers ? AllowedCpus() : std::vector<int>{};
  for (int i = 0; i < nworkers; ++i) {
    WorkerOptions wo;
    wo.worker_id = i;
    wo.cpu = RoundRobinCpu(cpus, i);
    wo.memory = &memory;
    wo.user_copy_on_ring = FLAGS_user_copy_on_ring;
    wo.busy_poll_rounds = FLAGS_busy_poll_rounds;
    wo.poll_while_on_kernel_threads = FLAGS_poll_while_on_kernel_threads;
    ASSIGN_OR_RETURN(auto w, Worker::Create(wo));
    worker_ptrs.push_back(w.get());
    workers.push_back(std::move(w));
  }

  std::unique_ptr<Export> exp;
  if (recover) {
    ASSIGN_OR_RETURN(exp, Export::Recover(*control, worker_ptrs, target, rec_id));
  } else {
    ExportOptions o;
    o.dev_id = FLAGS_dev_id < 0 ? kAnyDevId : static_cast<uint32_t>(FLAGS_dev_id);
    o.size_bytes = target->size_bytes();
    o.nr_queues = static_cast<uint16_t>(FLAGS_queues);
    o.queue_depth = static_cast<uint16_t>(FLAGS_depth);
    // A target that needs user memory (rbd) gets a copy mode instead of zero copy.
    o.copy_mode = CopyModeFor(kf.copy_mode, kf.features, *target);
    o.user_recovery = FLAGS_recovery;
    o.user_recovery_reissue = FLAGS_recovery && kf.user_recovery_reissue;
    o.max_io_bytes = static_cast<uint32_t>(BufferPoolOptions::kDefaultSlotSize);
    ASSIGN_OR_RETURN(exp, Export::Create(*control, worker_ptrs, target, o));
    absl::Status s = exp->Start();
    if (!s.ok()) {
      absl::Status d = exp->Delete();
      if (!d.ok()) LOG(WARNING) << d;
      return s;
    }
  }
  const std::string dev_path = exp->block_device_path();
  absl::Status ready = WaitForBlockDevice(dev_path);
  if (ready.ok()) ready = WriteReadyFile(dev_path);
  if (ready.ok()) {
    if (corrupting) corrupting->Arm();
    std::printf("READY %s dev_id=%u copy_mode=%s encoding=%s\n", dev_path.c_str(), exp->dev_id(),
                std::string(CopyModeName(exp->copy_mode())).c_str(),
                std::string(CmdEncodingName(kf.encoding)).c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&sigs, &sig);
    LOG(INFO) << "signal " << sig << ": stopping ublk device " << exp->dev_id();
  }
  absl::Status s = exp->Stop();
  absl::Status d = exp->Delete();
  for (auto& w : workers) {
    w->Stop();
    LOG(INFO) << "worker " << w->id() << ": " << w->completed_ios() << " I/Os, " << w->sleeps()
              << " sleeps, " << w->polls() << " busy-poll rounds (" << w->polls_found()
              << " found work)";
  }
  if (!ready.ok()) return ready;
  if (!s.ok()) return s;
  return d;
}

int Main(int argc, char** argv) {
  gflags::SetUsageMessage("ublk-tool features | serve | recover | del | info  (see --helpshort)");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  if (argc != 2) {
    std::fprintf(stderr, "usage: ublk-tool features|serve|recover|del|info [--flags]\n");
    return 2;
  }
  const std::string cmd = argv[1];
  absl::Status s;
  if (cmd == "features") {
    s = Features();
  } else if (cmd == "serve") {
    s = Serve(false);
  } else if (cmd == "recover") {
    s = Serve(true);
  } else if (cmd == "del") {
    s = Del();
  } else if (cmd == "info") {
    s = Info();
  } else {
    std::fprintf(stderr, "ublk-tool: unknown command %s\n", cmd.c_str());
    return 2;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ublk-tool %s: %s\n", cmd.c_str(), s.ToString().c_str());
    return absl::IsInvalidArgument(s) && s.message().find("--") != absl::string_view::npos ? 2 : 1;
  }
  return 0;
}

}  // namespace
}  // namespace ublk

int main(int argc, char** argv) { return ublk::Main(argc, argv); }
