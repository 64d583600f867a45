#include "ublk/buffer_pool.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "tests/testing/log_capture.h"
#include "ublk/memory.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fault_memory.h"

// glog 0.6 calls mktime() for every line; glibc's tzset then frees and
// re-strdup()s its TZ copy under a libc-internal lock that TSan cannot see, so
// two threads logging at once are reported as a race inside libc. Only that
// frame is suppressed; this symbol is ignored by non-TSan builds.
extern "C" const char* __tsan_default_suppressions() { return "race:tzset_internal\n"; }

namespace ublk {
namespace {

using ::testing::HasSubstr;

using ublk_test::LogCapture;

std::string Worker(int id) { return absl::StrCat("worker ", id, ":"); }
const std::string kDegradeText = "cannot create buffer pool";
const std::string kRecoverText = "buffer pool of";
const std::string kHeapFailText = "heap allocation of";

class BufferPoolTest : public ::testing::Test {
 protected:
  static BufferPoolOptions SmallOptions() {
    BufferPoolOptions options;
    options.slot_size = 2 * 4096;
    options.slot_count = 4;
    options.retry_interval = absl::Seconds(1);
    return options;
  }

  std::unique_ptr<BufferPool> MakePool(int worker, BufferPoolOptions options = SmallOptions()) {
    return std::make_unique<BufferPool>(options, memory_, clock_, &metrics_, worker);
  }

  // Writes a pattern over the whole buffer and reads it back.
  static void ExpectUsable(const IoBuffer& buffer, uint8_t seed) {
    ASSERT_TRUE(buffer);
    ASSERT_NE(buffer.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 4096, 0u);
    auto* bytes = static_cast<uint8_t*>(buffer.data());
    for (size_t i = 0; i < buffer.size(); ++i) {
      bytes[i] = static_cast<uint8_t>(seed + i * 7);
    }
    for (size_t i = 0; i < buffer.size(); ++i) {
      ASSERT_EQ(bytes[i], static_cast<uint8_t>(seed + i * 7)) << "offset " << i;
    }
  }

  LogCapture logs_;
  RealMemorySource real_;
  FaultInjectingMemorySource memory_{real_};
  FakeClock clock_;
  prometheus::Registry registry_;
  BufferPoolMetrics metrics_{registry_};
};

TEST_F(BufferPoolTest, MapsNothingUntilFirstAcquisition) {
  auto pool = MakePool(0);
  EXPECT_EQ(memory_.map_calls(), 0);
  EXPECT_FALSE(pool->has_pool());
  EXPECT_FALSE(pool->degraded());
  EXPECT_EQ(metrics_.pool_bytes(0), 0);

  AcquireResult r = pool->AcquireIoBuffer(4096);
  EXPECT_EQ(r.outcome, AcquireOutcome::kPooled);
  EXPECT_TRUE(r.buffer.pooled());
  ExpectUsable(r.buffer, 1);
  EXPECT_EQ(memory_.map_calls(), 1);
  EXPECT_TRUE(pool->has_pool());
  EXPECT_EQ(metrics_.pool_bytes(0), 4 * 2 * 4096);
  EXPECT_EQ(metrics_.slots_in_use(0), 1);

  // Success is cached: no more maps, even long after.
  clock_.Advance(absl::Hours(1));
  r.buffer.Reset();
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPooled);
  }
  EXPECT_EQ(memory_.map_calls(), 1);
  EXPECT_EQ(memory_.heap_calls(), 0);
  EXPECT_EQ(metrics_.slots_in_use(0), 0);
  EXPECT_EQ(logs_.CountAtLeast(google::GLOG_WARNING), 0);
}

