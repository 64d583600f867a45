// CrashLoopGuard: the counter of recoveries cut short lives in the data dir,
// survives a "kill" (a new guard on the same dir), turns a start
// conservative at the threshold and is reset when a recovery completes.
#include "csi/crash_loop_guard.h"

#include <fstream>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/subprocess.h"
#include "ublk/memory.h"

namespace ublk_csi {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

double GaugeValue(prometheus::Registry& r, const std::string& name) {
  for (const auto& f : r.Collect()) {
    if (f.name == name && !f.metric.empty()) return f.metric[0].gauge.value;
  }
  return -1;
}

TEST(CrashLoopGuardTest, CountsUnfinishedRecoveriesAndTurnsConservative) {
  ublk_test::TempDir dir;
  const std::string file = dir.path() + "/" + CrashLoopGuard::kFileName;
  {
    auto g = CrashLoopGuard::Begin(dir.path(), 2, nullptr);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ((*g)->previous(), 0);
    EXPECT_FALSE((*g)->conservative());
    EXPECT_EQ(ReadAll(file), "1");
  }  // killed before Complete()
  {
    auto g = CrashLoopGuard::Begin(dir.path(), 2, nullptr);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ((*g)->previous(), 1);
    EXPECT_FALSE((*g)->conservative());
  }
  prometheus::Registry registry;
  auto g = CrashLoopGuard::Begin(dir.path(), 2, &registry);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->previous(), 2);
  EXPECT_TRUE((*g)->conservative());
  EXPECT_EQ(ReadAll(file), "3");
  EXPECT_EQ(GaugeValue(registry, "ublk_csi_conservative_recovery"), 1);
  EXPECT_EQ(GaugeValue(registry, "ublk_csi_unfinished_recoveries"), 2);
  ASSERT_TRUE((*g)->Complete().ok());
  EXPECT_EQ(ReadAll(file), "0");
  EXPECT_EQ(GaugeValue(registry, "ublk_csi_conservative_recovery"), 0);
  EXPECT_EQ(CrashLoopGuard::ReadCount(dir.path(), 2), 0);
  // No temp file left behind by the atomic writes.
  EXPECT_FALSE(std::ifstream(file + ".tmp").good());
}

TEST(CrashLoopGuardTest, GarbageCounterIsTreatedAsALoop) {
  ublk_test::TempDir dir;
  { std::ofstream(dir.path() + "/" + CrashLoopGuard::kFileName) << "not a number"; }
  auto g = CrashLoopGuard::Begin(dir.path(), 3, nullptr);
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE((*g)->conservative());
}

TEST(CrashLoopGuardTest, UnwritableDataDirIsAnError) {
  auto g = CrashLoopGuard::Begin("/nonexistent-dir-for-test", 2, nullptr);
  EXPECT_FALSE(g.ok());
}

TEST(HeapOnlyMemorySourceTest, RefusesPoolsWhileSetThenPassesThrough) {
  ublk::RealMemorySource real;
  HeapOnlyMemorySource m(real, /*heap_only=*/true);
  auto refused = m.Map(1 << 16);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  auto heap = m.AllocateHeap(4096, 4096);
  ASSERT_TRUE(heap.ok());
  m.FreeHeap(*heap);
  m.SetHeapOnly(false);
  auto mapped = m.Map(1 << 16);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  m.Unmap(*mapped, 1 << 16);
}

}  // namespace
}  // namespace ublk_csi
