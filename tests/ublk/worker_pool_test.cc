// WorkerPool: worker count and memory budget, queue assignment, exports
// coming and going on a running pool, per-worker metrics; and the
// degrade-to-heap guarantees seen from whole exports on the fake kernel:
// heap exhaustion requeues I/O (issue 6 (d)), and the seed incident, 66
// exports recovering at once while every mmap fails (issue 6 (e)).
#include "ublk/worker_pool.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "tests/testing/data.h"
#include "tests/testing/log_capture.h"
#include "ublk/export.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/mutex.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fault_memory.h"

// glog 0.6 calls mktime() for every line; glibc's tzset then frees and
// re-strdup()s its TZ copy under a libc-internal lock that TSan cannot see, so
// two threads logging at once are reported as a race inside libc. Only that
// frame is suppressed; this symbol is ignored by non-TSan builds.
extern "C" const char* __tsan_default_suppressions() { return "race:tzset_internal\n"; }

namespace ublk {
namespace {

using ublk_test::Pattern;

using ::testing::HasSubstr;

using ublk_test::LogCapture;

std::string WorkerTag(size_t id) { return absl::StrCat("worker ", id, ":"); }
const std::string kDegradeText = "cannot create buffer pool";
const std::string kRecoverText = "buffer pool of";

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/worker_pool_test.XXXXXX";
  char* d = mkdtemp(tmpl.data());
  EXPECT_NE(d, nullptr);
  return tmpl;
}

// The value of `name`{worker="<worker>"}, or NaN (equal to nothing) if there
// is no such series.
double MetricValue(prometheus::Registry& registry, const std::string& name, size_t worker) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      for (const auto& label : m.label) {
        if (label.name == "worker" && label.value == std::to_string(worker)) {
          return family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
        }
      }
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

std::vector<int> Ids(const std::vector<Worker*>& workers) {
  std::vector<int> ids;
  for (Worker* w : workers) ids.push_back(w->id());
  return ids;
}

class WorkerPoolTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  WorkerPoolOptions Options(int workers) {
    WorkerPoolOptions o;
    o.worker_count = workers;
    o.memory = &memory_;
    o.ring_entries = 256;
    o.metrics_refresh_interval = absl::ZeroDuration();
    return o;
  }
  std::unique_ptr<WorkerPool> MakePool(const WorkerPoolOptions& o,
                                       prometheus::Registry* registry = nullptr) {
    auto pool = WorkerPool::Create(o, registry);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? std::move(*pool) : nullptr;
  }
  std::shared_ptr<FileTarget> MakeFileTarget(const std::string& name, uint64_t size) {
    if (dir_.empty()) dir_ = MakeTempDir();
    auto t = FileTarget::Open({dir_ + "/" + name, size, /*create=*/true, true});
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::shared_ptr<FileTarget>(std::move(*t)) : nullptr;
  }

  RealMemorySource real_;
  FaultInjectingMemorySource memory_{real_};
  std::string dir_;
};

TEST_F(WorkerPoolTest, DefaultIsOneWorkerPerCpuAtLeastFourAndMapsNothingAtStart) {
  prometheus::Registry registry;
  auto pool = MakePool(Options(0), &registry);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->size(), std::max(4u, std::thread::hardware_concurrency()));
  EXPECT_GE(pool->size(), static_cast<size_t>(kMinDefaultWorkers));
  // The incident: pools committed at worker start. Here nothing is touched.
  EXPECT_EQ(memory_.map_calls(), 0);
  EXPECT_EQ(memory_.heap_calls(), 0);
  const BufferPoolOptions& bp = pool->buffer_pool_options();
  EXPECT_LE(pool->size() * bp.slot_count * bp.slot_size, size_t{64} << 20);
  EXPECT_EQ(bp.slot_size, BufferPoolOptions::kDefaultSlotSize);
  for (size_t i = 0; i < pool->size(); ++i) {
    EXPECT_EQ(pool->worker(i)->id(), static_cast<int>(i));
    EXPECT_EQ(pool->assigned_queues(i), 0u);
    EXPECT_FALSE(pool->worker(i)->buffer_pool_degraded());
  }
  ASSERT_NE(pool->buffer_pool_metrics(), nullptr);
  EXPECT_EQ(pool->buffer_pool_metrics()->degraded_workers(), 0);
  pool->Stop();
  pool->Stop();  // idempotent
  EXPECT_TRUE(pool->Assign(1).empty());
}

