// RecoveryManager over the fake ublk kernel, the real UblkVolumeBackend and
// WorkerPool, a FakeMounter and a temp data dir. A "process" is one set of
// pool + backend + record store + VolumeManager + RecoveryManager; killing it
// closes every queue channel (what the kernel sees of kill -9), and a new
// process on the same FakeKernel finds the devices QUIESCED. A new FakeKernel
// is a node reboot: the devices are gone, the data dir is not.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/record_store.h"
#include "csi/recovery_manager.h"
#include "csi/ublk_volume_backend.h"
#include "csi/volume_manager.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/data.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/subprocess.h"
#include "ublk/memory.h"
#include "ublk/mutex.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fault_memory.h"
#include "ublk/worker_pool.h"

// glog + tzset under TSan: see tests/ublk/buffer_pool_test.cc.
extern "C" const char* __tsan_default_suppressions() { return "race:tzset_internal\n"; }

namespace ublk_csi {
namespace {

using ublk_test::Pattern;

using csi::v1::VolumeCapability;
using ::testing::HasSubstr;
using Mode = csi::v1::VolumeCapability::AccessMode;
using Outcome = RecoveryManager::Outcome;

constexpr int64_t kMiB = 1 << 20;

using ublk_test::LogCapture;

VolumeCapability BlockCap() {
  VolumeCapability cap;
  cap.mutable_block();
  cap.mutable_access_mode()->set_mode(Mode::SINGLE_NODE_WRITER);
  return cap;
}

// Sum of every series of one metric family.
double MetricSum(prometheus::Registry& registry, const std::string& name,
                 const std::string& label = "", const std::string& value = "") {
  double sum = 0;
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      bool match = label.empty();
      for (const auto& l : m.label) match = match || (l.name == label && l.value == value);
      if (!match) continue;
      sum += m.counter.value + m.gauge.value + static_cast<double>(m.histogram.sample_count);
    }
  }
  return sum;
}

// Polls `cond` (real time) until it holds or `timeout` passes: the retry
// thread runs on its own (its waits go through the fake clock).
bool Eventually(const std::function<bool()>& cond, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (!cond()) {
    if (absl::Now() >= until) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// A VolumeBackend that forwards to another and can hold EnsureExport calls
// after the first `pass` of them, until Release().
class HoldingBackend final : public VolumeBackend {
 public:
  explicit HoldingBackend(VolumeBackend* base) : base_(base) {}
  void HoldAfter(int pass) {
    ublk::MutexLock lock(&mu_);
    pass_ = pass;
  }
  void Release() {
    ublk::MutexLock lock(&mu_);
    pass_ = -1;
    cv_.NotifyAll();
  }
  int held() const {
    ublk::MutexLock lock(&mu_);
    return held_;
  }
  // The next n EnsureExport calls fail UNAVAILABLE, as an RBD volume's do
  // while its cluster's monitors do not answer.
  void FailUnavailable(int n) {
    ublk::MutexLock lock(&mu_);
    unavailable_ = n;
  }
  absl::StatusOr<ExportInfo> EnsureExport(const ExportSpec& spec) override {
    {
      ublk::MutexLock lock(&mu_);
      if (pass_ >= 0 && calls_++ >= pass_) {
        ++held_;
        cv_.NotifyAll();
        cv_.Wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pass_ < 0; });
      }
      if (unavailable_ > 0) {
        --unavailable_;
        return absl::UnavailableError("rbd cluster e2e: connecting timed out after 5s");
      }
    }
    return base_->EnsureExport(spec);
  }
  bool WaitHeld(int n) {
    ublk::MutexLock lock(&mu_);
    return cv_.WaitFor(lock, std::chrono::seconds(10),
                       [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_ >= n; });
  }
  absl::Status RemoveExport(const std::string& id) override { return base_->RemoveExport(id); }
  absl::Status ResizeExport(const std::string& id, int64_t n) override {
    return base_->ResizeExport(id, n);
  }
  ExportStatus GetExportStatus(const std::string& id) override {
    return base_->GetExportStatus(id);
  }
  int MaxVolumes() override { return base_->MaxVolumes(); }
  absl::Status Usable() override { return base_->Usable(); }

 private:
  VolumeBackend* const base_;
  mutable ublk::Mutex mu_;
  ublk::CondVar cv_;
  int pass_ ABSL_GUARDED_BY(mu_) = -1;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  int held_ ABSL_GUARDED_BY(mu_) = 0;
  int unavailable_ ABSL_GUARDED_BY(mu_) = 0;
};

class RecoveryTest : public ::testing::Test {
 protected:
  struct Process {
    std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
    std::unique_ptr<ublk::WorkerPool> pool;
    std::unique_ptr<UblkVolumeBackend> backend;
    std::unique_ptr<HoldingBackend> holding;
    std::unique_ptr<RecordStore> store;
    std::unique_ptr<VolumeManager> manager;
    Health health;
    std::unique_ptr<RecoveryManager> recovery;
  };

