// Export + Worker + targets end to end on the fake kernel: data written
// through the "block device" lands in the backing file and reads back, in
// all three data modes (zero copy on a 7.x-like fake); lifecycle, misuse and
// recovery.
#include "ublk/export.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/data.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/null_target.h"
#include "ublk/ring.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fault_memory.h"
#include "ublk/worker.h"

namespace ublk {
namespace {

using ublk_test::ReadFileRange;

using ::testing::HasSubstr;

constexpr uint64_t kSize = 4 << 20;

std::string RandomData(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/export_test.XXXXXX";
  char* d = mkdtemp(tmpl.data());
  EXPECT_NE(d, nullptr);
  return tmpl;
}

// Shared by the fixtures below (copy modes and zero copy).
std::vector<Worker*> RawWorkers(const std::vector<std::unique_ptr<Worker>>& workers) {
  std::vector<Worker*> v;
  for (auto& w : workers) v.push_back(w.get());
  return v;
}

std::shared_ptr<FileTarget> MakeFileTargetIn(const std::string& dir, const std::string& name) {
  auto t = FileTarget::Open({dir + "/" + name, kSize, /*create=*/true, true});
  EXPECT_TRUE(t.ok()) << t.status();
  return std::shared_ptr<FileTarget>(std::move(*t));
}

ExportOptions TestExportOptions(uint16_t queues, uint16_t depth, CopyMode mode) {
  ExportOptions o;
  o.size_bytes = kSize;
  o.nr_queues = queues;
  o.queue_depth = depth;
  o.copy_mode = mode;
  o.max_io_bytes = 128 * 1024;
  return o;
}

class ExportTest : public ::testing::TestWithParam<CopyMode> {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    control_ = kernel_.OpenControl(CmdEncoding::kIoctl);
    for (int i = 0; i < 2; ++i) {
      WorkerOptions wo;
      wo.worker_id = i;
      wo.memory = &memory_;
      wo.ring_flags_allowed = kernel_.worker_ring_flags();
      auto w = Worker::Create(wo);
      ASSERT_TRUE(w.ok()) << w.status();
      workers_.push_back(std::move(*w));
    }
  }
  void TearDown() override {
    for (auto& w : workers_) w->Stop();
    std::filesystem::remove_all(dir_);
  }
  std::vector<Worker*> Workers() { return RawWorkers(workers_); }
  std::shared_ptr<FileTarget> MakeFileTarget(const std::string& name = "vol.img") {
    return MakeFileTargetIn(dir_, name);
  }
  ExportOptions Options(uint16_t queues = 1, uint16_t depth = 8) {
    return TestExportOptions(queues, depth, GetParam());
  }
  std::unique_ptr<Export> StartExport(std::shared_ptr<Target> target, const ExportOptions& o) {
    auto e = Export::Create(*control_, Workers(), std::move(target), o);
    EXPECT_TRUE(e.ok()) << e.status();
    if (!e.ok()) return nullptr;
    absl::Status s = (*e)->Start();
    EXPECT_TRUE(s.ok()) << s;
    return std::move(*e);
  }

  static FakeKernelOptions KernelFor(CopyMode mode) {
    // Zero copy needs UBLK_F_AUTO_BUF_REG (6.16+). The resize tests below
    // expect no UPDATE_SIZE, as on 6.12.
    if (mode != CopyMode::kZeroCopy) return FakeKernelOptions::Linux612();
    FakeKernelOptions o = FakeKernelOptions::Linux7();
    o.features &= ~UBLK_F_UPDATE_SIZE;
    return o;
  }

  FakeKernel kernel_{KernelFor(GetParam())};
  std::unique_ptr<ControlDevice> control_;
  RealMemorySource memory_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::string dir_;
};

TEST_P(ExportTest, FileTargetWriteReadBackAndBackingFile) {
  auto target = MakeFileTarget();
  auto e = StartExport(target, Options());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state(), Export::State::kRunning);
  EXPECT_EQ(e->copy_mode(), GetParam());
  EXPECT_EQ(kernel_.DeviceState(e->dev_id()), UBLK_S_DEV_LIVE);

