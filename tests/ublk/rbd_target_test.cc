// RbdTarget end to end on the fake kernel and the fake Ceph cluster: data
// written through the "block device" lands in the image and reads back in
// both copy modes (zero copy falls back to one); flush/discard/write-zeroes;
// completions come back on the worker that started the I/O (not on the
// "OSD" thread that completed it); error mapping, the op timeout and its
// metric; a frozen cluster stalls I/O that then resumes; recovery.
#include "ublk/rbd_target.h"

#include <unistd.h>

#include <map>
#include <random>
#include <set>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ublk/export.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/mutex.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fake_rbd.h"
#include "ublk/worker.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSize = 4 << 20;
const RbdClusterConfig kCluster{"10.0.0.1:6789", "admin", "secret"};

std::string RandomData(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Records on which thread each I/O was started and finished.
class ThreadRecordingTarget final : public Target {
 public:
  explicit ThreadRecordingTarget(std::shared_ptr<RbdTarget> inner) : inner_(std::move(inner)) {}
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  bool supports_discard() const override { return inner_->supports_discard(); }
  const char* name() const override { return "recording"; }
  bool needs_user_buffer() const override { return inner_->needs_user_buffer(); }
  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override {
    {
      ublk::MutexLock lock(&mu_);
      started_[io.offset] = std::this_thread::get_id();
    }
    return inner_->StartIo(ring, io, user_data);
  }
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t res) override {
    {
      ublk::MutexLock lock(&mu_);
      finished_.emplace_back(io.offset, std::this_thread::get_id());
    }
    return inner_->FinishIo(io, res);
  }
  // (start thread, finish thread) for each finished I/O.
  std::vector<std::pair<std::thread::id, std::thread::id>> Pairs() {
    ublk::MutexLock lock(&mu_);
    std::vector<std::pair<std::thread::id, std::thread::id>> v;
    for (auto& [off, tid] : finished_) v.emplace_back(started_[off], tid);
    return v;
  }

 private:
  std::shared_ptr<RbdTarget> inner_;
  ublk::Mutex mu_;
  std::map<uint64_t, std::thread::id> started_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<uint64_t, std::thread::id>> finished_ ABSL_GUARDED_BY(mu_);
};

class RbdTargetTest : public ::testing::TestWithParam<CopyMode> {
 protected:
  void SetUp() override {
    cluster_.CreatePool("rbd");
    ASSERT_TRUE(cluster_.CreateImage("rbd", "vol", kSize).ok());
    client_.AddCluster(&cluster_);
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
  }
  std::vector<Worker*> Workers() {
    std::vector<Worker*> v;
    for (auto& w : workers_) v.push_back(w.get());
    return v;
  }
  std::shared_ptr<RbdTarget> OpenTarget(RadosConnections& connections,
                                        const std::string& image = "vol") {
    auto c = connections.Get(kCluster);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    RbdTargetOptions o;
    o.pool = "rbd";
    o.image = image;
    o.metrics = &metrics_;
    auto t = RbdTarget::Open(*c, o);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    return std::shared_ptr<RbdTarget>(std::move(*t));
  }
  ExportOptions Options(uint16_t queues = 1, uint16_t depth = 8) {
    ExportOptions o;
    o.nr_queues = queues;
    o.queue_depth = depth;
    o.copy_mode = GetParam();
    o.max_io_bytes = 128 * 1024;
    return o;
  }
  std::unique_ptr<Export> StartExport(std::shared_ptr<Target> target, const ExportOptions& o) {
    auto e = Export::Create(*control_, Workers(), std::move(target), o);
    EXPECT_TRUE(e.ok()) << e.status();
    if (!e.ok()) return nullptr;
    absl::Status s = (*e)->Start();
    EXPECT_TRUE(s.ok()) << s;
    return std::move(*e);
  }
  std::string Image(uint64_t off, size_t len) {
    auto d = cluster_.ReadImage("rbd", "vol", off, len);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : std::string();
  }

  FakeRbdCluster cluster_{kCluster.mon_host};
  FakeRbdClient client_;
  RbdMetrics metrics_{nullptr};
  FakeKernel kernel_{FakeKernelOptions::Linux612()};
  std::unique_ptr<ControlDevice> control_;
  RealMemorySource memory_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

TEST_P(RbdTargetTest, WritesLandInTheImageAndReadBack) {
  RadosConnections connections(client_, {});
  auto target = OpenTarget(connections);
  ASSERT_NE(target, nullptr);
  EXPECT_EQ(target->size_bytes(), kSize);
  auto e = StartExport(target, Options());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->copy_mode(), GetParam());