  void SetUp() override {
    data_ = dir_.path() + "/data";
    ASSERT_EQ(::mkdir(data_.c_str(), 0700), 0);
  }
  void TearDown() override { Kill(); }

  // Starts a process: loads the records and starts recovery (not waited for).
  // With hold_after >= 0 the backend holds every EnsureExport after the
  // first hold_after until holding->Release().
  void Start(int concurrency = 8, int workers = 4, int hold_after = -1) {
    Kill();
    p_ = std::make_unique<Process>();
    ublk::WorkerPoolOptions po;
    po.worker_count = workers;
    po.memory = &memory_;
    po.clock = &clock_;
    po.ring_entries = 256;
    po.ring_flags_allowed = kernel_->worker_ring_flags();
    po.metrics_refresh_interval = absl::ZeroDuration();
    if (with_budget_) {  // a cgroup limit read from files_, refreshed by the test
      po.budget = ublk::MemoryBudgetOptions{};
      po.memory_files = &files_;
      po.budget_refresh_interval = absl::ZeroDuration();
    }
    auto pool = ublk::WorkerPool::Create(po, p_->registry.get());
    ASSERT_TRUE(pool.ok()) << pool.status();
    p_->pool = std::move(*pool);
    ublk::FeatureOptions fo;
    fo.kernel_release = "6.12.0-test";
    UblkVolumeBackendOptions bo;
    bo.queue_depth = 8;
    bo.ublks_max_path = dir_.path() + "/ublks_max";
    p_->backend = UblkVolumeBackend::Open(
        [this](ublk::CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
          return kernel_->OpenControl(e);
        },
        fo, p_->pool.get(), bo);
    ASSERT_TRUE(p_->backend->Usable().ok()) << p_->backend->Usable();
    p_->holding = std::make_unique<HoldingBackend>(p_->backend.get());
    p_->holding->HoldAfter(hold_after);
    auto store = RecordStore::Open(data_, p_->registry.get());
    ASSERT_TRUE(store.ok()) << store.status();
    p_->store = std::move(*store);
    VolumeManagerOptions vo;
    vo.node_id = "node-a";
    vo.free_bytes = []() -> absl::StatusOr<int64_t> { return int64_t{1} << 40; };
    p_->manager =
        std::make_unique<VolumeManager>(vo, p_->store.get(), p_->holding.get(), &mounter_);
    ASSERT_TRUE(p_->manager->Load().ok());
    p_->health.SetBackend(absl::OkStatus());
    RecoveryOptions ro;
    ro.concurrency = concurrency;
    if (with_budget_) {
      ro.budget = p_->pool->memory_budget();
      ro.clock = &clock_;  // the memory.high hold ends when the test says
    }
    if (fake_recovery_clock_) ro.clock = &clock_;
    p_->recovery =
        std::make_unique<RecoveryManager>(p_->manager.get(), &p_->health, p_->registry.get(), ro);
    RecoveryManager* rm = p_->recovery.get();
    p_->health.SetServingCheck([rm] { return rm->ServingStatus(); });
    p_->recovery->Start();
  }

  void StartHeld(int concurrency, int pass = 0) { Start(concurrency, 4, pass); }

  // What the kernel sees of kill -9 (or SIGTERM): recovery stops, every
  // queue channel closes; USER_RECOVERY devices go QUIESCED.
  void Kill() {
    if (p_ == nullptr) return;
    p_->holding->Release();
    p_->recovery->Stop();
    p_->backend->Shutdown();
    p_.reset();
  }

  // A node reboot: a fresh kernel without devices (after the process died).
  void Reboot(ublk::FakeKernelOptions options = {}) {
    Kill();
    kernel_ = std::make_unique<ublk::FakeKernel>(options);
  }