  const std::string data = RandomData(64 * 1024, 1);
  auto w = kernel_.Write(e->dev_id(), 8192, data);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->result, static_cast<int32_t>(data.size()));
  auto r = kernel_.Read(e->dev_id(), 8192, data.size());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->result, static_cast<int32_t>(data.size()));
  EXPECT_TRUE(r->data == data);
  EXPECT_TRUE(ReadFileRange(dir_ + "/vol.img", 8192, data.size()) == data);

  // Never written: sparse zeros.
  auto z = kernel_.Read(e->dev_id(), kSize - 4096, 4096);
  ASSERT_TRUE(z.ok());
  EXPECT_TRUE(z->data == std::string(4096, '\0'));

  auto f = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_FLUSH, 0, 0);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->result, 0);

  // Discard and write-zeroes read back as zeros.
  auto d = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_DISCARD, 8192, 8192);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->result, 0);
  auto wz = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_WRITE_ZEROES, 16384, 4096);
  ASSERT_TRUE(wz.ok());
  EXPECT_EQ(wz->result, 0);
  r = kernel_.Read(e->dev_id(), 8192, 12288);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == std::string(12288, '\0'));
  r = kernel_.Read(e->dev_id(), 20480, 4096);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == data.substr(20480 - 8192, 4096));

  // Beyond the end: the block layer refuses.
  auto beyond = kernel_.Read(e->dev_id(), kSize, 4096);
  ASSERT_TRUE(beyond.ok());
  EXPECT_EQ(beyond->result, -EIO);

  ASSERT_TRUE(e->Stop().ok());
  EXPECT_EQ(e->state(), Export::State::kStopped);
  EXPECT_EQ(kernel_.open_channels(e->dev_id()), 0);
  ASSERT_TRUE(e->Delete().ok());
  EXPECT_EQ(e->state(), Export::State::kDeleted);
  EXPECT_EQ(kernel_.device_count(), 0u);
}