// (a)
TEST_F(BufferPoolTest, CreationFailureServesEveryIoFromHeap) {
  memory_.FailMapAlways();
  auto pool = MakePool(3);

  std::vector<IoBuffer> held;
  for (int i = 0; i < 6; ++i) {  // more than slot_count: heap is not bounded
    AcquireResult r = pool->AcquireIoBuffer(3 * 4096 + 512 * i);
    ASSERT_EQ(r.outcome, AcquireOutcome::kHeap) << i;
    EXPECT_FALSE(r.buffer.pooled());
    EXPECT_EQ(r.buffer.size(), 3 * 4096 + 512 * static_cast<size_t>(i));
    ExpectUsable(r.buffer, static_cast<uint8_t>(i));
    EXPECT_EQ(metrics_.heap_fallbacks(3), i + 1);
    held.push_back(std::move(r.buffer));
  }
  // Buffers are distinct and keep their contents while held together.
  std::set<void*> addresses;
  for (const IoBuffer& b : held) addresses.insert(b.data());
  EXPECT_EQ(addresses.size(), held.size());
  EXPECT_EQ(static_cast<uint8_t*>(held[2].data())[100], static_cast<uint8_t>(2 + 100 * 7));

  EXPECT_TRUE(pool->degraded());
  EXPECT_FALSE(pool->has_pool());
  EXPECT_EQ(metrics_.degraded_workers(), 1);
  EXPECT_EQ(metrics_.creation_failures(3), 1);  // no retry within interval
  EXPECT_EQ(memory_.map_calls(), 1);
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(3), kDegradeText}), 1);
  EXPECT_EQ(logs_.CountAtLeast(google::GLOG_WARNING), 1);

  EXPECT_EQ(memory_.live_heap_blocks(), 6);
  held.clear();
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
  EXPECT_EQ(metrics_.slots_in_use(3), 0);
}

// The plugin's --fault_injection_fail_buffer_pool_mmap_seconds: every mmap
// fails until the deadline on the clock, heap allocations are untouched, and
// the pool is created by the first retry after the deadline, by itself.
TEST_F(BufferPoolTest, MmapFailingUntilADeadlineDegradesThenRecoversByItself) {
  memory_.FailMapUntil(clock_, clock_.Now() + absl::Seconds(5));
  auto pool = MakePool(2);
  for (int i = 0; i < 5; ++i) {  // seconds 0..4: one retry each, all failed
    AcquireResult r = pool->AcquireIoBuffer(4096);
    ASSERT_EQ(r.outcome, AcquireOutcome::kHeap) << "second " << i;
    ExpectUsable(r.buffer, static_cast<uint8_t>(i));
    clock_.Advance(absl::Seconds(1));
  }
  EXPECT_FALSE(pool->has_pool());
  EXPECT_EQ(memory_.map_calls(), 5);
  EXPECT_EQ(memory_.failed_map_calls(), 5);
  AcquireResult r = pool->AcquireIoBuffer(4096);
  EXPECT_EQ(r.outcome, AcquireOutcome::kPooled);
  EXPECT_TRUE(pool->has_pool());
  EXPECT_EQ(memory_.failed_map_calls(), memory_.map_calls() - 1);
  EXPECT_EQ(memory_.live_maps(), 1);
  EXPECT_EQ(memory_.failed_heap_calls(), 0);
}