  const std::string data = RandomData(64 * 1024, 1);
  auto w = kernel_.Write(e->dev_id(), 8192, data);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->result, static_cast<int32_t>(data.size()));
  EXPECT_TRUE(Image(8192, data.size()) == data);
  auto r = kernel_.Read(e->dev_id(), 8192, data.size());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->result, static_cast<int32_t>(data.size()));
  EXPECT_TRUE(r->data == data);

  // Written by another client of the cluster: visible through the device.
  const std::string other = RandomData(4096, 2);
  ASSERT_TRUE(cluster_.WriteImage("rbd", "vol", kSize - 4096, other).ok());
  r = kernel_.Read(e->dev_id(), kSize - 4096, 4096);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == other);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, FlushDiscardAndWriteZeroes) {
  RadosConnections connections(client_, {});
  auto e = StartExport(OpenTarget(connections), Options());
  ASSERT_NE(e, nullptr);
  const std::string data = RandomData(32768, 3);
  ASSERT_EQ(kernel_.Write(e->dev_id(), 0, data)->result, 32768);
  const uint64_t before = cluster_.ops_completed();
  auto f = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_FLUSH, 0, 0);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->result, 0);
  EXPECT_EQ(cluster_.ops_completed(), before + 1);  // reached the cluster
  auto d = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_DISCARD, 4096, 8192);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->result, 0);
  auto z = kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_WRITE_ZEROES, 16384, 4096);
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(z->result, 0);
  std::string want = data;
  want.replace(4096, 8192, std::string(8192, '\0'));
  want.replace(16384, 4096, std::string(4096, '\0'));
  EXPECT_TRUE(Image(0, 32768) == want);
  EXPECT_TRUE(kernel_.Read(e->dev_id(), 0, 32768)->data == want);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, CompletionsComeBackOnTheWorkerThatStartedTheIo) {
  RadosConnections connections(client_, {});
  auto recording = std::make_shared<ThreadRecordingTarget>(OpenTarget(connections));
  auto e = StartExport(recording, Options(/*queues=*/2, /*depth=*/4));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(workers_[0]->queue_count(), 1u);
  EXPECT_EQ(workers_[1]->queue_count(), 1u);
  constexpr int kThreads = 4, kPerThread = 16;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
      for (int i = 0; i < kPerThread; ++i) {
        const uint64_t off = (static_cast<uint64_t>(t) * kPerThread + i) * 8192;
        reqs.push_back(kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, off, 8192,
                                             RandomData(8192, t * 100 + i)));
      }
      for (auto& r : reqs) {
        auto res = kernel_.Wait(r, absl::Seconds(10));
        if (!res.ok() || res->result != 8192) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  auto pairs = recording->Pairs();
  ASSERT_EQ(pairs.size(), static_cast<size_t>(kThreads * kPerThread));
  std::set<std::thread::id> worker_threads;
  for (auto& [start, finish] : pairs) {
    EXPECT_EQ(start, finish);                     // the same worker
    EXPECT_NE(finish, cluster_.osd_thread_id());  // not librbd's thread
    worker_threads.insert(finish);
  }
  EXPECT_EQ(worker_threads.size(), 2u);  // both queues served, each on its worker
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      const uint64_t off = (static_cast<uint64_t>(t) * kPerThread + i) * 8192;
      EXPECT_TRUE(Image(off, 8192) == RandomData(8192, t * 100 + i)) << off;
    }
  }
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, ClusterErrorsMapToBlockErrors) {
  RadosConnections connections(client_, {});
  auto e = StartExport(OpenTarget(connections), Options());
  ASSERT_NE(e, nullptr);
  cluster_.FailNextOps(1, -EDQUOT);
  EXPECT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'x'))->result, -ENOSPC);
  cluster_.FailNextOps(1, -EROFS);
  EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 4096)->result, -EIO);
  cluster_.FailNextOps(1, -EOPNOTSUPP);
  EXPECT_EQ(kernel_.SubmitIo(e->dev_id(), UBLK_IO_OP_WRITE_ZEROES, 0, 4096)->result, -EOPNOTSUPP);
  EXPECT_EQ(metrics_.errors(), 3u);
  EXPECT_EQ(metrics_.timeouts(), 0u);
  // The failed ops changed nothing; the next ones work.
  EXPECT_TRUE(Image(0, 4096) == std::string(4096, '\0'));
  EXPECT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'y'))->result, 4096);
  EXPECT_TRUE(Image(0, 4096) == std::string(4096, 'y'));
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, OpTimeoutFailsAFrozenIoWithEioAndCountsIt) {
  RbdConnectOptions co;
  co.op_timeout = absl::Milliseconds(200);
  RadosConnections connections(client_, co);
  auto e = StartExport(OpenTarget(connections), Options());
  ASSERT_NE(e, nullptr);
  cluster_.SetOsdsFrozen(true);
  const absl::Time start = absl::Now();
  auto w = kernel_.Write(e->dev_id(), 0, std::string(4096, 'x'));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->result, -EIO);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_EQ(metrics_.timeouts(), 1u);
  EXPECT_EQ(metrics_.errors(), 1u);
  cluster_.SetOsdsFrozen(false);
  EXPECT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'y'))->result, 4096);
  EXPECT_EQ(metrics_.timeouts(), 1u);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, WithoutOpTimeoutAFrozenClusterStallsIoThatThenResumes) {
  RbdConnectOptions co;
  co.op_timeout = absl::ZeroDuration();
  RadosConnections connections(client_, co);
  auto e = StartExport(OpenTarget(connections), Options());
  ASSERT_NE(e, nullptr);
  cluster_.SetOsdsFrozen(true);
  const std::string data = RandomData(8192, 5);
  auto pending = kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, 4096, 8192, data);
  EXPECT_EQ(kernel_.Wait(pending, absl::Milliseconds(300)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  cluster_.SetOsdsFrozen(false);
  auto done = kernel_.Wait(pending, absl::Seconds(10));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->result, 8192);
  EXPECT_TRUE(Image(4096, 8192) == data);
  EXPECT_EQ(metrics_.errors(), 0u);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(RbdTargetTest, ReadCutShortAtTheImageEndIsZeroFilled) {
  RadosConnections connections(client_, {});
  auto e = StartExport(OpenTarget(connections), Options());
  ASSERT_NE(e, nullptr);
  const std::string tail = RandomData(8192, 6);
  ASSERT_EQ(kernel_.Write(e->dev_id(), kSize - 8192, tail)->result, 8192);
  // Another client shrinks the image under the mapped device.
  ASSERT_TRUE(cluster_.ResizeImage("rbd", "vol", kSize - 4096).ok());
  auto r = kernel_.Read(e->dev_id(), kSize - 8192, 8192);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->result, 8192);
  EXPECT_TRUE(r->data == tail.substr(0, 4096) + std::string(4096, '\0'));
  // A write past the image's end is an error, not silent loss.
  EXPECT_EQ(kernel_.Write(e->dev_id(), kSize - 4096, std::string(4096, 'z'))->result, -EIO);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// The plugin restarts: its queues are dropped with the device quiesced; a
// new process with a new connection recovers it and I/O issued meanwhile
// completes with the data.
TEST_P(RbdTargetTest, RecoveryOnANewConnection) {
  auto first = std::make_unique<RadosConnections>(client_, RbdConnectOptions{});
  ExportOptions o = Options();
  o.user_recovery = true;
  o.user_recovery_reissue = true;
  auto created = Export::Create(*control_, Workers(), OpenTarget(*first), o);
  ASSERT_TRUE(created.ok()) << created.status();
  auto e = std::move(*created);
  ASSERT_TRUE(e->Start().ok());
  const uint32_t id = e->dev_id();
  const std::string before = RandomData(8192, 7);
  ASSERT_EQ(kernel_.Write(id, 0, before)->result, 8192);
  ASSERT_TRUE(e->Detach().ok());
  e.reset();
  first.reset();  // the old process's connection is gone
  EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_QUIESCED);
  const std::string during = RandomData(4096, 8);
  auto pending = kernel_.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 65536, 4096, during);

  RadosConnections second(client_, {});
  auto recovered = Export::Recover(*control_, Workers(), OpenTarget(second), id);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  auto w = kernel_.Wait(pending, absl::Seconds(10));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, 4096);
  EXPECT_TRUE(Image(65536, 4096) == during);
  EXPECT_TRUE(kernel_.Read(id, 0, 8192)->data == before);
  EXPECT_EQ(cluster_.connects(), 2);
  ASSERT_TRUE((*recovered)->Stop().ok());
  ASSERT_TRUE((*recovered)->Delete().ok());
}