// --pin-workers: worker i runs on the i-th CPU the process may use, round
// robin when there are more workers than CPUs; off, no worker is pinned.
TEST_F(WorkerPoolTest, PinWorkersSpreadsTheWorkersOverTheAllowedCpus) {
  const std::vector<int> cpus = AllowedCpus();
  ASSERT_FALSE(cpus.empty());
  WorkerPoolOptions o = Options(static_cast<int>(cpus.size()) + 1);
  o.pin_workers = true;
  prometheus::Registry registry;
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  for (size_t i = 0; i < pool->size(); ++i) {
    const int cpu = cpus[i % cpus.size()];
    EXPECT_EQ(pool->worker(i)->pinned_cpu(), cpu) << "worker " << i;
    EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_pinned_cpu", i), cpu) << "worker " << i;
  }
  prometheus::Registry unpinned_registry;
  auto unpinned = MakePool(Options(2), &unpinned_registry);
  ASSERT_NE(unpinned, nullptr);
  for (size_t i = 0; i < unpinned->size(); ++i) {
    EXPECT_EQ(unpinned->worker(i)->pinned_cpu(), -1);
    EXPECT_EQ(MetricValue(unpinned_registry, "ublk_csi_worker_pinned_cpu", i), -1);
  }
}

TEST_F(WorkerPoolTest, BudgetIsSplitOverTheWorkers) {
  WorkerPoolOptions o = Options(16);
  auto bp = o.BufferPoolFor(16);
  ASSERT_TRUE(bp.ok()) << bp.status();
  // The incident's node: 16 workers. 64 MiB / 16 / 128 KiB = 32 slots each.
  EXPECT_EQ(bp->slot_count, 32u);
  EXPECT_EQ(16 * bp->slot_count * bp->slot_size, size_t{64} << 20);
  bp = o.BufferPoolFor(2);
  ASSERT_TRUE(bp.ok());
  EXPECT_EQ(bp->slot_count, 256u);
  bp = o.BufferPoolFor(3);  // rounds down: never above the budget
  ASSERT_TRUE(bp.ok());
  EXPECT_EQ(bp->slot_count, 170u);
  EXPECT_LE(3 * bp->slot_count * bp->slot_size, size_t{64} << 20);

  o.buffer_pool_bytes = 8 << 20;
  o.buffer_slot_size = 64 * 1024;
  o.buffer_retry_interval = absl::Milliseconds(250);
  bp = o.BufferPoolFor(4);
  ASSERT_TRUE(bp.ok());
  EXPECT_EQ(bp->slot_count, 32u);
  EXPECT_EQ(bp->slot_size, 64u * 1024);
  EXPECT_EQ(bp->retry_interval, absl::Milliseconds(250));

  o.buffer_slots_per_worker = 7;  // explicit count wins over the budget
  bp = o.BufferPoolFor(4);
  ASSERT_TRUE(bp.ok());
  EXPECT_EQ(bp->slot_count, 7u);
}

TEST_F(WorkerPoolTest, BadOptionsAreInvalidArgumentNamingTheField) {
  auto check = [&](auto mutate, const char* field) {
    WorkerPoolOptions o = Options(2);
    mutate(o);
    auto pool = WorkerPool::Create(o, nullptr);
    EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(pool.status().message()), HasSubstr(field));
  };
  check([](WorkerPoolOptions& o) { o.memory = nullptr; }, "memory");
  check([](WorkerPoolOptions& o) { o.worker_count = -1; }, "worker_count");
  check([](WorkerPoolOptions& o) { o.buffer_pool_bytes = 4096; }, "buffer_pool_bytes");
  check([](WorkerPoolOptions& o) { o.buffer_slot_size = 1000; }, "slot_size");
  check([](WorkerPoolOptions& o) { o.buffer_slots_per_worker = 0; }, "slot_count");
  check([](WorkerPoolOptions& o) { o.buffer_retry_interval = absl::ZeroDuration(); },
        "retry_interval");
  check([](WorkerPoolOptions& o) { o.metrics_refresh_interval = -absl::Seconds(1); },
        "metrics_refresh_interval");
}

