// MemoryBudget on fake cgroup/procfs files: where the limit comes from (v2
// memory.max/memory.high up the tree, v1 fallback, the override, none), the
// usage (memory.current, v1 usage, RSS), admission within the headroom, and
// the pressure transitions (memory.high events, headroom below the margin):
// one log line each, metrics, and the pressure epoch workers act on.
#include "ublk/memory_budget.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/log_capture.h"
#include "ublk/testing/fault_memory.h"

namespace ublk {
namespace {

using ublk_test::LogCapture;

constexpr uint64_t kMiB = 1 << 20;

double Value(prometheus::Registry& registry, const std::string& name) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name || family.metric.empty()) continue;
    const auto& m = family.metric[0];
    return family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
  }
  return -1;
}

MemoryBudgetOptions Options(uint64_t headroom = 8 * kMiB) {
  MemoryBudgetOptions o;
  o.headroom = headroom;
  return o;
}

TEST(MemoryBudgetTest, V2LimitIsTheLowestMaxOrHighOfTheGroupAndItsAncestors) {
  FakeMemoryFiles files;
  files.Set("/proc/self/cgroup", "0::/kubepods/pod1/plugin\n");
  files.Set("/sys/fs/cgroup/kubepods/pod1/plugin/memory.max", "max\n");
  files.Set("/sys/fs/cgroup/kubepods/pod1/plugin/memory.high", "max\n");
  files.Set("/sys/fs/cgroup/kubepods/pod1/memory.max", absl::StrCat(200 * kMiB, "\n"));
  files.Set("/sys/fs/cgroup/kubepods/pod1/memory.high", absl::StrCat(150 * kMiB, "\n"));
  files.Set("/sys/fs/cgroup/kubepods/memory.max", absl::StrCat(1024 * kMiB, "\n"));
  files.Set("/sys/fs/cgroup/kubepods/pod1/plugin/memory.current", absl::StrCat(40 * kMiB));
  MemoryBudget budget(Options(), files, nullptr);
  EXPECT_FALSE(budget.limited());  // nothing read before Refresh()
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_TRUE(budget.limited());
  EXPECT_EQ(budget.limit(), 150 * kMiB);
  EXPECT_EQ(budget.other_usage(), 40 * kMiB);
  EXPECT_EQ(budget.headroom(), static_cast<int64_t>(110 * kMiB));

  // The limit is re-read: raising it is seen at the next refresh.
  files.Set("/sys/fs/cgroup/kubepods/pod1/memory.high", "max\n");
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.limit(), 200 * kMiB);
}

// Page cache the kernel would reclaim before an OOM kill does not count,
// active or inactive: without this, cache filled the guest's group to its
// limit and buffers were refused for good (inactive_file alone: fio
// rewriting a volume kept its backing file's pages active and every I/O of
// the plugin parked). shmem stays counted (it is on the anon lists).
TEST(MemoryBudgetTest, FilePageCacheIsNotUsage) {
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 45 * kMiB, 45 * kMiB);
  files.Set("/sys/fs/cgroup/plugin/memory.stat",
            absl::StrCat("anon ", 20 * kMiB, "\nfile ", 25 * kMiB, "\nactive_file ", 5 * kMiB,
                         "\ninactive_file ", 20 * kMiB, "\n"));
  MemoryBudget budget(Options(8 * kMiB), files, nullptr);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.other_usage(), 20 * kMiB);
  EXPECT_TRUE(budget.TryCharge(17 * kMiB));
  EXPECT_FALSE(budget.TryCharge(1));
}

TEST(MemoryBudgetTest, V1LimitAndUsageAreTheFallback) {
  FakeMemoryFiles files;
  files.Set("/proc/self/cgroup", "12:cpu,cpuacct:/docker/x\n4:memory:/docker/x\n");
  files.Set("/sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes", absl::StrCat(64 * kMiB));
  files.Set("/sys/fs/cgroup/memory/docker/x/memory.usage_in_bytes", absl::StrCat(20 * kMiB));
  MemoryBudget budget(Options(), files, nullptr);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.limit(), 64 * kMiB);
  EXPECT_EQ(budget.other_usage(), 20 * kMiB);
}

TEST(MemoryBudgetTest, NoLimitAdmitsEverythingAndRssIsTheUsage) {
  FakeMemoryFiles files;
  // v1 "unlimited" is a page-rounded LLONG_MAX.
  files.Set("/proc/self/cgroup", "4:memory:/\n");
  files.Set("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
  files.Set("/proc/self/statm", "5000 1000 300 10 0 800 0\n");
  LogCapture logs;
  MemoryBudget budget(Options(), files, nullptr);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_FALSE(budget.limited());
  EXPECT_EQ(budget.other_usage(), 1000u * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  EXPECT_TRUE(budget.TryCharge(uint64_t{1} << 40));
  EXPECT_EQ(budget.denials(), 0u);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"memory budget: no memory limit found"}), 1);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"memory budget: no memory limit found"}), 1);
}