TEST_P(ExportTest, ManyConcurrentIosOverSeveralQueuesAndWorkers) {
  auto target = MakeFileTarget();
  auto e = StartExport(target, Options(/*queues=*/3, /*depth=*/4));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(workers_[0]->queue_count() + workers_[1]->queue_count(), 3u);
  constexpr int kThreads = 4, kPerThread = 24;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t off = (static_cast<uint64_t>(t) * kPerThread + i) * 8192;
        reqs.push_back(kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, off, 8192,
                                             RandomData(8192, t * 1000 + i)));
      }
      for (auto& r : reqs) {
        auto res = kernel_.Wait(r, absl::Seconds(10));
        if (!res.ok() || res->result != 8192) ++bad;
      }
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t off = (static_cast<uint64_t>(t) * kPerThread + i) * 8192;
        auto res = kernel_.Read(e->dev_id(), off, 8192);
        if (!res.ok() || res->data != RandomData(8192, t * 1000 + i)) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GE(workers_[0]->completed_ios() + workers_[1]->completed_ios(),
            2u * kThreads * kPerThread);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(ExportTest, NullTargetReadsZerosAndDropsWrites) {
  auto e = StartExport(std::make_shared<NullTarget>(kSize), Options());
  ASSERT_NE(e, nullptr);
  auto w = kernel_.Write(e->dev_id(), 0, RandomData(4096, 3));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, 4096);
  auto r = kernel_.Read(e->dev_id(), 0, 4096);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->result, 4096);
  EXPECT_TRUE(r->data == std::string(4096, '\0'));
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(ExportTest, StateMachineRejectsInvalidTransitions) {
  auto e = Export::Create(*control_, Workers(), MakeFileTarget(), Options());
  ASSERT_TRUE(e.ok()) << e.status();
  Export& x = **e;
  EXPECT_EQ(x.state(), Export::State::kCreated);
  EXPECT_EQ(x.Stop().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(x.Detach().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(x.Start().ok());
  EXPECT_EQ(x.Start().code(), absl::StatusCode::kFailedPrecondition);
  absl::Status del = x.Delete();
  EXPECT_EQ(del.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(del.message()), HasSubstr("running"));
  ASSERT_TRUE(x.Stop().ok());
  EXPECT_EQ(x.Stop().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(x.Start().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(x.Resize(kSize / 2).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(x.Delete().ok());
  EXPECT_EQ(x.Delete().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(ExportTest, ResizeBeforeStartAndUpdateSizeWhileRunning) {
  auto target = MakeFileTarget();
  ExportOptions o = Options();
  o.size_bytes = kSize / 2;
  auto e = Export::Create(*control_, Workers(), target, o);
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Resize(kSize).ok());
  EXPECT_EQ(control_->GetParams((*e)->dev_id())->basic.dev_sectors, kSize >> 9);
  EXPECT_EQ((*e)->Resize(kSize * 2).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*e)->Start().ok());
  // The 6.12-like fake has no UPDATE_SIZE (6.16).
  EXPECT_EQ((*e)->Resize(kSize / 2).code(), absl::StatusCode::kUnimplemented);
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
}

TEST_P(ExportTest, DetachWithoutRecoveryAbortsIo) {
  auto e = StartExport(MakeFileTarget(), Options());
  ASSERT_NE(e, nullptr);
  ASSERT_TRUE(e->Detach().ok());
  EXPECT_EQ(e->state(), Export::State::kDetached);
  auto r = kernel_.Read(e->dev_id(), 0, 4096);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->result, -EIO);
  ASSERT_TRUE(e->Delete().ok());
}

// The server goes away while an I/O is in its hands and while more arrive;
// a new server recovers the device and everything completes with the data.
void RunRecovery(ExportTest* t, FakeKernel& kernel, ControlDevice& control,
                 std::vector<Worker*> workers, std::shared_ptr<Target> target,
                 const ExportOptions& o, bool reissue) {
  ExportOptions opts = o;
  opts.user_recovery = true;
  opts.user_recovery_reissue = reissue;
  auto created = Export::Create(control, workers, target, opts);
  ASSERT_TRUE(created.ok()) << created.status();
  auto e = std::move(*created);
  ASSERT_TRUE(e->Start().ok());
  const uint32_t id = e->dev_id();
  const std::string before = RandomData(8192, 11);
  ASSERT_EQ(kernel.Write(id, 0, before)->result, 8192);

  // A worker that never serves: the I/O it fetches stays in the server's hands.
  RealMemorySource memory;
  ASSERT_TRUE(e->Detach().ok());  // old server gone: QUIESCED
  EXPECT_EQ(kernel.DeviceState(id), UBLK_S_DEV_QUIESCED);
  EXPECT_EQ(kernel.open_channels(id), 0);

  // I/O issued during the outage waits.
  const std::string during = RandomData(4096, 12);
  auto pending_write = kernel.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 65536, 4096, during);
  auto pending_read = kernel.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 8192);
  EXPECT_EQ(kernel.Wait(pending_read, absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  // Recovery refuses the wrong state and misuse first.
  EXPECT_EQ(control.EndUserRecovery(id, getpid()).code(), absl::StatusCode::kUnavailable);

  auto recovered = Export::Recover(control, workers, target, id);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ((*recovered)->state(), Export::State::kRunning);
  EXPECT_EQ((*recovered)->copy_mode(), o.copy_mode);
  EXPECT_EQ(kernel.DeviceState(id), UBLK_S_DEV_LIVE);
  auto rr = kernel.Wait(pending_read, absl::Seconds(5));
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(rr->result, 8192);
  EXPECT_TRUE(rr->data == before);
  auto rw = kernel.Wait(pending_write, absl::Seconds(5));
  ASSERT_TRUE(rw.ok());
  EXPECT_EQ(rw->result, 4096);
  EXPECT_TRUE(kernel.Read(id, 65536, 4096)->data == during);
  ASSERT_TRUE((*recovered)->Stop().ok());
  ASSERT_TRUE((*recovered)->Delete().ok());
  (void)t;
  (void)memory;
}

TEST_P(ExportTest, RecoveryWithReissue) {
  RunRecovery(this, kernel_, *control_, Workers(), MakeFileTarget(), Options(), true);
}

TEST_P(ExportTest, RecoveryWithoutReissue) {
  RunRecovery(this, kernel_, *control_, Workers(), MakeFileTarget(), Options(), false);
}

TEST_P(ExportTest, RecoverRefusesLiveAndNonRecoveryDevices) {
  auto target = MakeFileTarget();
  auto e = StartExport(target, Options());
  ASSERT_NE(e, nullptr);
  auto r = Export::Recover(*control_, Workers(), target, e->dev_id());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("USER_RECOVERY"));
  ExportOptions o = Options();
  o.user_recovery = true;
  o.dev_id = 7;
  auto e2 = StartExport(target, o);
  ASSERT_NE(e2, nullptr);
  EXPECT_EQ(e2->dev_id(), 7u);
  r = Export::Recover(*control_, Workers(), target, 7);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("LIVE"));
  r = Export::Recover(*control_, Workers(), target, 99);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  for (auto* x : {e.get(), e2.get()}) {
    ASSERT_TRUE(x->Stop().ok());
    ASSERT_TRUE(x->Delete().ok());
  }
}

TEST_P(ExportTest, BadOptionsAreInvalidArgument) {
  auto target = MakeFileTarget();
  auto check = [&](auto mutate, const char* field) {
    ExportOptions o = Options();
    mutate(o);
    auto e = Export::Create(*control_, Workers(), target, o);
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(e.status().message()), HasSubstr(field));
  };
  check([](ExportOptions& o) { o.size_bytes = 1000; }, "size_bytes");
  check([](ExportOptions& o) { o.logical_bs_shift = 8; }, "logical_bs_shift");
  check([](ExportOptions& o) { o.logical_bs_shift = 13; }, "logical_bs_shift");
  check([](ExportOptions& o) { o.physical_bs_shift = 8; }, "physical_bs_shift");
  check([](ExportOptions& o) { o.queue_depth = 0; }, "queue_depth");
  check([](ExportOptions& o) { o.queue_depth = 5000; }, "queue_depth");
  check([](ExportOptions& o) { o.nr_queues = 0; }, "nr_queues");
  check([](ExportOptions& o) { o.max_io_bytes = 1000; }, "max_io_bytes");
  check([](ExportOptions& o) { o.user_recovery_reissue = true; }, "user_recovery");
  check([](ExportOptions& o) { o.size_bytes = kSize * 2; }, "exceeds");
  EXPECT_EQ(kernel_.device_count(), 0u);
}

TEST_P(ExportTest, DeviceThatVanishedIsAClearError) {
  auto e = StartExport(MakeFileTarget(), Options());
  ASSERT_NE(e, nullptr);
  const uint32_t id = e->dev_id();
  kernel_.VanishDevice(id);
  absl::Status s = e->Stop();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("device ", id)));
  EXPECT_EQ(e->state(), Export::State::kFailed);
  EXPECT_EQ(e->Delete().code(), absl::StatusCode::kNotFound);
}