TEST_F(WorkerPoolTest, AssignPicksTheLeastLoadedWorkers) {
  auto pool = MakePool(Options(4));
  ASSERT_NE(pool, nullptr);
  // Single-queue exports go round the workers.
  std::vector<std::vector<Worker*>> a;
  for (int i = 0; i < 4; ++i) a.push_back(pool->Assign(1));
  EXPECT_EQ(Ids(a[0]), std::vector<int>{0});
  EXPECT_EQ(Ids(a[1]), std::vector<int>{1});
  EXPECT_EQ(Ids(a[2]), std::vector<int>{2});
  EXPECT_EQ(Ids(a[3]), std::vector<int>{3});
  // A multi-queue export spreads its queues over distinct workers.
  std::vector<Worker*> two = pool->Assign(2);
  EXPECT_EQ(Ids(two), (std::vector<int>{0, 1}));
  // Worker 2's export goes away: it is the emptiest now.
  pool->Release(a[2]);
  EXPECT_EQ(pool->assigned_queues(2), 0u);
  EXPECT_EQ(Ids(pool->Assign(1)), std::vector<int>{2});
  // More queues than workers wrap around, least loaded first.
  std::vector<Worker*> six = pool->Assign(6);
  EXPECT_EQ(Ids(six), (std::vector<int>{2, 3, 0, 1, 2, 3}));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(pool->assigned_queues(i), 3u) << i;
  EXPECT_TRUE(pool->Assign(0).empty());

  // Releasing what is not ours, or more than was assigned, changes nothing.
  auto other = MakePool(Options(1));
  pool->Release(other->Assign(1));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(pool->assigned_queues(i), 3u) << i;
  pool->Release(six);
  pool->Release(two);
  pool->Release(a[0]);
  pool->Release(a[1]);
  pool->Release(a[3]);
  std::vector<Worker*> w2{pool->worker(2)};
  pool->Release(w2);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(pool->assigned_queues(i), 0u) << i;
  pool->Release(w2);  // one too many: logged, stays 0
  EXPECT_EQ(pool->assigned_queues(2), 0u);
}

TEST_F(WorkerPoolTest, ConcurrentAssignmentsStayBalanced) {
  auto pool = MakePool(Options(3));
  ASSERT_NE(pool, nullptr);
  std::vector<std::thread> threads;
  ublk::Mutex mu;
  std::vector<std::vector<Worker*>> all;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto w = pool->Assign(1 + i % 2);
        ublk::MutexLock lock(&mu);
        all.push_back(std::move(w));
      }
    });
  }
  for (auto& t : threads) t.join();
  // 6 x 50 x 1.5 = 450 queues: exactly 150 each, whatever the interleaving.
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(pool->assigned_queues(i), 150u) << i;
  for (auto& w : all) pool->Release(w);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(pool->assigned_queues(i), 0u) << i;
}

// Exports are added to and removed from a running pool while another export
// keeps serving I/O: that export never sees an error or a stall.
TEST_F(WorkerPoolTest, ExportsComeAndGoWithoutDisturbingOthers) {
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  prometheus::Registry registry;
  auto pool = MakePool(Options(2), &registry);
  ASSERT_NE(pool, nullptr);
  constexpr uint64_t kSize = 1 << 20;
  ExportOptions eo;
  eo.nr_queues = 2;
  eo.queue_depth = 4;
  eo.max_io_bytes = static_cast<uint32_t>(pool->buffer_pool_options().slot_size);
  std::vector<Worker*> steady_workers = pool->Assign(eo.nr_queues);
  auto steady = Export::Create(*control, steady_workers, MakeFileTarget("steady", kSize), eo);
  ASSERT_TRUE(steady.ok()) << steady.status();
  ASSERT_TRUE((*steady)->Start().ok());
  const uint32_t steady_id = (*steady)->dev_id();

  std::atomic<bool> done{false};
  std::atomic<int> ios{0}, bad{0};
  std::thread io([&] {
    for (unsigned i = 0; !done.load() || i < 20; ++i) {
      const uint64_t off = (i % 64) * 8192;
      const std::string data = Pattern(8192, i);
      auto w = kernel.Write(steady_id, off, data);
      auto r = kernel.Read(steady_id, off, 8192);
      if (!w.ok() || w->result != 8192 || !r.ok() || r->data != data) ++bad;
      ++ios;
    }
  });
  for (int round = 0; round < 5; ++round) {
    std::vector<std::unique_ptr<Export>> extra;
    std::vector<std::vector<Worker*>> assigned;
    for (int j = 0; j < 3; ++j) {
      assigned.push_back(pool->Assign(eo.nr_queues));
      auto e = Export::Create(*control, assigned.back(),
                              MakeFileTarget(absl::StrCat("extra", j), kSize), eo);
      ASSERT_TRUE(e.ok()) << e.status();
      ASSERT_TRUE((*e)->Start().ok());
      auto w = kernel.Write((*e)->dev_id(), 0, Pattern(4096, round * 10 + j));
      ASSERT_TRUE(w.ok());
      EXPECT_EQ(w->result, 4096);
      extra.push_back(std::move(*e));
    }
    EXPECT_EQ(pool->worker(0)->queue_count() + pool->worker(1)->queue_count(), 8u);
    EXPECT_EQ(pool->assigned_queues(0), 4u);
    EXPECT_EQ(pool->assigned_queues(1), 4u);
    for (size_t j = 0; j < extra.size(); ++j) {
      auto r = kernel.Read(extra[j]->dev_id(), 0, 4096);
      ASSERT_TRUE(r.ok());
      EXPECT_TRUE(r->data == Pattern(4096, round * 10 + static_cast<unsigned>(j)));
      ASSERT_TRUE(extra[j]->Stop().ok());
      ASSERT_TRUE(extra[j]->Delete().ok());
      pool->Release(assigned[j]);
    }
    EXPECT_EQ(pool->worker(0)->queue_count() + pool->worker(1)->queue_count(), 2u);
  }
  done = true;
  io.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GE(ios.load(), 20);

  // A request reaches the block layer an instant before its worker counts
  // it: wait for the count to settle.
  auto served_now = [&] {
    return pool->worker(0)->completed_ios() + pool->worker(1)->completed_ios();
  };
  const uint64_t expected_served = 2 * static_cast<uint64_t>(ios.load()) + 2 * 3 * 5;
  for (int i = 0; i < 400 && served_now() < expected_served; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  pool->UpdateMetrics();
  double served = 0;
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_ios_total", i),
              static_cast<double>(pool->worker(i)->completed_ios()));
    EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_queues", i), 1);
    EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_assigned_queues", i), 1);
    served += MetricValue(registry, "ublk_csi_worker_ios_total", i);
    // Both workers served I/O, so both slept and (default rounds) polled;
    // the workers' own counts may have moved on since UpdateMetrics.
    const double sleeps = MetricValue(registry, "ublk_csi_worker_sleeps_total", i);
    const double polls = MetricValue(registry, "ublk_csi_worker_busy_polls_total", i);
    EXPECT_GT(sleeps, 0);
    EXPECT_LE(sleeps, static_cast<double>(pool->worker(i)->sleeps()));
    EXPECT_GT(polls, 0);
    EXPECT_LE(polls, static_cast<double>(pool->worker(i)->polls()));
  }
  // 2 per loop on the steady export, 2 per extra export per round.
  EXPECT_GE(served, static_cast<double>(expected_served));
  ASSERT_TRUE((*steady)->Stop().ok());
  ASSERT_TRUE((*steady)->Delete().ok());
  pool->Release(steady_workers);
  pool->UpdateMetrics();
  EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_queues", 0), 0);
  EXPECT_EQ(kernel.device_count(), 0u);
}