// (b)
TEST_F(BufferPoolTest, RetriesNoMoreOftenThanIntervalAndRecovers) {
  memory_.FailMapAlways();
  auto pool = MakePool(1);
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  EXPECT_EQ(memory_.map_calls(), 1);

  // Within the interval: no map attempts at all.
  for (int i = 0; i < 9; ++i) {
    clock_.Advance(absl::Milliseconds(100));
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  }
  EXPECT_EQ(memory_.map_calls(), 1);  // 900 ms after the first attempt

  // Each elapsed interval allows one more (failing) attempt, logged nowhere.
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(absl::Seconds(1));
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  }
  EXPECT_EQ(memory_.map_calls(), 4);
  EXPECT_EQ(metrics_.creation_failures(1), 4);
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(1), kDegradeText}), 1);

  // The seam heals, but the interval has not elapsed since the last attempt.
  memory_.HealMap();
  clock_.Advance(absl::Milliseconds(999));
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  EXPECT_EQ(memory_.map_calls(), 4);
  EXPECT_TRUE(pool->degraded());
  EXPECT_EQ(metrics_.degraded_workers(), 1);
  const double fallbacks = metrics_.heap_fallbacks(1);
  EXPECT_EQ(fallbacks, 1 + 9 + 6 + 1);

  clock_.Advance(absl::Milliseconds(1));
  AcquireResult r = pool->AcquireIoBuffer(4096);
  EXPECT_EQ(r.outcome, AcquireOutcome::kPooled);
  ExpectUsable(r.buffer, 9);
  EXPECT_EQ(memory_.map_calls(), 5);
  EXPECT_FALSE(pool->degraded());
  EXPECT_TRUE(pool->has_pool());
  EXPECT_EQ(metrics_.degraded_workers(), 0);
  EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(1), kRecoverText}), 1);

  for (int i = 0; i < 3; ++i) {
    clock_.Advance(absl::Seconds(5));
    EXPECT_EQ(pool->AcquireIoBuffer(8192).outcome, AcquireOutcome::kPooled);
  }
  EXPECT_EQ(memory_.map_calls(), 5);
  EXPECT_EQ(metrics_.heap_fallbacks(1), fallbacks);
  EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(1), kRecoverText}), 1);
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(1), kDegradeText}), 1);
}

TEST_F(BufferPoolTest, ClockSteppedBackDoesNotBlockRetries) {
  memory_.FailNextMaps(1);
  auto pool = MakePool(8);
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  clock_.Advance(-absl::Hours(1));
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPooled);
  EXPECT_EQ(memory_.map_calls(), 2);
  EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(8), kRecoverText}), 1);
}

// (c)
TEST_F(BufferPoolTest, ExhaustionAppliesBackpressureWithoutHeap) {
  auto pool = MakePool(2);
  int released = 0;
  pool->SetSlotReleasedCallback([&] { ++released; });

  std::vector<IoBuffer> held;
  std::set<uintptr_t> addresses;
  for (int i = 0; i < 4; ++i) {
    AcquireResult r = pool->AcquireIoBuffer(8192);
    ASSERT_EQ(r.outcome, AcquireOutcome::kPooled);
    ExpectUsable(r.buffer, static_cast<uint8_t>(i));
    addresses.insert(reinterpret_cast<uintptr_t>(r.buffer.data()));
    held.push_back(std::move(r.buffer));
  }
  // Four non-overlapping slots.
  ASSERT_EQ(addresses.size(), 4u);
  for (auto it = addresses.begin(); std::next(it) != addresses.end(); ++it) {
    EXPECT_GE(*std::next(it) - *it, 8192u);
  }
  EXPECT_EQ(pool->slots_in_use(), 4u);
  EXPECT_EQ(metrics_.slots_in_use(2), 4);

  for (int i = 0; i < 3; ++i) {
    AcquireResult r = pool->AcquireIoBuffer(4096);
    EXPECT_EQ(r.outcome, AcquireOutcome::kPoolExhausted);
    EXPECT_FALSE(r.buffer);
    EXPECT_EQ(r.buffer.data(), nullptr);
  }
  EXPECT_EQ(memory_.heap_calls(), 0);
  EXPECT_EQ(metrics_.heap_fallbacks(2), 0);
  EXPECT_EQ(metrics_.slot_waits(2), 3);
  EXPECT_EQ(released, 0);

  void* freed = held[1].data();
  held.erase(held.begin() + 1);
  EXPECT_EQ(released, 1);
  EXPECT_EQ(pool->slots_in_use(), 3u);
  AcquireResult r = pool->AcquireIoBuffer(4096);
  ASSERT_EQ(r.outcome, AcquireOutcome::kPooled);
  EXPECT_EQ(r.buffer.data(), freed);
  EXPECT_EQ(memory_.heap_calls(), 0);
  EXPECT_EQ(logs_.CountAtLeast(google::GLOG_WARNING), 0);
}