TEST_P(ExportTest, AddDeviceFailureLeavesNothingBehind) {
  kernel_.FailNextAddDevice(ENOMEM);
  auto e = Export::Create(*control_, Workers(), MakeFileTarget(), Options());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kernel_.device_count(), 0u);
}

// A target whose reads fail: the error reaches the block layer (in get-data
// mode the READ commit still needs an address, or the kernel refuses it).
class FailingReadTarget final : public Target {
 public:
  uint64_t size_bytes() const override { return kSize; }
  bool supports_discard() const override { return false; }
  const char* name() const override { return "failing"; }
  std::optional<int32_t> StartIo(Ring&, const TargetIo& io, uint64_t) override {
    return io.op == UBLK_IO_OP_READ ? -EIO : static_cast<int32_t>(io.len);
  }
  std::optional<int32_t> FinishIo(const TargetIo&, int32_t res) override { return res; }
};

TEST_P(ExportTest, TargetErrorsReachTheBlockLayer) {
  auto e = StartExport(std::make_shared<FailingReadTarget>(), Options());
  ASSERT_NE(e, nullptr);
  for (int i = 0; i < 3; ++i) {
    auto r = kernel_.Read(e->dev_id(), 0, 4096);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->result, -EIO);
  }
  auto w = kernel_.Write(e->dev_id(), 0, std::string(4096, 'x'));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, 4096);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

INSTANTIATE_TEST_SUITE_P(CopyModes, ExportTest,
                         ::testing::Values(CopyMode::kUserCopy, CopyMode::kGetData,
                                           CopyMode::kZeroCopy),
                         [](const auto& info) { return std::string(CopyModeName(info.param)); });