// Pools sized to what is served: one small export maps one chunk, not the
// worker's whole share of the node budget; the pool never grows past the
// depth of the queues attached, and goes when the last one does.
TEST_F(WorkerPoolTest, PoolFollowsTheQueuesItServes) {
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  prometheus::Registry registry;
  WorkerPoolOptions o = Options(1);  // 64 MiB budget: 512 slots, chunks of 8
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  ASSERT_EQ(pool->buffer_pool_options().slot_count, 512u);
  ExportOptions eo;
  eo.queue_depth = 4;
  eo.max_io_bytes = 128 * 1024;
  auto workers = pool->Assign(1);
  auto small = Export::Create(*control, workers, MakeFileTarget("small", 1 << 20), eo);
  ASSERT_TRUE(small.ok()) << small.status();
  ASSERT_TRUE((*small)->Start().ok());
  ASSERT_EQ(kernel.Write((*small)->dev_id(), 0, Pattern(65536, 1))->result, 65536);
  EXPECT_EQ(pool->buffer_pool_metrics()->pool_bytes(0), 8.0 * 128 * 1024);  // 1 MiB, not 64
  EXPECT_EQ(memory_.live_maps(), 1);

  // A deep queue with many requests in flight: the pool grows, by chunks,
  // up to at most the depth attached (4 + 32 slots -> 5 chunks).
  eo.queue_depth = 32;
  auto workers2 = pool->Assign(1);
  auto deep = Export::Create(*control, workers2, MakeFileTarget("deep", 4 << 20), eo);
  ASSERT_TRUE(deep.ok()) << deep.status();
  ASSERT_TRUE((*deep)->Start().ok());
  std::vector<std::shared_ptr<FakeKernel::Request>> reqs;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 32; ++i) {
      reqs.push_back(kernel.SubmitIoAsync((*deep)->dev_id(), UBLK_IO_OP_WRITE, uint64_t(i) * 131072,
                                          131072, Pattern(131072, i)));
    }
    for (auto& r : reqs) ASSERT_EQ(kernel.Wait(r, absl::Seconds(10))->result, 131072);
    reqs.clear();
  }
  const double bytes = pool->buffer_pool_metrics()->pool_bytes(0);
  EXPECT_GE(bytes, 8.0 * 128 * 1024);
  EXPECT_LE(bytes, 40.0 * 128 * 1024);
  EXPECT_EQ(pool->buffer_pool_metrics()->heap_fallbacks(0), 0);

  for (auto* e : {&*small, &*deep}) {
    ASSERT_TRUE((*e)->Stop().ok());
    ASSERT_TRUE((*e)->Delete().ok());
  }
  pool->Release(workers);
  pool->Release(workers2);
  // Nothing left to serve: the pool is gone with the last queue.
  for (int i = 0; i < 200 && memory_.live_maps() != 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(pool->buffer_pool_metrics()->pool_bytes(0), 0);
}