  std::string CreateAndStage(const std::string& name, VolumeCapability cap = BlockCap()) {
    csi::v1::CreateVolumeRequest cr;
    cr.set_name(name);
    cr.mutable_capacity_range()->set_required_bytes(4 * kMiB);
    *cr.add_volume_capabilities() = cap;
    auto created = p_->manager->CreateVolume(cr);
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return "";
    const std::string id = created->volume().volume_id();
    absl::Status staged = Stage(id, cap);
    EXPECT_TRUE(staged.ok()) << staged;
    return id;
  }
  absl::Status Stage(const std::string& id, VolumeCapability cap = BlockCap()) {
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(dir_.path() + "/staging/" + id);
    *r.mutable_volume_capability() = cap;
    return p_->manager->NodeStageVolume(r).status();
  }
  absl::Status Publish(const std::string& id, VolumeCapability cap = BlockCap()) {
    csi::v1::NodePublishVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(dir_.path() + "/staging/" + id);
    r.set_target_path(dir_.path() + "/pods/" + id);
    *r.mutable_volume_capability() = cap;
    return p_->manager->NodePublishVolume(r).status();
  }
  uint32_t DevId(const std::string& id) {
    auto rec = p_->manager->GetRecord(id);
    EXPECT_TRUE(rec.ok() && rec->has_dev_id()) << id;
    return rec.ok() ? static_cast<uint32_t>(rec->dev_id()) : 0;
  }
  std::string BackingFile(const std::string& id) {
    return data_ + "/" + RecordStore::VolumeFileRel(id);
  }
  std::vector<std::string> MakeVolumes(int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) ids.push_back(CreateAndStage(absl::StrCat("pvc-", i)));
    return ids;
  }
  void WriteEach(const std::vector<std::string>& ids, unsigned seed) {
    for (size_t i = 0; i < ids.size(); ++i) {
      auto w = kernel_->Write(DevId(ids[i]), 4096 * (i % 8), Pattern(4096, seed + i));
      ASSERT_TRUE(w.ok()) << w.status();
      ASSERT_EQ(w->result, 4096) << ids[i];
    }
  }
  void ExpectEach(const std::vector<std::string>& ids, unsigned seed) {
    for (size_t i = 0; i < ids.size(); ++i) {
      auto r = kernel_->Read(DevId(ids[i]), 4096 * (i % 8), 4096);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->result, 4096) << ids[i];
      EXPECT_TRUE(r->data == Pattern(4096, seed + i)) << ids[i];
    }
  }

  ublk_test::TempDir dir_;
  std::string data_;
  std::unique_ptr<ublk::FakeKernel> kernel_ = std::make_unique<ublk::FakeKernel>();
  ublk::RealMemorySource real_;
  ublk::FaultInjectingMemorySource memory_{real_};
  ublk::FakeClock clock_;
  FakeMounter mounter_;  // the host's mount table: outlives processes
  // Set before Start(): the process's pool has a MemoryBudget reading these
  // (cgroup v2 files), and the recovery follows it.
  bool with_budget_ = false;
  // Set before Start(): the recovery's clock is clock_ (progress lines).
  bool fake_recovery_clock_ = false;
  ublk::FakeMemoryFiles files_;
  std::unique_ptr<Process> p_;
};

// The plugin dies while the server holds I/O (no memory at all: the worker
// keeps the request and waits); the next process
// re-attaches every QUIESCED device and the held I/O completes with its data.
TEST_F(RecoveryTest, KillWithInflightIoThenRecover) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(4);
  // No pool ever mapped (heap buffers), then no heap either: the next I/O
  // stays in the server's hands.
  memory_.FailMapAlways();
  WriteEach(ids, 100);
  memory_.FailHeapAlways();
  const std::string held = Pattern(8192, 7);
  auto pending_write = kernel_->SubmitIoAsync(DevId(ids[1]), UBLK_IO_OP_WRITE, 65536, 8192, held);
  for (int i = 0; i < 500 && kernel_->inflight(DevId(ids[1])) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_GT(kernel_->inflight(DevId(ids[1])), 0) << "the server never took the write";
  std::vector<uint32_t> devs;
  for (const auto& id : ids) devs.push_back(DevId(id));
  Kill();
  for (uint32_t d : devs) EXPECT_EQ(kernel_->DeviceState(d), UBLK_S_DEV_QUIESCED) << d;
  auto early = kernel_->Wait(pending_write, absl::Milliseconds(20));
  EXPECT_EQ(early.status().code(), absl::StatusCode::kDeadlineExceeded)
      << "completed while the server was dead: " << (early.ok() ? early->result : 0);

  memory_.HealMap();
  memory_.HealHeap();
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  RecoveryManager::Progress pr = p_->recovery->progress();
  EXPECT_EQ(pr.total, 4);
  EXPECT_EQ(pr.recovered, 4);
  EXPECT_EQ(pr.failed, 0);
  EXPECT_TRUE(p_->health.Ready().ok()) << p_->health.Ready();
  auto w = kernel_->Wait(pending_write, absl::Seconds(5));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->result, 8192);
  EXPECT_TRUE(kernel_->Read(devs[1], 65536, 8192)->data == held);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(DevId(ids[i]), devs[i]);
  ExpectEach(ids, 100);
  // kubelet's repeated calls find everything in place.
  for (const auto& id : ids) EXPECT_TRUE(Stage(id).ok()) << id;
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "recovered"), 4);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "failed"), 0);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_duration_seconds"), 4);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_exports", "state", "live"), 4);
}