// Zero copy on a 7.x-like fake: what the parameterized tests cannot see.
class ZeroCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    control_ = kernel_->OpenControl(CmdEncoding::kIoctl);
  }
  void TearDown() override {
    for (auto& w : workers_) w->Stop();
    std::filesystem::remove_all(dir_);
  }
  void UseKernel(FakeKernelOptions o) {
    kernel_ = std::make_unique<FakeKernel>(o);
    control_ = kernel_->OpenControl(CmdEncoding::kIoctl);
  }
  void AddWorkers(int n, unsigned slots = 16384) {
    for (int i = 0; i < n; ++i) {
      WorkerOptions wo;
      wo.worker_id = static_cast<int>(workers_.size());
      wo.memory = &memory_;
      wo.fixed_buffer_slots = slots;
      wo.ring_flags_allowed = kernel_->worker_ring_flags();
      auto w = Worker::Create(wo);
      ASSERT_TRUE(w.ok()) << w.status();
      workers_.push_back(std::move(*w));
    }
  }
  std::vector<Worker*> Workers() { return RawWorkers(workers_); }
  std::shared_ptr<FileTarget> MakeFileTarget(const std::string& name) {
    return MakeFileTargetIn(dir_, name);
  }
  ExportOptions Options(uint16_t queues, uint16_t depth) {
    return TestExportOptions(queues, depth, CopyMode::kZeroCopy);
  }
  // Options of a device that survives its server (USER_RECOVERY + REISSUE).
  ExportOptions RecoverableOptions(uint16_t queues, uint16_t depth) {
    ExportOptions o = Options(queues, depth);
    o.user_recovery = true;
    o.user_recovery_reissue = true;
    return o;
  }
  size_t FixedInUse() {
    size_t n = 0;
    for (auto& w : workers_) n += w->fixed_buffers_in_use();
    return n;
  }

  std::unique_ptr<FakeKernel> kernel_ = std::make_unique<FakeKernel>(FakeKernelOptions::Linux7());
  std::unique_ptr<ControlDevice> control_;
  RealMemorySource real_memory_;
  FaultInjectingMemorySource memory_{real_memory_};
  std::vector<std::unique_ptr<Worker>> workers_;
  std::string dir_;
};

TEST_F(ZeroCopyTest, DevicesGetAutoBufRegAndNoGetData) {
  AddWorkers(1);
  auto e = Export::Create(*control_, Workers(), MakeFileTarget("a.img"), Options(1, 8));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_NE((*e)->device_info().flags & UBLK_F_AUTO_BUF_REG, 0u);
  EXPECT_EQ((*e)->device_info().flags & (UBLK_F_NEED_GET_DATA | UBLK_F_USER_COPY), 0u);
  EXPECT_EQ((*e)->copy_mode(), CopyMode::kZeroCopy);
  ASSERT_TRUE((*e)->Delete().ok());
}