// Issue 17: under a memory cgroup with no headroom the I/O is parked (no
// pool is mapped, no heap block even tried), counted in the metrics, and
// served as soon as the limit is raised.
TEST_F(WorkerPoolTest, NoHeadroomParksIoUntilTheLimitIsRaised) {
  constexpr uint64_t kMiB = 1 << 20;
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  prometheus::Registry registry;
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 40 * kMiB, 36 * kMiB);  // 4 MiB free, margin 8
  WorkerPoolOptions o = Options(1);
  o.budget = MemoryBudgetOptions{};
  o.memory_files = &files;
  o.budget_refresh_interval = absl::ZeroDuration();
  o.buffer_retry_interval = absl::Milliseconds(20);
  o.no_memory_retry = absl::Milliseconds(2);
  LogCapture logs;
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  ASSERT_NE(pool->memory_budget(), nullptr);
  EXPECT_EQ(pool->memory_budget()->limit(), 40 * kMiB);
  ExportOptions eo;
  eo.queue_depth = 4;
  eo.max_io_bytes = 128 * 1024;
  auto workers = pool->Assign(1);
  auto e = Export::Create(*control, workers, MakeFileTarget("d", 1 << 20), eo);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->Start().ok());

  const std::string data = Pattern(16384, 9);
  auto write = kernel.SubmitIoAsync((*e)->dev_id(), UBLK_IO_OP_WRITE, 0, 16384, data);
  EXPECT_EQ(kernel.Wait(write, absl::Milliseconds(100)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->worker(0)->parked_ios(), 1u);
  EXPECT_EQ(memory_.map_calls(), 0);                // refused before mapping anything
  EXPECT_EQ(memory_.heap_calls(), 0);               // ... or allocating anything
  EXPECT_GT(pool->memory_budget()->denials(), 1u);  // and retried
  pool->UpdateMetrics();
  pool->RefreshBudget();
  EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_parked_ios", 0), 1);
  EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_parked_ios_total", 0), 1);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {WorkerTag(0), "refused by the memory budget"}), 1);

  files.SetCgroupV2("/plugin", 80 * kMiB, 36 * kMiB);
  pool->RefreshBudget();
  auto done = kernel.Wait(write, absl::Seconds(5));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->result, 16384);
  auto r = kernel.Read((*e)->dev_id(), 0, 16384);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == data);
  // The pool comes back (its chunk admitted now), after the retry interval.
  for (int i = 0; i < 100 && pool->buffer_pool_metrics()->pool_bytes(0) == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(25));
    ASSERT_EQ(kernel.Write((*e)->dev_id(), 0, Pattern(4096, i))->result, 4096);
  }
  EXPECT_GT(pool->buffer_pool_metrics()->pool_bytes(0), 0);
  EXPECT_EQ(pool->worker(0)->parked_ios(), 0u);
  EXPECT_EQ(pool->memory_budget()->charged(),
            static_cast<uint64_t>(pool->buffer_pool_metrics()->pool_bytes(0)));
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
  pool->Release(workers);
  pool.reset();
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

// memory.high throttling: the workers give their idle pools back (one line
// each), and I/O goes on.
TEST_F(WorkerPoolTest, MemoryHighEventsReleaseIdlePools) {
  constexpr uint64_t kMiB = 1 << 20;
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 200 * kMiB, 30 * kMiB, /*high_events=*/2);
  WorkerPoolOptions o = Options(1);
  o.budget = MemoryBudgetOptions{};
  o.memory_files = &files;
  o.budget_refresh_interval = absl::ZeroDuration();
  LogCapture logs;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  ExportOptions eo;
  eo.queue_depth = 4;
  eo.max_io_bytes = 128 * 1024;
  auto workers = pool->Assign(1);
  auto e = Export::Create(*control, workers, MakeFileTarget("d", 1 << 20), eo);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->Start().ok());
  ASSERT_EQ(kernel.Write((*e)->dev_id(), 0, Pattern(8192, 1))->result, 8192);
  for (int i = 0; i < 200 && pool->worker(0)->buffer_pool_bytes() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GT(pool->worker(0)->buffer_pool_bytes(), 0u);
  EXPECT_EQ(memory_.live_maps(), 1);

  files.SetCgroupV2("/plugin", 200 * kMiB, 30 * kMiB, /*high_events=*/9);
  pool->RefreshBudget();
  for (int i = 0; i < 200 && memory_.live_maps() != 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(pool->memory_budget()->high_events(), 7u);
  EXPECT_EQ(pool->memory_budget()->charged(), 0u);
  // The worker logs after it unmaps: wait for the line, then make sure it is one.
  EXPECT_EQ(
      logs.CountWhenAtLeast(google::GLOG_INFO, {WorkerTag(0), "released its idle buffer pool"}, 1),
      1);
  // I/O goes on.
  ASSERT_EQ(kernel.Write((*e)->dev_id(), 4096, Pattern(8192, 2))->result, 8192);
  auto r = kernel.Read((*e)->dev_id(), 4096, 8192);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == Pattern(8192, 2));
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
  pool->Release(workers);
}