TEST_F(BufferPoolTest, SlotReleasedCallbackMayAcquireTheFreedSlot) {
  auto pool = MakePool(2);
  std::vector<IoBuffer> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->AcquireIoBuffer(4096).buffer);
  ASSERT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPoolExhausted);

  IoBuffer parked;  // the I/O that waited
  pool->SetSlotReleasedCallback([&] {
    if (parked) return;
    AcquireResult r = pool->AcquireIoBuffer(4096);
    EXPECT_EQ(r.outcome, AcquireOutcome::kPooled);
    parked = std::move(r.buffer);
  });
  held[0].Reset();
  EXPECT_TRUE(parked);
  EXPECT_EQ(pool->slots_in_use(), 4u);
  pool->SetSlotReleasedCallback(nullptr);
  parked.Reset();
  held.clear();
  EXPECT_EQ(pool->slots_in_use(), 0u);
}

TEST_F(BufferPoolTest, CallbackMayRefillTheBufferBeingReleased) {
  auto pool = MakePool(2);
  std::vector<IoBuffer> held;
  for (int i = 0; i < 3; ++i) held.push_back(pool->AcquireIoBuffer(4096).buffer);
  IoBuffer b = pool->AcquireIoBuffer(4096).buffer;
  bool refilled = false;
  pool->SetSlotReleasedCallback([&] {
    if (refilled) return;
    refilled = true;
    b = pool->AcquireIoBuffer(4096).buffer;  // reuses the slot b just gave up
  });
  b.Reset();
  ASSERT_TRUE(b);
  EXPECT_EQ(pool->slots_in_use(), 4u);
  // Every slot is released exactly once: all four come back distinct.
  b.Reset();
  held.clear();
  EXPECT_EQ(pool->slots_in_use(), 0u);
  std::set<void*> slots;
  for (int i = 0; i < 4; ++i) {
    held.push_back(pool->AcquireIoBuffer(4096).buffer);
    ASSERT_TRUE(held.back());
    slots.insert(held.back().data());
  }
  EXPECT_EQ(slots.size(), 4u);
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPoolExhausted);
  // The callback reads `refilled`, declared after `held`: unset it before
  // `held` releases its slots at the end of the scope (clang's ASan caught
  // the read after `refilled` was gone).
  pool->SetSlotReleasedCallback(nullptr);
  held.clear();
}

// (d)
TEST_F(BufferPoolTest, HeapFailingTooAsksForRequeueUntilMemoryReturns) {
  memory_.FailMapAlways();
  memory_.FailHeapAlways();
  auto pool = MakePool(4);

  for (int i = 0; i < 5; ++i) {
    AcquireResult r = pool->AcquireIoBuffer(4096);
    EXPECT_EQ(r.outcome, AcquireOutcome::kNoMemory);
    EXPECT_FALSE(r.buffer);
    EXPECT_FALSE(r.buffer.pooled());
  }
  EXPECT_EQ(metrics_.heap_fallbacks(4), 0);
  EXPECT_TRUE(pool->degraded());
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(4), kDegradeText}), 1);
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(4), kHeapFailText}), 1);

  // The requeued I/O is retried once the heap is back.
  memory_.HealHeap();
  AcquireResult r = pool->AcquireIoBuffer(4096);
  ASSERT_EQ(r.outcome, AcquireOutcome::kHeap);
  ExpectUsable(r.buffer, 4);
  EXPECT_EQ(metrics_.heap_fallbacks(4), 1);
  EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(4), "heap allocation works"}), 1);

  // A second failure episode logs once more, not per I/O.
  memory_.FailNextHeaps(3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kNoMemory);
  }
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(4), kHeapFailText}), 2);
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);

  // And the whole way back to the pool.
  memory_.HealMap();
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPooled);
  EXPECT_EQ(metrics_.degraded_workers(), 0);
  r.buffer.Reset();
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