TEST(MemoryBudgetTest, OverrideWinsOverTheCgroup) {
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 500 * kMiB, 30 * kMiB);
  MemoryBudgetOptions o = Options();
  o.limit_override = 64 * kMiB;
  LogCapture logs;
  MemoryBudget budget(o, files, nullptr);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.limit(), 64 * kMiB);
  EXPECT_EQ(budget.other_usage(), 30 * kMiB);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"memory budget: limit", "--memory_limit"}), 1);
}

TEST(MemoryBudgetTest, ChargesAreAdmittedOnlyWithinTheHeadroom) {
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 50 * kMiB, 30 * kMiB);
  prometheus::Registry registry;
  MemoryBudget budget(Options(8 * kMiB), files, &registry);
  ASSERT_TRUE(budget.Refresh().ok());
  // 50 - 30 - 8 = 12 MiB for buffers.
  EXPECT_TRUE(budget.TryCharge(8 * kMiB));
  EXPECT_TRUE(budget.TryCharge(4 * kMiB));
  EXPECT_FALSE(budget.TryCharge(1));
  EXPECT_EQ(budget.denials(), 1u);
  EXPECT_EQ(budget.charged(), 12 * kMiB);
  budget.Uncharge(4 * kMiB);
  EXPECT_TRUE(budget.TryCharge(2 * kMiB));

  // The cgroup now counts our 10 MiB: they are not mistaken for other use.
  files.SetCgroupV2("/plugin", 50 * kMiB, 40 * kMiB);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.other_usage(), 30 * kMiB);
  EXPECT_TRUE(budget.TryCharge(2 * kMiB));
  EXPECT_FALSE(budget.TryCharge(1 * kMiB));
  EXPECT_EQ(Value(registry, "ublk_csi_memory_budget_bytes"), 50.0 * kMiB);
  EXPECT_EQ(Value(registry, "ublk_csi_memory_buffer_bytes"), 10.0 * kMiB);
  EXPECT_EQ(Value(registry, "ublk_csi_memory_usage_bytes"), 40.0 * kMiB);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(Value(registry, "ublk_csi_memory_denials_total"), 2);
  EXPECT_EQ(Value(registry, "ublk_csi_memory_buffer_bytes"), 12.0 * kMiB);
}

TEST(MemoryBudgetTest, HighEventsAndLowHeadroomAreOnePressureTransitionEach) {
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 100 * kMiB, 20 * kMiB, /*high_events=*/7);
  prometheus::Registry registry;
  LogCapture logs;
  MemoryBudget budget(Options(8 * kMiB), files, &registry);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.pressure_epoch(), 0u);  // events from before our start
  EXPECT_EQ(budget.high_events(), 0u);

  files.SetCgroupV2("/plugin", 100 * kMiB, 20 * kMiB, 10);
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_EQ(budget.pressure_epoch(), 1u);
  EXPECT_EQ(budget.high_events(), 3u);
  ASSERT_TRUE(budget.Refresh().ok());  // no new events: no new pressure
  EXPECT_EQ(budget.pressure_epoch(), 1u);
  EXPECT_EQ(Value(registry, "ublk_csi_memory_high_events_total"), 3);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"memory.high throttled the plugin 3 time"}), 1);

  // Other memory grows into the margin: tight, once.
  files.SetCgroupV2("/plugin", 100 * kMiB, 95 * kMiB, 10);
  ASSERT_TRUE(budget.Refresh().ok());
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_TRUE(budget.tight());
  EXPECT_EQ(budget.pressure_epoch(), 2u);
  EXPECT_EQ(Value(registry, "ublk_csi_memory_headroom_bytes"), 5.0 * kMiB);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"memory budget: headroom", "below the margin"}), 1);
  EXPECT_FALSE(budget.TryCharge(4096));

  // The limit is raised: restored, once.
  files.SetCgroupV2("/plugin", 200 * kMiB, 95 * kMiB, 10);
  ASSERT_TRUE(budget.Refresh().ok());
  ASSERT_TRUE(budget.Refresh().ok());
  EXPECT_FALSE(budget.tight());
  EXPECT_EQ(budget.pressure_epoch(), 2u);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"memory budget: headroom", "above the margin"}), 1);
  EXPECT_TRUE(budget.TryCharge(4096));
}

TEST(MemoryBudgetTest, UnreadableUsageKeepsTheLastReadingAndSaysSoOnce) {
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 100 * kMiB, 20 * kMiB);
  LogCapture logs;
  MemoryBudget budget(Options(), files, nullptr);
  ASSERT_TRUE(budget.Refresh().ok());
  files.Remove("/sys/fs/cgroup/plugin/memory.current");
  EXPECT_EQ(budget.Refresh().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(budget.Refresh().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(budget.other_usage(), 20 * kMiB);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"cannot read the memory usage"}), 1);
}

TEST(MemoryBudgetTest, RealFilesReadThisProcess) {
  RealMemoryFiles files;
  MemoryBudget budget(Options(), files, nullptr);
  budget.Refresh().IgnoreError();
  // Whatever the host's cgroup setup, usage comes from somewhere (at worst
  // /proc/self/statm) and is more than nothing.
  EXPECT_GT(budget.other_usage(), 0u);
  EXPECT_EQ(files.Read("/nonexistent/memory.max").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ublk