INSTANTIATE_TEST_SUITE_P(CopyModes, RbdTargetTest,
                         ::testing::Values(CopyMode::kUserCopy, CopyMode::kGetData),
                         [](const auto& info) { return std::string(CopyModeName(info.param)); });

TEST(RbdCopyModeTest, ZeroCopyIsRefusedAndCopyModeForPicksACopyMode) {
  FakeRbdCluster cluster(kCluster.mon_host);
  cluster.CreatePool("rbd");
  ASSERT_TRUE(cluster.CreateImage("rbd", "vol", kSize).ok());
  FakeRbdClient client;
  client.AddCluster(&cluster);
  RadosConnections connections(client, {});
  auto c = connections.Get(kCluster);
  ASSERT_TRUE(c.ok());
  auto t = RbdTarget::Open(*c, {"rbd", "", "vol"});
  ASSERT_TRUE(t.ok()) << t.status();
  std::shared_ptr<Target> target(std::move(*t));

  EXPECT_EQ(CopyModeFor(CopyMode::kZeroCopy, kFake7Features, *target), CopyMode::kUserCopy);
  EXPECT_EQ(CopyModeFor(CopyMode::kZeroCopy, kFake7Features & ~UBLK_F_USER_COPY, *target),
            CopyMode::kGetData);
  EXPECT_EQ(CopyModeFor(CopyMode::kGetData, kFake61Features, *target), CopyMode::kGetData);
  auto file = FileTarget::Open({::testing::TempDir() + "/rbd_copy_mode.img", kSize, true, false});
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(CopyModeFor(CopyMode::kZeroCopy, kFake7Features, **file), CopyMode::kZeroCopy);

  FakeKernelOptions ko = FakeKernelOptions::Linux7();
  FakeKernel kernel(ko);
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  RealMemorySource memory;
  WorkerOptions wo;
  wo.memory = &memory;
  wo.ring_flags_allowed = kernel.worker_ring_flags();
  auto w = Worker::Create(wo);
  ASSERT_TRUE(w.ok());
  ExportOptions o;
  o.copy_mode = CopyMode::kZeroCopy;
  auto e = Export::Create(*control, {w->get()}, target, o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("rbd target"));
  EXPECT_EQ(kernel.device_count(), 0u);
  // The mode CopyModeFor gives works on the same kernel.
  o.copy_mode = CopyModeFor(CopyMode::kZeroCopy, ko.features, *target);
  auto ok = Export::Create(*control, {w->get()}, target, o);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_TRUE((*ok)->Start().ok());
  ASSERT_EQ(kernel.Write((*ok)->dev_id(), 0, std::string(4096, 'q'))->result, 4096);
  EXPECT_TRUE(*cluster.ReadImage("rbd", "vol", 0, 4096) == std::string(4096, 'q'));
  ASSERT_TRUE((*ok)->Stop().ok());
  ASSERT_TRUE((*ok)->Delete().ok());
  (*w)->Stop();
  unlink((::testing::TempDir() + "/rbd_copy_mode.img").c_str());
}