TEST_F(BufferPoolTest, EachWorkerLogsItsOwnTransitionsOnce) {
  memory_.FailMapAlways();
  std::vector<std::unique_ptr<BufferPool>> pools;
  for (int w = 0; w < 3; ++w) pools.push_back(MakePool(w));
  for (int round = 0; round < 4; ++round) {
    for (auto& pool : pools) {
      EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
    }
    clock_.Advance(absl::Seconds(2));
  }
  EXPECT_EQ(metrics_.degraded_workers(), 3);
  for (int w = 0; w < 3; ++w) {
    EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(w), kDegradeText}), 1) << w;
    EXPECT_EQ(metrics_.heap_fallbacks(w), 4) << w;
    EXPECT_EQ(metrics_.creation_failures(w), 4) << w;
  }

  memory_.HealMap();
  EXPECT_EQ(pools[0]->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPooled);
  EXPECT_EQ(metrics_.degraded_workers(), 2);
  EXPECT_EQ(pools[1]->AcquireIoBuffer(4096).outcome, AcquireOutcome::kPooled);
  EXPECT_EQ(metrics_.degraded_workers(), 1);
  // A degraded worker that goes away stops counting as degraded.
  pools[2].reset();
  EXPECT_EQ(metrics_.degraded_workers(), 0);
  for (int w = 0; w < 2; ++w) {
    EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(w), kRecoverText}), 1) << w;
  }
  EXPECT_EQ(logs_.Count(google::GLOG_INFO, {Worker(2), kRecoverText}), 0);
}

TEST_F(BufferPoolTest, IoBufferMoveTransfersOwnership) {
  auto pool = MakePool(0);
  AcquireResult a = pool->AcquireIoBuffer(4096);
  ASSERT_EQ(a.outcome, AcquireOutcome::kPooled);
  void* data = a.buffer.data();

  IoBuffer moved(std::move(a.buffer));
  EXPECT_FALSE(a.buffer);  // NOLINT(bugprone-use-after-move): checking it
  EXPECT_EQ(a.buffer.size(), 0u);
  EXPECT_FALSE(a.buffer.pooled());
  EXPECT_EQ(moved.data(), data);
  EXPECT_TRUE(moved.pooled());
  EXPECT_EQ(moved.size(), 4096u);
  EXPECT_EQ(pool->slots_in_use(), 1u);

  // Assigning over a held buffer releases the held one.
  IoBuffer other = pool->AcquireIoBuffer(4096).buffer;
  EXPECT_EQ(pool->slots_in_use(), 2u);
  other = std::move(moved);
  EXPECT_EQ(pool->slots_in_use(), 1u);
  EXPECT_EQ(other.data(), data);

  // Heap buffers move the same way and are freed exactly once.
  memory_.FailMapAlways();
  auto degraded = MakePool(1);
  IoBuffer heap = degraded->AcquireIoBuffer(100).buffer;
  ASSERT_TRUE(heap);
  EXPECT_FALSE(heap.pooled());
  IoBuffer heap2;
  heap2 = std::move(heap);
  EXPECT_FALSE(heap);
  EXPECT_EQ(memory_.live_heap_blocks(), 1);
  heap2.Reset();
  heap2.Reset();
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
  EXPECT_EQ(memory_.free_heap_calls(), 1);

  other.Reset();
  EXPECT_EQ(pool->slots_in_use(), 0u);
  IoBuffer empty;
  EXPECT_FALSE(empty);
}

TEST_F(BufferPoolTest, DestroyingThePoolUnmapsIt) {
  {
    auto pool = MakePool(5);
    EXPECT_EQ(pool->AcquireIoBuffer(1).outcome, AcquireOutcome::kPooled);
    EXPECT_EQ(memory_.live_maps(), 1);
  }
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(memory_.unmap_calls(), 1);
  EXPECT_EQ(metrics_.pool_bytes(5), 0);
}