TEST_F(ZeroCopyTest, ManyExportsPerWorkerMoveDataWithoutTheBufferPool) {
  AddWorkers(2);
  constexpr int kExports = 3;
  constexpr uint16_t kQueues = 2, kDepth = 16;
  std::vector<std::unique_ptr<Export>> exports;
  for (int i = 0; i < kExports; ++i) {
    auto e = Export::Create(*control_, Workers(), MakeFileTarget(absl::StrCat("v", i, ".img")),
                            Options(kQueues, kDepth));
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_TRUE((*e)->Start().ok());
    exports.push_back(std::move(*e));
  }
  // Each worker serves three queues; each queue holds its own index range.
  EXPECT_EQ(workers_[0]->queue_count(), 3u);
  EXPECT_EQ(FixedInUse(), size_t{kExports} * kQueues * kDepth);

  constexpr int kPerExport = 48;  // 3x the tags of a queue: tags are reused
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int x = 0; x < kExports; ++x) {
    threads.emplace_back([&, x] {
      const uint32_t id = exports[x]->dev_id();
      std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
      for (int i = 0; i < kPerExport; ++i) {
        const uint32_t len = 4096u * (1 + i % 8);
        reqs.push_back(kernel_->SubmitIoAsync(id, UBLK_IO_OP_WRITE, uint64_t{65536} * i, len,
                                              RandomData(len, x * 100 + i)));
      }
      for (int i = 0; i < kPerExport; ++i) {
        auto res = kernel_->Wait(reqs[i], absl::Seconds(10));
        if (!res.ok() || res->result != static_cast<int32_t>(4096u * (1 + i % 8))) ++bad;
      }
      reqs.clear();
      for (int i = 0; i < kPerExport; ++i) {
        reqs.push_back(
            kernel_->SubmitIoAsync(id, UBLK_IO_OP_READ, uint64_t{65536} * i, 4096u * (1 + i % 8)));
      }
      for (int i = 0; i < kPerExport; ++i) {
        auto res = kernel_->Wait(reqs[i], absl::Seconds(10));
        if (!res.ok() || res->data != RandomData(4096u * (1 + i % 8), x * 100 + i)) ++bad;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  // The bytes reached the backing files.
  EXPECT_TRUE(ReadFileRange(dir_ + "/v2.img", 65536 * 5, 4096 * 6) == RandomData(4096 * 6, 205));
  // Every READ and WRITE went through a registered buffer; no bounce buffer
  // was taken, no pool mapped, nothing from the heap.
  EXPECT_EQ(kernel_->auto_buf_regs(), 2 * kExports * kPerExport);
  for (auto& w : workers_) EXPECT_FALSE(w->buffer_pool_touched());
  EXPECT_EQ(memory_.map_calls(), 0);
  EXPECT_EQ(memory_.heap_calls(), 0);

  for (auto& e : exports) {
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
  EXPECT_EQ(FixedInUse(), 0u);
}

TEST_F(ZeroCopyTest, FullBufferTableIsResourceExhaustedAndFreedByDelete) {
  AddWorkers(1, /*slots=*/24);
  auto a = Export::Create(*control_, Workers(), MakeFileTarget("a.img"), Options(1, 16));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Start().ok());
  EXPECT_EQ(FixedInUse(), 16u);

  auto b = Export::Create(*control_, Workers(), MakeFileTarget("b.img"), Options(1, 16));
  ASSERT_TRUE(b.ok());
  absl::Status s = (*b)->Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("worker 0"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("table full"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("ublk device ", (*b)->dev_id())));
  EXPECT_EQ((*b)->state(), Export::State::kFailed);
  ASSERT_TRUE((*b)->Delete().ok());
  EXPECT_EQ(FixedInUse(), 16u);

  // A smaller queue still fits beside the first; the first keeps serving.
  auto c = Export::Create(*control_, Workers(), MakeFileTarget("c.img"), Options(1, 8));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Start().ok());
  EXPECT_EQ(FixedInUse(), 24u);
  EXPECT_EQ(kernel_->Write((*a)->dev_id(), 0, RandomData(8192, 1))->result, 8192);
  EXPECT_EQ(kernel_->Write((*c)->dev_id(), 0, RandomData(8192, 2))->result, 8192);
  EXPECT_TRUE(kernel_->Read((*c)->dev_id(), 0, 8192)->data == RandomData(8192, 2));

  // Once the first is gone its range serves a new device.
  ASSERT_TRUE((*a)->Stop().ok());
  ASSERT_TRUE((*a)->Delete().ok());
  EXPECT_EQ(FixedInUse(), 8u);
  auto d = Export::Create(*control_, Workers(), MakeFileTarget("d.img"), Options(1, 16));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE((*d)->Start().ok());
  EXPECT_EQ(kernel_->Write((*d)->dev_id(), 4096, RandomData(4096, 3))->result, 4096);
  EXPECT_TRUE(kernel_->Read((*d)->dev_id(), 4096, 4096)->data == RandomData(4096, 3));
  for (auto* e : {c->get(), d->get()}) {
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
  EXPECT_EQ(FixedInUse(), 0u);
}

TEST_F(ZeroCopyTest, FailedRegistrationFailsOnlyThatRequest) {
  AddWorkers(1);
  auto e = Export::Create(*control_, Workers(), MakeFileTarget("a.img"), Options(1, 4));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Start().ok());
  const uint32_t id = (*e)->dev_id();
  kernel_->FailNextAutoBufReg(ENOMEM);
  auto w = kernel_->Write(id, 0, RandomData(4096, 1));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, -EIO);
  EXPECT_EQ(kernel_->inflight(id), 0);
  // The tag was never handed over and stays fetched: all four serve again.
  std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(
        kernel_->SubmitIoAsync(id, UBLK_IO_OP_WRITE, 4096u * i, 4096, RandomData(4096, 10 + i)));
  }
  for (auto& r : reqs) EXPECT_EQ(kernel_->Wait(r, absl::Seconds(5))->result, 4096);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(kernel_->Read(id, 4096u * i, 4096)->data == RandomData(4096, 10 + i));
  }
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
}

bool DirectIoWorks(const std::string& dir) {
  std::string p = dir + "/probe";
  int fd = open(p.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0600);
  if (fd < 0) return false;
  close(fd);
  unlink(p.c_str());
  return true;
}

TEST_F(ZeroCopyTest, FixedBufferIoUsesODirectWhereTheBufferIsAligned) {
  if (!DirectIoWorks(dir_)) GTEST_SKIP() << "no O_DIRECT in " << dir_;
  AddWorkers(1);
  auto target = MakeFileTarget("a.img");
  ASSERT_TRUE(target->direct());
  auto e = Export::Create(*control_, Workers(), target, Options(1, 4));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Start().ok());
  EXPECT_EQ(kernel_->Write((*e)->dev_id(), 8192, RandomData(16384, 4))->result, 16384);
  EXPECT_TRUE(kernel_->Read((*e)->dev_id(), 8192, 16384)->data == RandomData(16384, 4));
  EXPECT_TRUE(target->direct());
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
}