TEST_F(WorkerPoolTest, MetricsThreadRefreshesWithoutBeingAsked) {
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  prometheus::Registry registry;
  WorkerPoolOptions o = Options(1);
  o.metrics_refresh_interval = absl::Milliseconds(5);
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  ExportOptions eo;
  eo.queue_depth = 2;
  eo.max_io_bytes = 128 * 1024;
  auto workers = pool->Assign(1);
  auto e = Export::Create(*control, workers, MakeFileTarget("m", 1 << 20), eo);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->Start().ok());
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(kernel.Write((*e)->dev_id(), 0, Pattern(512, i))->result, 512);
  double v = -1;
  for (int i = 0; i < 400 && v < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
    v = MetricValue(registry, "ublk_csi_worker_ios_total", 0);
  }
  EXPECT_EQ(v, 3);
  EXPECT_EQ(MetricValue(registry, "ublk_csi_worker_queues", 0), 1);
  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
  pool->Release(workers);
}

class WorkerPoolModeTest : public WorkerPoolTest, public ::testing::WithParamInterface<CopyMode> {};

// Issue 6 (d) at the worker level: no pool and no heap either. The I/O is
// parked, not failed to the kernel; it completes, with its data, once the
// heap works again, and the worker logs one line for each transition.
TEST_P(WorkerPoolModeTest, HeapFailingTooRequeuesIoUntilMemoryReturns) {
  LogCapture logs;
  FakeKernel kernel;
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  FakeClock clock;
  prometheus::Registry registry;
  WorkerPoolOptions o = Options(1);
  o.clock = &clock;
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  ExportOptions eo;
  eo.queue_depth = 4;
  eo.copy_mode = GetParam();
  eo.max_io_bytes = 128 * 1024;
  auto workers = pool->Assign(1);
  auto e = Export::Create(*control, workers, MakeFileTarget("d", 1 << 20), eo);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->Start().ok());
  const uint32_t id = (*e)->dev_id();

  memory_.FailMapAlways();
  memory_.FailHeapAlways();
  const std::string data = Pattern(16384, 4);
  auto write = kernel.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 4096, 16384, data);
  EXPECT_EQ(kernel.Wait(write, absl::Milliseconds(100)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(kernel.inflight(id), 1);  // in the server's hands, parked
  const int64_t failed = memory_.failed_heap_calls();
  EXPECT_GE(failed, 1);
  // Retries follow the (fake) clock, and keep failing quietly.
  for (int i = 0; i < 500 && memory_.failed_heap_calls() < failed + 3; ++i) {
    clock.Advance(absl::Milliseconds(10));
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(memory_.failed_heap_calls(), failed + 3);
  EXPECT_EQ(kernel.Wait(write, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {WorkerTag(0), "heap allocation of"}), 1);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {WorkerTag(0), kDegradeText}), 1);
  EXPECT_TRUE(pool->worker(0)->buffer_pool_degraded());

  memory_.HealHeap();
  clock.Advance(absl::Milliseconds(10));
  auto done = kernel.Wait(write, absl::Seconds(5));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->result, 16384);  // never failed to the kernel
  auto r = kernel.Read(id, 4096, 16384);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->result, 16384);
  EXPECT_TRUE(r->data == data);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {WorkerTag(0), "heap allocation works again"}), 1);
  EXPECT_GE(pool->buffer_pool_metrics()->heap_fallbacks(0), 2);
  EXPECT_TRUE(pool->worker(0)->buffer_pool_degraded());  // still no pool: mmap fails

  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
  pool->Release(workers);
  pool.reset();
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

