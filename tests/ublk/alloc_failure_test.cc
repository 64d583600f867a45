// Issue 20 item 1: the no-memory path must not allocate. This binary replaces
// the global operator new (every form) and, outside sanitizer builds, malloc
// and its family, with versions that fail while a switch is on. 66 exports
// recover on the fake kernel into a budget too small for any buffer, so the
// I/O re-issued to them parks; then EVERY allocation in the process fails
// while the workers keep retrying that I/O. Nothing may abort (the old code
// grew a std::vector to park, threw std::bad_alloc, and ended in
// std::terminate). When memory returns every parked I/O is served, with the
// right data.
//
// Sanitizers own malloc (ASan/TSan intercept it; a second definition here
// would break them), so under them only operator new is replaced, and the
// buffer heap (posix_memalign in RealMemorySource) is failed through the
// memory seam instead: the nearest honest equivalent. In plain builds the
// real posix_memalign is what fails.
#include <errno.h>
#include <stdlib.h>

#include <atomic>
#include <cstddef>
#include <filesystem>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/data.h"
#include "tests/testing/sanitizers.h"
#include "ublk/export.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fault_memory.h"
#include "ublk/worker_pool.h"

// clang's TSan defines operator new itself: there the test runs on the
// memory seam alone, for TSan's view of the parking and retry threads. gcc's
// sanitizers (shared runtimes) keep the replacement.
#define UBLK_TEST_NEW_HOOK (!UBLK_TEST_CLANG_TSAN)

namespace {
std::atomic<bool> g_fail{false};
std::atomic<uint64_t> g_refused{0};

[[maybe_unused]] bool Refuse() {
  if (!g_fail.load(std::memory_order_relaxed)) return false;
  g_refused.fetch_add(1, std::memory_order_relaxed);
  return true;
}
}  // namespace

#if UBLK_TEST_NEW_HOOK
#include "tests/testing/operator_new.h"

// Plain builds: the allocation goes to our malloc below; sanitized builds: to
// the sanitizer's.
void* TestOperatorNew(size_t n, size_t align) noexcept {
  return Refuse() ? nullptr : ublk_test::AllocateForNew(n, align);
}
#endif  // UBLK_TEST_NEW_HOOK

#if !UBLK_TEST_SANITIZED
extern "C" {
void* __libc_malloc(size_t);
void __libc_free(void*);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);