// The seed incident: 66 exports recover while no buffer pool can be mapped.
// Every one recovers and serves from the heap; one degrade line per worker;
// once memory returns the workers go back to their pools.
TEST_F(RecoveryTest, SixtySixExportsRecoverWhileMmapFails) {
  ublk::FakeKernelOptions ko;
  ko.ublks_max = 128;
  kernel_ = std::make_unique<ublk::FakeKernel>(ko);
  Start(8, 4);
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(66);
  WriteEach(ids, 1000);
  Kill();

  LogCapture logs;
  memory_.FailMapAlways();
  const absl::Time t0 = absl::Now();
  Start(8, 4);
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(30)));
  LOG(INFO) << "66 exports recovered in " << absl::Now() - t0;
  EXPECT_EQ(p_->recovery->progress().recovered, 66);
  EXPECT_TRUE(p_->health.Ready().ok());
  ExpectEach(ids, 1000);
  EXPECT_GT(MetricSum(*p_->registry, "ublk_csi_buffer_pool_heap_fallbacks_total"), 0);
  EXPECT_GT(memory_.failed_map_calls(), 0);
  for (int w = 0; w < 4; ++w) {
    EXPECT_EQ(logs.Count(google::GLOG_WARNING,
                         {absl::StrCat("worker ", w, ":"), "cannot create buffer pool"}),
              1)
        << "worker " << w;
  }
  EXPECT_EQ(p_->backend->GetExportStatus(ids[0]).state, ExportState::kDegraded);

  memory_.HealMap();
  clock_.Advance(absl::Seconds(60));
  WriteEach(ids, 2000);
  ExpectEach(ids, 2000);
  for (const auto& id : ids) {
    EXPECT_EQ(p_->backend->GetExportStatus(id).state, ExportState::kLive) << id;
  }
}

// Memory tight while recovering (headroom below the budget's margin): the
// recovery brings back one volume at a time instead of --recovery-concurrency,
// one log line and a metric per transition; once the limit is raised it goes
// back to full concurrency, and every volume recovers.
TEST_F(RecoveryTest, TightMemoryBudgetLowersRecoveryConcurrencyUntilHeadroomReturns) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(6);
  WriteEach(ids, 300);
  Kill();

  LogCapture logs;
  files_.SetCgroupV2("/plugin", 64 * kMiB, 60 * kMiB);  // 4 MiB left, margin 8 MiB
  with_budget_ = true;
  StartHeld(4);  // every recovery's EnsureExport waits for Release()
  ASSERT_TRUE(p_->pool->memory_budget()->tight());
  ASSERT_TRUE(p_->holding->WaitHeld(1));
  absl::SleepFor(absl::Milliseconds(300));  // many throttle polls
  EXPECT_EQ(p_->holding->held(), 1);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_concurrency"), 1);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_memory_throttles_total"), 1);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING,
                       {"recovery: memory is tight", "at most 1 volume(s) at a time instead of 4",
                        "0 of 6 done"}),
            1);

  files_.SetCgroupV2("/plugin", 256 * kMiB, 60 * kMiB);  // the limit is raised
  p_->pool->RefreshBudget();
  ASSERT_FALSE(p_->pool->memory_budget()->tight());
  ASSERT_TRUE(p_->holding->WaitHeld(4));
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_concurrency"), 4);
  EXPECT_EQ(logs.Count(google::GLOG_INFO,
                       {"recovery: memory headroom restored", "4 volume(s) at a time again"}),
            1);
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  EXPECT_EQ(p_->recovery->progress().recovered, 6);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_memory_throttles_total"), 1);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"recovery: memory is tight"}), 1);
  EXPECT_TRUE(p_->health.Ready().ok());
  ExpectEach(ids, 300);
}

// memory.high throttled the plugin during its recovery (no headroom problem,
// the budget's pressure epoch moved): the volumes not started yet are
// recovered one at a time for pressure_hold, then at full concurrency.
TEST_F(RecoveryTest, MemoryHighThrottlingHoldsRecoveryConcurrencyDownForAWhile) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(6);
  Kill();

  LogCapture logs;
  files_.SetCgroupV2("/plugin", 0, 20 * kMiB, /*high_events=*/3);  // no limit
  with_budget_ = true;
  StartHeld(4);
  ASSERT_TRUE(p_->holding->WaitHeld(4));  // events from before the start: full speed
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_memory_throttles_total"), 0);
  files_.SetCgroupV2("/plugin", 0, 20 * kMiB, /*high_events=*/5);
  p_->pool->RefreshBudget();
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  EXPECT_EQ(p_->recovery->progress().recovered, 6);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_memory_throttles_total"), 1);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING,
                       {"recovery: memory is tight", "2 memory.high event(s) seen"}),
            1);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_concurrency"), 1);
}