TEST_F(ZeroCopyTest, ODirectRefusedForAMisalignedBufferFallsBackToBuffered) {
  if (!DirectIoWorks(dir_)) GTEST_SKIP() << "no O_DIRECT in " << dir_;
  FakeKernelOptions o = FakeKernelOptions::Linux7();
  o.zero_copy_misalign = 8;
  UseKernel(o);
  AddWorkers(1);
  auto target = MakeFileTarget("a.img");
  ASSERT_TRUE(target->direct());
  auto e = Export::Create(*control_, Workers(), target, Options(1, 4));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Start().ok());
  auto w = kernel_->Write((*e)->dev_id(), 8192, RandomData(16384, 5));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, 16384);
  EXPECT_FALSE(target->direct());  // switched for good, the request redone
  EXPECT_TRUE(kernel_->Read((*e)->dev_id(), 8192, 16384)->data == RandomData(16384, 5));
  EXPECT_TRUE(ReadFileRange(dir_ + "/a.img", 8192, 16384) == RandomData(16384, 5));
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
}

// The server goes away while writes are streaming in (some handed over with
// their buffers registered, some queued); a new server on new workers, as
// after a restart, recovers the device in zero copy and every write lands.
TEST_F(ZeroCopyTest, RecoveryUnderIoComesBackInZeroCopy) {
  AddWorkers(2);
  ExportOptions o = RecoverableOptions(2, 8);
  auto target = MakeFileTarget("a.img");
  auto created = Export::Create(*control_, Workers(), target, o);
  ASSERT_TRUE(created.ok());
  auto e = std::move(*created);
  ASSERT_TRUE(e->Start().ok());
  const uint32_t id = e->dev_id();

  constexpr int kWrites = 96;
  std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
  for (int i = 0; i < kWrites; ++i) {
    reqs.push_back(
        kernel_->SubmitIoAsync(id, UBLK_IO_OP_WRITE, 8192u * i, 8192, RandomData(8192, 500 + i)));
    if (i == kWrites / 2) {
      ASSERT_TRUE(e->Detach().ok());  // the old server is gone mid-stream
    }
  }
  EXPECT_EQ(kernel_->DeviceState(id), UBLK_S_DEV_QUIESCED);
  EXPECT_EQ(FixedInUse(), 0u);  // the old queues gave their ranges back
  RecordProperty("buffers_registered_at_server_exit", kernel_->auto_buf_regs_at_close());

  // The "restarted" server: fresh workers, fresh rings and buffer tables.
  std::vector<std::unique_ptr<Worker>> old = std::move(workers_);
  workers_.clear();
  AddWorkers(2);
  auto recovered = Export::Recover(*control_, Workers(), target, id);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ((*recovered)->copy_mode(), CopyMode::kZeroCopy);
  EXPECT_EQ(FixedInUse(), 16u);
  for (int i = 0; i < kWrites; ++i) {
    auto r = kernel_->Wait(reqs[i], absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << i;
    EXPECT_EQ(r->result, 8192) << i;
  }
  for (int i = 0; i < kWrites; ++i) {
    EXPECT_TRUE(kernel_->Read(id, 8192u * i, 8192)->data == RandomData(8192, 500 + i)) << i;
  }
  ASSERT_TRUE((*recovered)->Stop().ok());
  ASSERT_TRUE((*recovered)->Delete().ok());
  for (auto& w : old) w->Stop();
}

// kill -9 while a WRITE is in the server's hands with its buffer
// registered: a hand-driven server fetches on its own ring (with its own
// buffer table), takes the WRITE, then dies (channel and ring gone). REISSUE
// hands the WRITE to the recovering server, which registers it afresh in its
// own ring; the data lands.
TEST_F(ZeroCopyTest, ServerKilledHoldingARegisteredBufferRecovers) {
  AddWorkers(1);
  ExportOptions o = RecoverableOptions(1, 4);
  auto target = MakeFileTarget("a.img");
  auto created = Export::Create(*control_, Workers(), target, o);
  ASSERT_TRUE(created.ok());
  ASSERT_TRUE((*created)->Start().ok());
  const uint32_t id = (*created)->dev_id();
  ASSERT_EQ(kernel_->Write(id, 0, RandomData(4096, 1))->result, 4096);
  ASSERT_TRUE((*created)->Detach().ok());

  std::shared_ptr<FakeKernel::Request> w;
  {
    // The doomed server.
    ASSERT_TRUE(control_->StartUserRecovery(id).ok());
    auto ring = Ring::Create(16);
    ASSERT_TRUE(ring.ok());
    ASSERT_EQ(io_uring_register_buffers_sparse((*ring)->raw(), 4), 0);
    auto ch = control_->OpenQueue(id, 0, 4);
    ASSERT_TRUE(ch.ok()) << ch.status();
    (*ch)->SetAutoBufRegBase(0);
    for (uint16_t t = 0; t < 4; ++t) ASSERT_TRUE((*ch)->PrepFetch(**ring, t, nullptr, t).ok());
    ASSERT_TRUE((*ring)->Submit().ok());
    ASSERT_TRUE(control_->EndUserRecovery(id, getpid()).ok());
    w = kernel_->SubmitIoAsync(id, UBLK_IO_OP_WRITE, 8192, 8192, RandomData(8192, 2));
    int delivered = 0;
    for (int i = 0; i < 100 && delivered == 0; ++i) {
      ASSERT_TRUE((*ring)->SubmitAndWait(absl::Milliseconds(50)).ok());
      (*ring)->DrainCompletions([&](const io_uring_cqe& c) {
        if ((*ch)->TranslateCompletion(static_cast<uint16_t>(c.user_data), c.res) ==
            UBLK_IO_RES_OK) {
          ++delivered;
        }
      });
    }
    ASSERT_EQ(delivered, 1);
    EXPECT_EQ(kernel_->auto_buf_regs(), 2);  // the first WRITE's, and this one
    EXPECT_EQ(kernel_->inflight(id), 1);
    // Dies: the channel closes, then the ring (and its buffer table) goes.
  }
  EXPECT_EQ(kernel_->auto_buf_regs_at_close(), 1);
  EXPECT_EQ(kernel_->DeviceState(id), UBLK_S_DEV_QUIESCED);
  auto recovered = Export::Recover(*control_, Workers(), target, id);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ((*recovered)->copy_mode(), CopyMode::kZeroCopy);
  auto wr = kernel_->Wait(w, absl::Seconds(5));
  ASSERT_TRUE(wr.ok());
  EXPECT_EQ(wr->result, 8192);
  auto r = kernel_->Read(id, 8192, 8192);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == RandomData(8192, 2));
  EXPECT_TRUE(kernel_->Read(id, 0, 4096)->data == RandomData(4096, 1));
  EXPECT_EQ(kernel_->auto_buf_regs(), 5);  // + the reissued WRITE + two READs
  ASSERT_TRUE((*recovered)->Stop().ok());
  ASSERT_TRUE((*recovered)->Delete().ok());
}