void* malloc(size_t n) noexcept {
  if (Refuse()) {
    errno = ENOMEM;
    return nullptr;
  }
  return __libc_malloc(n);
}
void free(void* p) noexcept { __libc_free(p); }
void* calloc(size_t a, size_t b) noexcept {
  if (Refuse()) {
    errno = ENOMEM;
    return nullptr;
  }
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) noexcept {
  if (n != 0 && Refuse()) {
    errno = ENOMEM;
    return nullptr;
  }
  return __libc_realloc(p, n);
}
void* memalign(size_t align, size_t n) noexcept {
  if (Refuse()) {
    errno = ENOMEM;
    return nullptr;
  }
  return __libc_memalign(align, n);
}
void* aligned_alloc(size_t align, size_t n) noexcept { return memalign(align, n); }
int posix_memalign(void** out, size_t align, size_t n) noexcept {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  if (Refuse()) return ENOMEM;
  void* p = __libc_memalign(align, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* valloc(size_t n) noexcept { return memalign(4096, n); }
void* pvalloc(size_t n) noexcept { return memalign(4096, (n + 4095) & ~size_t{4095}); }
}
#endif

namespace ublk {
namespace {

using ublk_test::Pattern;

constexpr uint64_t kMiB = 1 << 20;

class AllocFailureTest : public ::testing::TestWithParam<CopyMode> {
 protected:
  void TearDown() override {
    g_fail.store(false);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::shared_ptr<FileTarget> MakeFileTarget(const std::string& name, uint64_t size) {
    if (dir_.empty()) {
      std::string tmpl = ::testing::TempDir() + "/alloc_failure_test.XXXXXX";
      EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
      dir_ = tmpl;
    }
    auto t = FileTarget::Open({dir_ + "/" + name, size, /*create=*/true, true});
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::shared_ptr<FileTarget>(std::move(*t)) : nullptr;
  }
  WorkerPoolOptions Options(int workers) {
    WorkerPoolOptions o;
    o.worker_count = workers;
    o.memory = &memory_;
    o.ring_entries = 256;
    // No background thread: it reads files (allocates) and is not the path
    // under test. The test refreshes the budget itself, outside the window.
    o.metrics_refresh_interval = absl::ZeroDuration();
    o.budget_refresh_interval = absl::ZeroDuration();
    o.buffer_retry_interval = absl::Milliseconds(20);
    o.no_memory_retry = absl::Milliseconds(2);
    return o;
  }

  RealMemorySource real_;
  FaultInjectingMemorySource memory_{real_};
  std::string dir_;
};

TEST_P(AllocFailureTest, SixtySixExportsRecoverWhileEveryAllocationFails) {
  constexpr int kExports = 66;
  constexpr int kWorkers = 4;
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
  std::vector<uint32_t> ids;
  // The old process: creates and serves, then dies.
  {
    auto old_pool = WorkerPool::Create(Options(2), nullptr);
    ASSERT_TRUE(old_pool.ok()) << old_pool.status();
    std::vector<std::unique_ptr<Export>> exports;
    for (int i = 0; i < kExports; ++i) {
      ExportOptions eo;
      eo.nr_queues = i % 3 == 0 ? 2 : 1;
      eo.queue_depth = 4;
      eo.copy_mode = GetParam();
      eo.max_io_bytes = 128 * 1024;
      eo.user_recovery = true;
      eo.user_recovery_reissue = true;
      auto e = Export::Create(*control, (*old_pool)->Assign(eo.nr_queues), targets[i], eo);
      ASSERT_TRUE(e.ok()) << i << ": " << e.status();
      ASSERT_TRUE((*e)->Start().ok());
      ASSERT_EQ(kernel.Write((*e)->dev_id(), 0, Pattern(4096, i))->result, 4096);
      ids.push_back((*e)->dev_id());
      exports.push_back(std::move(*e));
    }
    for (auto& e : exports) ASSERT_TRUE(e->Detach().ok());
    (*old_pool)->Stop();
  }
  // I/O issued while no server runs; re-issued to the new one.
  std::vector<std::shared_ptr<FakeKernel::Request>> pending;
  for (int i = 0; i < kExports; ++i) {
    pending.push_back(
        kernel.SubmitIoAsync(ids[i], UBLK_IO_OP_WRITE, 8192, 8192, Pattern(8192, 1000 + i)));
  }

  // The new process, in a cgroup with no room for any buffer: usage is at
  // the limit, so the budget refuses every pool chunk and heap buffer.
  FakeMemoryFiles files;
  files.SetCgroupV2("/plugin", 64 * kMiB, 64 * kMiB);
  prometheus::Registry registry;
  WorkerPoolOptions o = Options(kWorkers);
  o.budget = MemoryBudgetOptions{};
  o.memory_files = &files;
  auto created = WorkerPool::Create(o, &registry);
  ASSERT_TRUE(created.ok()) << created.status();
  WorkerPool& pool = **created;
  MemoryBudget& budget = *pool.memory_budget();
  ASSERT_EQ(budget.limit(), 64 * kMiB);

  std::vector<std::unique_ptr<Export>> recovered(kExports);
  std::vector<std::vector<Worker*>> assigned(kExports);
  for (int i = 0; i < kExports; ++i) {
    auto info = control->GetDeviceInfo(ids[i]);
    ASSERT_TRUE(info.ok()) << info.status();
    assigned[i] = pool.Assign(info->nr_hw_queues);
    auto e = Export::Recover(*control, assigned[i], targets[i], ids[i]);
    ASSERT_TRUE(e.ok()) << i << ": " << e.status();
    recovered[i] = std::move(*e);
  }
  // Every re-issued write is parked: none completed, none failed.
  auto parked = [&] {
    size_t n = 0;
    for (size_t w = 0; w < pool.size(); ++w) n += pool.worker(w)->parked_ios();
    return n;
  };
  for (int i = 0; i < 500 && parked() < static_cast<size_t>(kExports); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(parked(), static_cast<size_t>(kExports));
  EXPECT_GT(budget.denials(), 0u);
  for (int i = 0; i < kExports; ++i) {
    EXPECT_EQ(kernel.Wait(pending[i], absl::ZeroDuration()).status().code(),
              absl::StatusCode::kDeadlineExceeded)
        << i;
  }

  // Now the budget would admit buffers, but the process has no memory at
  // all: pool mappings fail, and so does every allocation. The budget is
  // refreshed first (reading files allocates).
  // The seam fails both until the global switch is on, so that no buffer
  // slips through in between; in plain builds the heap is then left to the
  // real posix_memalign, which the switch makes fail.
  memory_.FailMapAlways();
  memory_.FailHeapAlways();
  files.SetCgroupV2("/plugin", 1024 * kMiB, 64 * kMiB);
  pool.RefreshBudget();
  const int64_t maps_before = memory_.failed_map_calls();
  const int64_t heaps_before = memory_.heap_calls();
  const uint64_t refused_before = g_refused.load();

  g_fail.store(true);
  if (!UBLK_TEST_SANITIZED) memory_.HealHeap();
  absl::SleepFor(absl::Milliseconds(300));  // ~150 retry rounds per worker
  memory_.FailHeapAlways();                 // still no buffer until the checks below are done
  g_fail.store(false);

  const int64_t map_attempts = memory_.failed_map_calls() - maps_before;
  const int64_t heap_attempts = memory_.heap_calls() - heaps_before;
  const uint64_t refused = g_refused.load() - refused_before;
  // The workers did retry during the window (and survived it).
  EXPECT_GE(map_attempts, kWorkers);  // retry_interval 20 ms: several each
  EXPECT_GT(heap_attempts, 10 * kWorkers);
  if (!UBLK_TEST_SANITIZED) {
    EXPECT_GT(refused, 10u * kWorkers);  // real posix_memalign calls refused
  }
  EXPECT_EQ(parked(), static_cast<size_t>(kExports));
  for (int i = 0; i < kExports; ++i) {
    auto w = kernel.Wait(pending[i], absl::ZeroDuration());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kDeadlineExceeded)
        << i << ": completed with " << (w.ok() ? w->result : 0);
  }

  // Memory returns: every parked I/O is served, none failed.
  memory_.HealMap();
  memory_.HealHeap();
  for (int i = 0; i < kExports; ++i) {
    auto p = kernel.Wait(pending[i], absl::Seconds(10));
    ASSERT_TRUE(p.ok()) << i << ": " << p.status();
    EXPECT_EQ(p->result, 8192) << i;
  }
  for (int i = 0; i < kExports; ++i) {
    auto before = kernel.Read(ids[i], 0, 4096);
    ASSERT_TRUE(before.ok());
    EXPECT_TRUE(before->data == Pattern(4096, i)) << i;
    auto during = kernel.Read(ids[i], 8192, 8192);
    ASSERT_TRUE(during.ok());
    EXPECT_TRUE(during->data == Pattern(8192, 1000 + i)) << i;
  }
  EXPECT_EQ(parked(), 0u);
  uint64_t ever = 0;
  for (size_t w = 0; w < pool.size(); ++w) ever += pool.worker(w)->parked_ios_total();
  EXPECT_GE(ever, static_cast<uint64_t>(kExports));

  for (int i = 0; i < kExports; ++i) {
    ASSERT_TRUE(recovered[i]->Stop().ok()) << i;
    ASSERT_TRUE(recovered[i]->Delete().ok()) << i;
    pool.Release(assigned[i]);
  }
  created->reset();
  EXPECT_EQ(memory_.live_maps(), 0);
  EXPECT_EQ(memory_.live_heap_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(CopyModes, AllocFailureTest,
                         ::testing::Values(CopyMode::kUserCopy, CopyMode::kGetData),
                         [](const auto& info) { return std::string(CopyModeName(info.param)); });

}  // namespace
}  // namespace ublk