// 200 exports after a node reboot: all re-created under their persisted ids
// from their backing files, with bounded concurrency.
TEST_F(RecoveryTest, TwoHundredExportsAreRecreatedAfterReboot) {
  ublk::FakeKernelOptions ko;
  ko.ublks_max = 256;
  kernel_ = std::make_unique<ublk::FakeKernel>(ko);
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(200);
  WriteEach(ids, 3000);
  std::vector<uint32_t> devs;
  for (const auto& id : ids) devs.push_back(DevId(id));
  Reboot(ko);
  EXPECT_EQ(kernel_->device_count(), 0u);
  const absl::Time t0 = absl::Now();
  Start(16, 4);
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(60)));
  LOG(INFO) << "200 exports re-created in " << absl::Now() - t0;
  EXPECT_EQ(p_->recovery->progress().recreated, 200);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(DevId(ids[i]), devs[i]);
  ExpectEach(ids, 3000);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "recreated"), 200);
}

// One broken volume of each kind fails alone: a missing backing file (one
// ERROR line, failed metric, abnormal VolumeCondition, NodeStage answers the
// cause), a corrupt record (set aside, never served), a missing record (not
// known: not recovered); every other volume recovers.
TEST_F(RecoveryTest, BrokenVolumesFailAloneOthersRecover) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(6);
  WriteEach(ids, 50);
  Reboot();
  ASSERT_EQ(::unlink(BackingFile(ids[1]).c_str()), 0);
  { std::ofstream(data_ + "/records/" + ids[2] + ".volume", std::ios::trunc) << "garbage"; }
  ASSERT_EQ(::unlink((data_ + "/records/" + ids[3] + ".volume").c_str()), 0);

  LogCapture logs;
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  RecoveryManager::Progress pr = p_->recovery->progress();
  EXPECT_EQ(pr.total, 4);  // the corrupt and the missing record are not known
  EXPECT_EQ(pr.recreated, 3);
  EXPECT_EQ(pr.failed, 1);
  EXPECT_EQ(p_->recovery->OutcomeOf(ids[1]), Outcome::kFailed);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {ids[1], "recovery failed"}), 1);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "failed"), 1);
  EXPECT_EQ(p_->store->corrupt_count(), 1);
  // Recovery is done, but a staged volume is not served: not ready, with
  // the count and the reason (issue 17: it used to say ready).
  absl::Status ready = p_->health.Ready();
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable) << ready;
  EXPECT_THAT(std::string(ready.message()),
              HasSubstr("1 of 4 staged or published volumes not serving: 1 failed"));
  EXPECT_THAT(std::string(ready.message()), HasSubstr(ids[1]));

  csi::v1::NodeGetVolumeStatsRequest sr;
  sr.set_volume_id(ids[1]);
  sr.set_volume_path(dir_.path() + "/staging/" + ids[1]);
  auto stats = p_->manager->NodeGetVolumeStats(sr);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stats->volume_condition().abnormal());
  EXPECT_THAT(stats->volume_condition().message(), HasSubstr("failed"));
  absl::Status again = Stage(ids[1]);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;

  for (const std::string& id : {ids[0], ids[4], ids[5]}) {
    EXPECT_EQ(p_->recovery->OutcomeOf(id), Outcome::kRecreated) << id;
  }
  std::vector<std::string> good = {ids[0], ids[4], ids[5]};
  for (const auto& id : good) {
    sr.set_volume_id(id);
    sr.set_volume_path(dir_.path() + "/staging/" + id);
    auto s = p_->manager->NodeGetVolumeStats(sr);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_FALSE(s->volume_condition().abnormal()) << s->volume_condition().message();
  }
  EXPECT_EQ(kernel_->Read(DevId(ids[4]), 4096 * 4, 4096)->data, Pattern(4096, 54));
}

// Volumes whose recovery fails UNAVAILABLE (an RBD volume's cluster does not
// answer when the plugin starts) are failed in the first pass, then tried
// again every unavailable_retry_interval by the plugin itself (kubelet does
// not repeat a NodeStage) until they serve: one ERROR line each, the retry
// counter by result, ready once they do.
TEST_F(RecoveryTest, UnavailableVolumesAreRetriedUntilTheyServe) {
  fake_recovery_clock_ = true;
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(3);
  WriteEach(ids, 70);
  Kill();
  LogCapture logs;
  Start(/*concurrency=*/1, /*workers=*/4, /*hold_after=*/0);
  p_->holding->FailUnavailable(5);  // 3 in the first pass, 2 on the first retry
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "failed"), 3);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {"recovery failed", "trying again every 5s"}), 3);
  ASSERT_TRUE(Eventually([&] { return p_->recovery->ServingStatus().ok(); }, absl::Seconds(10)))
      << p_->recovery->ServingStatus();
  EXPECT_TRUE(p_->health.Ready().ok()) << p_->health.Ready();
  RecoveryManager::Progress pr = p_->recovery->progress();
  EXPECT_EQ(pr.failed, 0);
  EXPECT_EQ(pr.recovered, 3);
  for (const std::string& id : ids) EXPECT_EQ(p_->recovery->OutcomeOf(id), Outcome::kRecovered);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_retries_total", "result", "unavailable"),
            2);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recovery_retries_total", "result", "recovered"), 3);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "recovered"), 3);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {"recovery"}), 3);  // no line per retry
  ExpectEach(ids, 70);
}