// The same worker serves the recovered queues (detach and recover in one
// process): the ranges the old queues held are cleared and reused.
TEST_F(ZeroCopyTest, RecoveryOnTheSameWorkersReusesClearedRanges) {
  AddWorkers(1, /*slots=*/8);
  ExportOptions o = RecoverableOptions(1, 8);
  auto target = MakeFileTarget("a.img");
  for (int round = 0; round < 3; ++round) {
    std::unique_ptr<Export> e;
    uint32_t id = 0;
    if (round == 0) {
      auto created = Export::Create(*control_, Workers(), target, o);
      ASSERT_TRUE(created.ok());
      e = std::move(*created);
      ASSERT_TRUE(e->Start().ok());
      id = e->dev_id();
    } else {
      auto recovered = Export::Recover(*control_, Workers(), target, 0);
      ASSERT_TRUE(recovered.ok()) << recovered.status();
      e = std::move(*recovered);
      id = e->dev_id();
    }
    std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
    for (int i = 0; i < 24; ++i) {
      reqs.push_back(kernel_->SubmitIoAsync(id, UBLK_IO_OP_WRITE, 4096u * i, 4096,
                                            RandomData(4096, round * 100 + i)));
    }
    ASSERT_TRUE(e->Detach().ok());
    EXPECT_EQ(FixedInUse(), 0u);
    auto again = Export::Recover(*control_, Workers(), target, id);
    ASSERT_TRUE(again.ok()) << again.status();
    for (auto& r : reqs) EXPECT_EQ(kernel_->Wait(r, absl::Seconds(10))->result, 4096);
    for (int i = 0; i < 24; ++i) {
      EXPECT_TRUE(kernel_->Read(id, 4096u * i, 4096)->data == RandomData(4096, round * 100 + i));
    }
    ASSERT_TRUE((*again)->Detach().ok());
  }
  EXPECT_EQ(kernel_->DeviceState(0), UBLK_S_DEV_QUIESCED);
}

}  // namespace
}  // namespace ublk