// Issue 6 (e), the seed incident. 66 exports made with USER_RECOVERY by one
// process that then dies (its queues are dropped: the fake kernel quiesces
// the devices, I/O issued meanwhile waits). A new process with a fresh pool
// recovers all of them at once, with bounded concurrency, while every mmap
// fails: every export comes up and serves correct data from heap buffers,
// each worker logs one degrade line, nothing aborts. Then memory returns:
// after the retry interval each worker maps its pool again (one INFO line
// each) and the degraded gauge goes back to 0.
TEST_P(WorkerPoolModeTest, SixtySixExportsRecoverAtOnceWhileEveryMmapFails) {
  constexpr int kExports = 66;
  constexpr int kWorkers = 4;
  constexpr int kConcurrency = 8;
  constexpr uint64_t kSize = 1 << 20;
  FakeKernelOptions ko;
  ko.ublks_max = 128;
  FakeKernel kernel(ko);
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  std::vector<std::shared_ptr<FileTarget>> targets;
  for (int i = 0; i < kExports; ++i) {
    targets.push_back(MakeFileTarget(absl::StrCat("vol", i), kSize));
    ASSERT_NE(targets.back(), nullptr);
  }
  auto nr_queues = [](int i) -> uint16_t { return i % 3 == 0 ? 2 : 1; };
  std::vector<uint32_t> ids;

  // The old process: creates and serves, then dies.
  {
    auto old_pool = MakePool(Options(2));
    ASSERT_NE(old_pool, nullptr);
    std::vector<std::unique_ptr<Export>> exports;
    for (int i = 0; i < kExports; ++i) {
      ExportOptions eo;
      eo.nr_queues = nr_queues(i);
      eo.queue_depth = 4;
      eo.copy_mode = GetParam();
      eo.max_io_bytes = 128 * 1024;
      eo.user_recovery = true;
      eo.user_recovery_reissue = true;
      auto e = Export::Create(*control, old_pool->Assign(eo.nr_queues), targets[i], eo);
      ASSERT_TRUE(e.ok()) << i << ": " << e.status();
      ASSERT_TRUE((*e)->Start().ok());
      ASSERT_EQ(kernel.Write((*e)->dev_id(), 0, Pattern(4096, i))->result, 4096);
      ids.push_back((*e)->dev_id());
      exports.push_back(std::move(*e));
    }
    for (auto& e : exports) ASSERT_TRUE(e->Detach().ok());
    old_pool->Stop();
  }
  for (uint32_t id : ids) ASSERT_EQ(kernel.DeviceState(id), UBLK_S_DEV_QUIESCED) << id;
  // I/O issued by the filesystems while no server runs.
  std::vector<std::shared_ptr<FakeKernel::Request>> pending;
  for (int i = 0; i < kExports; ++i) {
    pending.push_back(
        kernel.SubmitIoAsync(ids[i], UBLK_IO_OP_WRITE, 8192, 8192, Pattern(8192, 1000 + i)));
  }

  // The new process, on a host without memory for any pool.
  LogCapture logs;
  memory_.FailMapAlways();
  FakeClock clock;
  prometheus::Registry registry;
  WorkerPoolOptions o = Options(kWorkers);
  o.clock = &clock;
  o.buffer_retry_interval = absl::Seconds(1);
  auto pool = MakePool(o, &registry);
  ASSERT_NE(pool, nullptr);
  BufferPoolMetrics& metrics = *pool->buffer_pool_metrics();

  std::vector<std::unique_ptr<Export>> recovered(kExports);
  std::vector<std::vector<Worker*>> assigned(kExports);
  std::vector<absl::Status> status(kExports);
  std::atomic<int> next{0};
  std::atomic<int> running{0}, max_running{0};
  std::vector<std::thread> recoverers;
  for (int t = 0; t < kConcurrency; ++t) {
    recoverers.emplace_back([&] {
      for (int i = next++; i < kExports; i = next++) {
        const int now = ++running;
        int seen = max_running.load();
        while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
        }
        auto info = control->GetDeviceInfo(ids[i]);
        if (!info.ok()) {
          status[i] = info.status();
          --running;
          continue;
        }
        assigned[i] = pool->Assign(info->nr_hw_queues);
        auto e = Export::Recover(*control, assigned[i], targets[i], ids[i]);
        status[i] = e.status();
        if (e.ok()) recovered[i] = std::move(*e);
        --running;
      }
    });
  }
  for (auto& t : recoverers) t.join();
  EXPECT_LE(max_running.load(), kConcurrency);

  for (int i = 0; i < kExports; ++i) {
    ASSERT_TRUE(status[i].ok()) << "export " << i << ": " << status[i];
    EXPECT_EQ(recovered[i]->state(), Export::State::kRunning);
    EXPECT_EQ(recovered[i]->copy_mode(), GetParam());
    EXPECT_EQ(kernel.DeviceState(ids[i]), UBLK_S_DEV_LIVE);
  }
  // Spread: 66 exports, 88 queues over 4 workers.
  size_t total_queues = 0;
  for (size_t w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(pool->assigned_queues(w), 22u) << w;
    EXPECT_EQ(pool->worker(w)->queue_count(), 22u) << w;
    total_queues += pool->worker(w)->queue_count();
  }
  EXPECT_EQ(total_queues, 88u);

  // Every export serves correct data: what the old process wrote, what was
  // written during the outage, and new I/O.
  for (int i = 0; i < kExports; ++i) {
    auto p = kernel.Wait(pending[i], absl::Seconds(10));
    ASSERT_TRUE(p.ok()) << i << ": " << p.status();
    EXPECT_EQ(p->result, 8192) << i;
    auto before = kernel.Read(ids[i], 0, 4096);
    ASSERT_TRUE(before.ok());
    EXPECT_TRUE(before->data == Pattern(4096, i)) << i;
    auto during = kernel.Read(ids[i], 8192, 8192);
    ASSERT_TRUE(during.ok());
    EXPECT_TRUE(during->data == Pattern(8192, 1000 + i)) << i;
    const std::string fresh = Pattern(65536, 2000 + i);
    auto w = kernel.Write(ids[i], 65536, fresh);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->result, 65536);
    auto r = kernel.Read(ids[i], 65536, 65536);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->data == fresh) << i;
  }

  double fallbacks = 0;
  for (size_t w = 0; w < kWorkers; ++w) {
    EXPECT_GT(metrics.heap_fallbacks(w), 0) << w;
    fallbacks += metrics.heap_fallbacks(w);
    // One line per worker, however many I/Os and exports it served; and one
    // mmap attempt each: the clock has not moved, so no retry is due.
    EXPECT_EQ(logs.Count(google::GLOG_WARNING, {WorkerTag(w), kDegradeText}), 1) << w;
    EXPECT_EQ(metrics.creation_failures(w), 1) << w;
    EXPECT_TRUE(pool->worker(w)->buffer_pool_degraded()) << w;
  }
  EXPECT_GE(fallbacks, kExports * 5.0);  // at least the 5 I/Os above per export
  EXPECT_EQ(memory_.failed_map_calls(), kWorkers);
  EXPECT_EQ(metrics.degraded_workers(), kWorkers);
  EXPECT_EQ(logs.AtLeast(google::GLOG_ERROR), std::vector<std::string>{});

  // The host recovers.
  memory_.HealMap();
  clock.Advance(absl::Seconds(1) + absl::Milliseconds(1));
  for (int i = 0; i < kExports; ++i) {
    const std::string again = Pattern(32768, 3000 + i);
    auto w = kernel.Write(ids[i], 4096 * 40, again);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->result, 32768);
    auto r = kernel.Read(ids[i], 4096 * 40, 32768);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->data == again) << i;
  }
  double fallbacks_after = 0;
  for (size_t w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(logs.Count(google::GLOG_INFO, {WorkerTag(w), kRecoverText}), 1) << w;
    EXPECT_EQ(logs.Count(google::GLOG_WARNING, {WorkerTag(w), kDegradeText}), 1) << w;
    EXPECT_FALSE(pool->worker(w)->buffer_pool_degraded()) << w;
    // The fake completes a request to the block layer before the worker has
    // released its buffer: give the worker a moment.
    for (int i = 0; i < 200 && metrics.slots_in_use(w) != 0; ++i) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(metrics.slots_in_use(w), 0) << w;
    EXPECT_GT(metrics.pool_bytes(w), 0) << w;
    fallbacks_after += metrics.heap_fallbacks(w);
  }
  EXPECT_EQ(metrics.degraded_workers(), 0);
  EXPECT_EQ(fallbacks_after, fallbacks);  // back on the pool path entirely
  EXPECT_EQ(memory_.live_maps(), kWorkers);
  EXPECT_EQ(logs.AtLeast(google::GLOG_ERROR), std::vector<std::string>{});

  for (int i = 0; i < kExports; ++i) {
    ASSERT_TRUE(recovered[i]->Stop().ok()) << i;
    ASSERT_TRUE(recovered[i]->Delete().ok()) << i;
    pool->Release(assigned[i]);
  }
  EXPECT_EQ(kernel.device_count(), 0u);
  pool.reset();  // the workers' pools are unmapped with the workers
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(CopyModes, WorkerPoolModeTest,
                         ::testing::Values(CopyMode::kUserCopy, CopyMode::kGetData),
                         [](const auto& info) { return std::string(CopyModeName(info.param)); });

}  // namespace
}  // namespace ublk