// A volume unstaged while its recovery waits for the cluster is dropped from
// the retries, not exported again; a failure of another kind ends them.
TEST_F(RecoveryTest, UnavailableRetriesStopForAnUnstagedVolume) {
  fake_recovery_clock_ = true;
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(1);
  Kill();
  Start(/*concurrency=*/1, /*workers=*/4, /*hold_after=*/0);
  p_->holding->FailUnavailable(1 << 20);  // the cluster never answers
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  ASSERT_TRUE(Eventually(
      [&] {
        return MetricSum(*p_->registry, "ublk_csi_recovery_retries_total", "result",
                         "unavailable") >= 3;
      },
      absl::Seconds(10)))
      << p_->recovery->ServingStatus()
      << " failed=" << MetricSum(*p_->registry, "ublk_csi_recoveries_total", "outcome", "failed");
  csi::v1::NodeUnstageVolumeRequest ur;
  ur.set_volume_id(ids[0]);
  ur.set_staging_target_path(dir_.path() + "/staging/" + ids[0]);
  // A retry in progress holds the volume: ABORTED, which kubelet retries.
  absl::Status unstaged;
  ASSERT_TRUE(Eventually(
      [&] {
        unstaged = p_->manager->NodeUnstageVolume(ur).status();
        return !absl::IsAborted(unstaged);
      },
      absl::Seconds(10)));
  ASSERT_TRUE(unstaged.ok()) << unstaged;
  EXPECT_TRUE(Eventually(
      [&] {
        return MetricSum(*p_->registry, "ublk_csi_recovery_retries_total", "result", "dropped") ==
               1;
      },
      absl::Seconds(10)));
  EXPECT_EQ(p_->backend->GetExportStatus(ids[0]).state, ExportState::kAbsent);
  EXPECT_TRUE(p_->recovery->ServingStatus().ok()) << p_->recovery->ServingStatus();
}

// After a reboot onto a kernel with a lower device limit, the volumes over
// the limit fail with RESOURCE_EXHAUSTED naming ublks_max: one line each, no
// retries; the others are re-created.
TEST_F(RecoveryTest, DeviceLimitFailsTheExcessOnceWithoutRetries) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(4);
  ublk::FakeKernelOptions ko;
  ko.ublks_max = 2;
  Reboot(ko);
  LogCapture logs;
  Start(1);
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  RecoveryManager::Progress pr = p_->recovery->progress();
  EXPECT_EQ(pr.recreated, 2);
  EXPECT_EQ(pr.failed, 2);
  EXPECT_EQ(kernel_->device_count(), 2u);
  int failed = 0;
  for (const auto& id : ids) {
    if (p_->recovery->OutcomeOf(id) != Outcome::kFailed) continue;
    ++failed;
    EXPECT_EQ(logs.Count(google::GLOG_ERROR, {id, "recovery failed", "ublks_max"}), 1);
    // kubelet's own retry gets the same clear answer (its backoff paces it).
    absl::Status s = Stage(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("ublks_max"));
  }
  EXPECT_EQ(failed, 2);
}