TEST(RbdTargetOpenTest, BadSpecsAreClearErrors) {
  FakeRbdCluster cluster(kCluster.mon_host);
  cluster.CreatePool("rbd");
  ASSERT_TRUE(cluster.CreateImage("rbd", "small", 1 << 20).ok());
  FakeRbdClient client;
  client.AddCluster(&cluster);
  RadosConnections connections(client, {});
  auto c = connections.Get(kCluster);
  ASSERT_TRUE(c.ok());
  auto missing = RbdTarget::Open(*c, {"rbd", "", "nope"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("rbd/nope"));
  auto no_pool = RbdTarget::Open(*c, {"nopool", "", "small"});
  EXPECT_EQ(no_pool.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(RbdTarget::Open(*c, {"", "", "small"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RbdTarget::Open(*c, {"rbd", "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  RbdTargetOptions too_big{"rbd", "", "small", 2 << 20, nullptr};
  EXPECT_EQ(RbdTarget::Open(*c, too_big).status().code(), absl::StatusCode::kFailedPrecondition);
  // Grow follows the image: refused until it is resized, then taken.
  auto t = RbdTarget::Open(*c, {"rbd", "", "small"});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->Grow(2 << 20).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cluster.ResizeImage("rbd", "small", 2 << 20).ok());
  ASSERT_TRUE((*t)->Grow(2 << 20).ok());
  EXPECT_EQ((*t)->size_bytes(), uint64_t{2} << 20);
}

TEST(RbdResultTest, Mapping) {
  EXPECT_EQ(RbdResultToUblk(-ETIMEDOUT), -EIO);
  EXPECT_EQ(RbdResultToUblk(-ENOSPC), -ENOSPC);
  EXPECT_EQ(RbdResultToUblk(-EDQUOT), -ENOSPC);
  EXPECT_EQ(RbdResultToUblk(-EOPNOTSUPP), -EOPNOTSUPP);
  EXPECT_EQ(RbdResultToUblk(-ESHUTDOWN), -EIO);
  EXPECT_EQ(RbdResultToUblk(-EINVAL), -EIO);
}

}  // namespace
}  // namespace ublk