TEST_F(BufferPoolTest, OversizedIoIsServedFromHeapAndCounted) {
  auto pool = MakePool(6);
  for (int i = 0; i < 3; ++i) {
    AcquireResult r = pool->AcquireIoBuffer(3 * 4096);  // slot is 2 pages
    ASSERT_EQ(r.outcome, AcquireOutcome::kHeap);
    ExpectUsable(r.buffer, 6);
  }
  EXPECT_TRUE(pool->has_pool());
  EXPECT_FALSE(pool->degraded());
  EXPECT_EQ(metrics_.heap_fallbacks(6), 3);
  EXPECT_EQ(metrics_.degraded_workers(), 0);
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(6), "exceeds"}), 1);
  EXPECT_EQ(pool->AcquireIoBuffer(2 * 4096).outcome, AcquireOutcome::kPooled);
}

TEST_F(BufferPoolTest, InvalidOptionsDegradeToHeapWithoutMapping) {
  BufferPoolOptions bad = SmallOptions();
  bad.slot_count = 0;
  auto pool = MakePool(7, bad);
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(absl::Seconds(10));
    EXPECT_EQ(pool->AcquireIoBuffer(4096).outcome, AcquireOutcome::kHeap);
  }
  EXPECT_EQ(memory_.map_calls(), 0);
  EXPECT_TRUE(pool->degraded());
  EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(7), "slot_count"}), 1);
}

TEST_F(BufferPoolTest, ExportsTheDocumentedMetricNames) {
  memory_.FailMapAlways();
  auto pool = MakePool(9);
  IoBuffer b = pool->AcquireIoBuffer(4096).buffer;
  std::map<std::string, prometheus::MetricType> families;
  double fallbacks = -1;
  for (const prometheus::MetricFamily& f : registry_.Collect()) {
    families[f.name] = f.type;
    if (f.name != "ublk_csi_buffer_pool_heap_fallbacks_total") continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      ASSERT_EQ(m.label.size(), 1u);
      EXPECT_EQ(m.label[0].name, "worker");
      if (m.label[0].value == "9") fallbacks = m.counter.value;
    }
  }
  EXPECT_EQ(fallbacks, 1);
  using T = prometheus::MetricType;
  const std::map<std::string, prometheus::MetricType> want = {
      {"ublk_csi_buffer_pool_heap_fallbacks_total", T::Counter},
      {"ublk_csi_buffer_pool_creation_failures_total", T::Counter},
      {"ublk_csi_buffer_pool_slot_waits_total", T::Counter},
      {"ublk_csi_buffer_pool_degraded_workers", T::Gauge},
      {"ublk_csi_buffer_pool_slots_in_use", T::Gauge},
      {"ublk_csi_buffer_pool_bytes", T::Gauge},
  };
  EXPECT_EQ(families, want);
}

TEST(BufferPoolOptionsTest, ValidateRejectsNonsense) {
  EXPECT_TRUE(BufferPoolOptions().Validate().ok());
  const BufferPoolOptions defaults;
  EXPECT_LE(defaults.slot_count * defaults.slot_size * 16, BufferPoolOptions::kDefaultTotalBudget);

  auto expect_invalid = [](BufferPoolOptions o, const std::string& field) {
    absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
  };
  BufferPoolOptions o;
  o.slot_count = 0;
  expect_invalid(o, "slot_count");
  o = {};
  o.slot_size = 0;
  expect_invalid(o, "slot_size");
  o.slot_size = 1000;
  expect_invalid(o, "slot_size");
  o.slot_size = 4096 + 512;
  expect_invalid(o, "slot_size");
  o = {};
  o.slot_count = BufferPoolOptions::kMaxPoolBytes / o.slot_size + 1;
  expect_invalid(o, "cap");
  o.slot_count = SIZE_MAX;  // slot_count * slot_size would overflow
  expect_invalid(o, "cap");
  o = {};
  o.slot_count = BufferPoolOptions::kMaxPoolBytes / o.slot_size;
  EXPECT_TRUE(o.Validate().ok());
  o = {};
  o.retry_interval = absl::ZeroDuration();
  expect_invalid(o, "retry_interval");
  o.retry_interval = -absl::Seconds(1);
  expect_invalid(o, "retry_interval");
  o.retry_interval = absl::InfiniteDuration();
  expect_invalid(o, "retry_interval");
}