// While recovery runs: not ready with "recovering: N of M", NodeStage and
// NodePublish of a volume not yet done answer UNAVAILABLE at once, stats
// report it abnormal; then everything serves.
TEST_F(RecoveryTest, CallsDuringRecoveryAreUnavailableNotBlocked) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(3);
  Kill();
  StartHeld(2);
  ASSERT_TRUE(p_->holding->WaitHeld(2));
  absl::Status ready = p_->health.Ready();
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(ready.message()), HasSubstr("recovering: 0 of 3 volumes"));
  const absl::Time t0 = absl::Now();
  for (const auto& id : ids) {
    absl::Status s = Stage(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("being recovered"));
    EXPECT_EQ(Publish(id).code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_exports", "state", "pending"), 3);
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  EXPECT_TRUE(p_->health.Ready().ok());
  for (const auto& id : ids) EXPECT_TRUE(Stage(id).ok());
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_exports", "state", "pending"), 0);
}

// SIGTERM mid-recovery: Stop() returns once the volumes in progress finish,
// starts no more, leaves the rest UNAVAILABLE and the plugin not ready; the
// shutdown detaches what was recovered, so every device is QUIESCED again,
// and the next process recovers all of them.
TEST_F(RecoveryTest, SigtermMidRecoveryLeavesEveryDeviceRecoverable) {
  ublk::FakeKernelOptions ko;
  ko.ublks_max = 128;
  kernel_ = std::make_unique<ublk::FakeKernel>(ko);
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(66);
  WriteEach(ids, 500);
  std::vector<uint32_t> devs;
  for (const auto& id : ids) devs.push_back(DevId(id));
  Kill();

  StartHeld(2, /*pass=*/10);
  ASSERT_TRUE(p_->holding->WaitHeld(2));
  std::atomic<bool> stopped{false};
  std::thread sigterm([&] {
    p_->recovery->Stop();
    stopped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(stopped.load());  // waits for the two in progress
  p_->holding->Release();
  sigterm.join();
  RecoveryManager::Progress pr = p_->recovery->progress();
  EXPECT_TRUE(pr.stopped);
  EXPECT_EQ(pr.done, 12);
  EXPECT_EQ(pr.recovered, 12);
  EXPECT_FALSE(p_->recovery->WaitDone(absl::Milliseconds(10)));
  EXPECT_EQ(p_->health.Ready().code(), absl::StatusCode::kUnavailable);
  int unavailable = 0;
  for (const auto& id : ids) unavailable += p_->recovery->CheckServing(id).ok() ? 0 : 1;
  EXPECT_EQ(unavailable, 66 - 12);
  p_->backend->Shutdown();
  for (uint32_t d : devs) EXPECT_EQ(kernel_->DeviceState(d), UBLK_S_DEV_QUIESCED) << d;
  p_.reset();

  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(30)));
  EXPECT_EQ(p_->recovery->progress().recovered, 66);
  ExpectEach(ids, 500);
}

// ublk::ClockThatActsAt releases the dead server's char device at a known
// instant of fake time, with no wall-clock wait.
using ublk::ClockThatActsAt;

// Right after a kill the kernel may still show the device LIVE (it quiesces
// it when the dead server's char device is released). The backend waits for
// QUIESCED instead of taking the id for another server's and making a new
// device (which would leave the pod's mount on the old one forever).
TEST_F(RecoveryTest, DeviceStillLiveFromTheDeadServerIsWaitedForAndRecovered) {
  ublk::WorkerPoolOptions po;
  po.worker_count = 1;
  po.memory = &memory_;
  po.clock = &clock_;
  po.metrics_refresh_interval = absl::ZeroDuration();
  auto old_pool = ublk::WorkerPool::Create(po, nullptr);
  ASSERT_TRUE(old_pool.ok());
  ublk::FeatureOptions fo;
  fo.kernel_release = "6.12.0-test";
  auto open = [this](ublk::CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
    return kernel_->OpenControl(e);
  };
  UblkVolumeBackendOptions bo;
  bo.queue_depth = 8;
  bo.ublks_max_path = dir_.path() + "/ublks_max";
  auto old_server = UblkVolumeBackend::Open(open, fo, old_pool->get(), bo);
  ExportSpec spec;
  spec.volume_id = "v";
  spec.backing_file = dir_.path() + "/v.img";
  spec.size_bytes = 4 * kMiB;
  spec.preferred_dev_id = 5;
  { std::ofstream(spec.backing_file).close(); }
  ASSERT_EQ(::truncate(spec.backing_file.c_str(), spec.size_bytes), 0);
  auto first = old_server->EnsureExport(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->dev_id, 5);

  auto new_pool = ublk::WorkerPool::Create(po, nullptr);
  ASSERT_TRUE(new_pool.ok());
  // The old server lets go of its char device 150 ms (fake) into the wait.
  // ClockThatActsAt starts at FakeClock's fixed instant, as clock_ does.
  const absl::Time t0 = clock_.Now();
  ClockThatActsAt clock(t0 + absl::Milliseconds(150), [&] { old_server->Shutdown(); });
  ASSERT_EQ(clock.Now(), t0);
  bo.clock = &clock;
  bo.quiesce_wait = absl::Seconds(10);  // the default poll: its cap bounds the lateness
  auto new_server = UblkVolumeBackend::Open(open, fo, new_pool->get(), bo);
  auto second = new_server->EnsureExport(spec);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->recovered);
  EXPECT_EQ(second->dev_id, 5);
  // It waited (in fake time) until the release, not to the end of
  // quiesce_wait, and noticed it within the poll's 10 ms cap (a 100 ms cap
  // noticed it at 226 ms: 2+4+...+64+100).
  EXPECT_GE(clock.Now() - t0, absl::Milliseconds(150));
  EXPECT_LE(clock.Now() - t0, absl::Milliseconds(150 + 10));
  EXPECT_EQ(kernel_->device_count(), 1u);
  new_server->Shutdown();

  // A device made for another volume is not waited for: it gets a new one
  // (the fake clock keeps any wait out of wall time).
  ExportSpec other = spec;
  other.volume_id = "w";
  ublk::FakeClock give_up_clock;
  bo.clock = &give_up_clock;
  bo.quiesce_wait = absl::Milliseconds(50);
  auto third_server = UblkVolumeBackend::Open(open, fo, old_pool->get(), bo);
  auto mine = third_server->EnsureExport(spec);  // recovers 5 and serves it
  ASSERT_TRUE(mine.ok()) << mine.status();
  auto fourth_server = UblkVolumeBackend::Open(open, fo, new_pool->get(), bo);
  auto taken = fourth_server->EnsureExport(other);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_NE(taken->dev_id, 5);
  EXPECT_FALSE(taken->recovered);
  fourth_server->Shutdown();
  third_server->Shutdown();
}

// The plugin is killed in the middle of recovering a device, twice in a
// row, on 6.12 and on 7.x (the fault point stands for the kill: the rest of
// that process's recoveries stop where they are), and the next process
// recovers every volume, none marked failed, and turns ready.
TEST_F(RecoveryTest, RecoveryCutShortResumesInTheNextProcess) {
  for (bool legacy : {true, false}) {
    SCOPED_TRACE(legacy ? "6.12" : "7.x");
    Reboot(legacy ? ublk::FakeKernelOptions::Linux612() : ublk::FakeKernelOptions::Linux7());
    Start();
    ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
    std::vector<std::string> ids = MakeVolumes(6);
    WriteEach(ids, 70);
    for (auto point : {ublk::FakeKernel::CrashPoint::kAfterStartRecovery,
                       ublk::FakeKernel::CrashPoint::kAfterMmap}) {
      Kill();
      kernel_->NewProcess();
      kernel_->CrashAt(point);
      Start(/*concurrency=*/1);
      ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
      // The "killed" process's later volumes fail too (its FETCHes never
      // reach the kernel): each is left where its recovery stopped.
      EXPECT_EQ(p_->recovery->progress().failed, 6);
      EXPECT_THAT(std::string(p_->health.Ready().message()), HasSubstr("6 failed"));
    }
    Kill();
    kernel_->NewProcess();
    Start();
    ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
    RecoveryManager::Progress pr = p_->recovery->progress();
    EXPECT_EQ(pr.recovered, 6);
    EXPECT_EQ(pr.failed, 0);
    EXPECT_TRUE(p_->health.Ready().ok()) << p_->health.Ready();
    ExpectEach(ids, 70);
    if (legacy) {
      EXPECT_GE(kernel_->rearms(), 1);
    }
  }
}

// A mass recovery logs progress, not lines per volume: every glog line is
// written under one process-wide lock, and three lines per volume (target
// opened, device recovered, volume recovered) paced a 256-volume recovery
// in the guest. At most one progress line per interval, the closing line,
// and no INFO line naming a volume that recovered.
TEST_F(RecoveryTest, RecoveryLogsProgressPerIntervalNotLinesPerVolume) {
  fake_recovery_clock_ = true;
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(5)));
  std::vector<std::string> ids = MakeVolumes(6);
  std::vector<uint32_t> devs;
  for (const auto& id : ids) devs.push_back(DevId(id));
  Kill();

  LogCapture logs;
  StartHeld(/*concurrency=*/1, /*pass=*/3);  // 3 recover at once, the 4th waits
  ASSERT_TRUE(p_->holding->WaitHeld(1));
  clock_.Advance(absl::Milliseconds(1500));  // past the 1 s progress interval
  p_->holding->Release();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(10)));
  EXPECT_EQ(p_->recovery->progress().recovered, 6);
  // Volumes 1-3 finished within the first interval: no line. Volume 4
  // finished after it: one line. 5 and 6 within the next: none.
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"recovery: ", " of 6 volume(s) done"}), 1);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"recovery: 4 of 6 volume(s) done in 1.5s"}), 1);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"recovery done: 6 volume(s)"}), 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(logs.Count(google::GLOG_INFO, {ids[i]}), 0) << ids[i];
    EXPECT_EQ(logs.Count(google::GLOG_INFO, {absl::StrCat("ublk device ", devs[i], ":")}), 0)
        << devs[i];
  }
}

// No staged volumes: ready at once, no threads.
TEST_F(RecoveryTest, NothingToRecoverIsReadyAtOnce) {
  Start();
  ASSERT_TRUE(p_->recovery->WaitDone(absl::Seconds(1)));
  EXPECT_TRUE(p_->health.Ready().ok());
  EXPECT_EQ(p_->recovery->progress().total, 0);
  EXPECT_EQ(MetricSum(*p_->registry, "ublk_csi_exports"), 0);
}

}  // namespace
}  // namespace ublk_csi