TEST(BufferPoolOptionsTest, ForBudgetSplitsTheBudget) {
  BufferPoolOptions o = BufferPoolOptions::ForBudget(BufferPoolOptions::kDefaultTotalBudget, 16);
  EXPECT_EQ(o.slot_size, 128u * 1024);
  EXPECT_EQ(o.slot_count, 32u);
  EXPECT_TRUE(o.Validate().ok());
  o = BufferPoolOptions::ForBudget(64 << 20, 64);
  EXPECT_EQ(o.slot_count, 8u);
  o = BufferPoolOptions::ForBudget(64 << 20, 10000);
  EXPECT_EQ(o.slot_count, 1u);
  EXPECT_TRUE(o.Validate().ok());
  o = BufferPoolOptions::ForBudget(64 << 20, 0);
  EXPECT_EQ(o.slot_count, 512u);
}

TEST_F(BufferPoolTest, WorkersOnTheirOwnThreadsShareMetrics) {
  constexpr int kWorkers = 4;
  constexpr int kIos = 500;
  memory_.FailNextMaps(2);  // one or two workers degrade, then recover
  BufferPoolOptions options = SmallOptions();
  options.retry_interval = absl::Milliseconds(1);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      BufferPool pool(options, memory_, clock_, &metrics_, w);
      std::vector<IoBuffer> held;
      for (int i = 0; i < kIos; ++i) {
        AcquireResult r = pool.AcquireIoBuffer(4096);
        ASSERT_NE(r.outcome, AcquireOutcome::kNoMemory);
        if (r.buffer) {
          static_cast<uint8_t*>(r.buffer.data())[0] = static_cast<uint8_t>(i);
          held.push_back(std::move(r.buffer));
        }
        if (held.size() == 3) held.clear();
      }
    });
  }
  for (int i = 0; i < 200; ++i) clock_.Advance(absl::Milliseconds(1));
  for (std::thread& t : threads) t.join();

  double failures = 0;
  for (int w = 0; w < kWorkers; ++w) {
    failures += metrics_.creation_failures(w);
    EXPECT_EQ(metrics_.slots_in_use(w), 0);
    // One line per degraded worker, however often its retries failed.
    EXPECT_EQ(logs_.Count(google::GLOG_WARNING, {Worker(w), kDegradeText}),
              metrics_.creation_failures(w) > 0 ? 1 : 0)
        << w;
  }
  EXPECT_EQ(failures, 2);
  EXPECT_EQ(metrics_.degraded_workers(), 0);  // pools destroyed
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

TEST(RealMemorySourceTest, MapsWritableMemoryAndReportsEnomem) {
  RealMemorySource memory;
  absl::StatusOr<void*> addr = memory.Map(1 << 20);
  ASSERT_TRUE(addr.ok()) << addr.status();
  std::memset(*addr, 0xab, 1 << 20);
  EXPECT_EQ(static_cast<uint8_t*>(*addr)[(1 << 20) - 1], 0xab);
  memory.Unmap(*addr, 1 << 20);

  // Far beyond any machine's address space: refused, reported, no crash.
  absl::StatusOr<void*> huge = memory.Map(size_t{1} << 62);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  // No message: the failure path must not allocate (see MemorySource).
  EXPECT_EQ(huge.status().message(), "");

  EXPECT_FALSE(memory.Map(0).ok());
}

TEST(RealMemorySourceTest, HeapBlocksAreAligned) {
  RealMemorySource memory;
  absl::StatusOr<void*> block = memory.AllocateHeap(12345, 4096);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*block) % 4096, 0u);
  std::memset(*block, 1, 12345);
  memory.FreeHeap(*block);
  memory.FreeHeap(nullptr);
  EXPECT_EQ(memory.AllocateHeap(4096, 3000).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ublk
