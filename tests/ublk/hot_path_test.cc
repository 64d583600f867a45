// Issue 18: no allocation, lock or log line per I/O on the worker's hot path
// (the clock is worker_test's ServingIoReadsNoClock). This binary replaces the
// global operator new and interposes pthread_mutex_lock, and counts both on
// the worker threads only (named "ublk-worker-N" by Worker), leaving out the
// fake kernel's own mutex: the real kernel takes no user-space lock, the fake
// takes one per call on the caller's thread. After a warm-up (the queue is
// attached and the buffer pool made, both of which allocate and lock on the
// worker, which shows the counting sees that thread), 64 WRITE+READ pairs must
// add nothing, in every copy mode the fake kernel serves, on the null target
// and on the file target's two paths (inline for in-memory files, the ring
// for the rest).
//
// Sanitizers own operator new and pthread_mutex_lock (they intercept both), so
// the hooks are compiled only in plain builds and the cases skip elsewhere;
// CI's plain gcc tree runs them.
#include <dlfcn.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/data.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/sanitizers.h"
#include "ublk/export.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/null_target.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/worker.h"

// Sanitizers own operator new and pthread_mutex_lock.
#define UBLK_HOT_PATH_HOOKS (!UBLK_TEST_SANITIZED)

namespace {
std::atomic<uint64_t> g_worker_allocs{0};
std::atomic<uint64_t> g_worker_locks{0};
std::atomic<void*> g_ignored_lock{nullptr};

// Whether the calling thread is a worker, decided on its first counted call
// (a worker names itself before it allocates or locks anything).
[[maybe_unused]] bool OnWorker() {
  thread_local int kind = -1;
  if (kind < 0) {
    char name[17] = {};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    kind = std::strncmp(name, "ublk-worker-", 12) == 0 ? 1 : 0;
  }
  return kind == 1;
}
}  // namespace

#if UBLK_HOT_PATH_HOOKS
#include "tests/testing/operator_new.h"

void* TestOperatorNew(size_t n, size_t align) noexcept {
  if (OnWorker()) g_worker_allocs.fetch_add(1, std::memory_order_relaxed);
  return ublk_test::AllocateForNew(n, align);
}

// std::mutex (ublk::Mutex), glog and libstdc++ lock through this symbol.
extern "C" int pthread_mutex_lock(pthread_mutex_t* m) {
  using Fn = int (*)(pthread_mutex_t*);
  static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_mutex_lock"));
  if (OnWorker() && m != g_ignored_lock.load(std::memory_order_relaxed)) {
    g_worker_locks.fetch_add(1, std::memory_order_relaxed);
  }
  return real(m);
}
#endif  // UBLK_HOT_PATH_HOOKS

namespace ublk {
namespace {

using ublk_test::Pattern;

constexpr uint64_t kSize = 8 << 20;
constexpr uint32_t kIo = 4096;

enum class Backing { kNull, kFileInline, kFileRing };

struct Case {
  CopyMode mode;
  Backing backing;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const char* b = info.param.backing == Backing::kNull         ? "Null"
                  : info.param.backing == Backing::kFileInline ? "FileInline"
                                                               : "FileRing";
  std::string mode(CopyModeName(info.param.mode));
  mode.erase(std::remove(mode.begin(), mode.end(), '_'), mode.end());
  return absl::StrCat(mode, b);
}

class HotPathTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!UBLK_HOT_PATH_HOOKS) GTEST_SKIP() << "sanitizer build: operator new and locks are its own";
    g_ignored_lock.store(kernel_.lock_handle());
  }
  void TearDown() override {
    if (!path_.empty()) std::filesystem::remove(path_);
  }

  std::shared_ptr<Target> MakeTarget() {
    if (GetParam().backing == Backing::kNull) return std::make_shared<NullTarget>(kSize);
    // /dev/shm is tmpfs: inline I/O where allowed, io_uring (buffered: tmpfs
    // has no O_DIRECT) where not.
    path_ = absl::StrCat("/dev/shm/ublk-hot-path-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->random_seed(), ".img");
    FileTargetOptions o;
    o.path = path_;
    o.size_bytes = kSize;
    o.create = true;
    o.inline_memory_files = GetParam().backing == Backing::kFileInline;
    auto t = FileTarget::Open(o);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    EXPECT_EQ((*t)->inline_io(), GetParam().backing == Backing::kFileInline);
    return std::shared_ptr<Target>(std::move(*t));
  }

  // WRITE then READ of block `i`; the READ must return what a null target
  // or a file holds then.
  void WriteRead(uint32_t dev, int i) {
    const std::string data = Pattern(kIo, i);
    auto w = kernel_.Write(dev, uint64_t{kIo} * i, data);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_EQ(w->result, static_cast<int32_t>(kIo));
    auto r = kernel_.Read(dev, uint64_t{kIo} * i, kIo);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->result, static_cast<int32_t>(kIo));
    if (GetParam().backing == Backing::kNull) {
      ASSERT_EQ(r->data, std::string(kIo, '\0'));
    } else {
      ASSERT_TRUE(r->data == data) << "block " << i;
    }
  }

  // The worker finishes its loop pass after the last commit; let it go idle.
  static void Settle() { std::this_thread::sleep_for(std::chrono::milliseconds(50)); }

  FakeKernel kernel_;
  std::unique_ptr<ControlDevice> control_ = kernel_.OpenControl(CmdEncoding::kIoctl);
  RealMemorySource memory_;
  std::string path_;
};

TEST_P(HotPathTest, ServingIoAllocatesLocksAndLogsNothing) {
  const uint64_t allocs_at_start = g_worker_allocs.load();
  const uint64_t locks_at_start = g_worker_locks.load();
  WorkerOptions wo;
  wo.memory = &memory_;
  wo.buffer_pool.slot_count = 8;
  wo.buffer_pool.slot_size = 128 * 1024;
  auto w = Worker::Create(wo);
  ASSERT_TRUE(w.ok()) << w.status();
  std::shared_ptr<Target> target = MakeTarget();
  ASSERT_NE(target, nullptr);
  ExportOptions eo;
  eo.size_bytes = kSize;
  eo.queue_depth = 8;
  eo.copy_mode = GetParam().mode;
  eo.max_io_bytes = 128 * 1024;
  auto e = Export::Create(*control_, {w->get()}, target, eo);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->Start().ok());
  const uint32_t dev = (*e)->dev_id();
  for (int i = 0; i < 16; ++i) ASSERT_NO_FATAL_FAILURE(WriteRead(dev, i));
  Settle();
  // The counting sees the worker: attaching the queue allocated on it, and
  // running that task took the worker's task lock.
  const uint64_t allocs_before = g_worker_allocs.load();
  const uint64_t locks_before = g_worker_locks.load();
  EXPECT_GT(allocs_before, allocs_at_start);
  EXPECT_GT(locks_before, locks_at_start);
  EXPECT_TRUE((*w)->buffer_pool_touched());

  ublk_test::LogCapture logs;
  const uint64_t completed_before = (*w)->completed_ios();
  for (int i = 16; i < 80; ++i) ASSERT_NO_FATAL_FAILURE(WriteRead(dev, i));
  Settle();
  EXPECT_EQ((*w)->completed_ios() - completed_before, 128u);
  EXPECT_EQ(g_worker_allocs.load() - allocs_before, 0u) << "allocations on the worker in 128 I/Os";
  EXPECT_EQ(g_worker_locks.load() - locks_before, 0u) << "mutex locks on the worker in 128 I/Os";
  EXPECT_EQ(logs.AtLeast(google::GLOG_INFO).size(), 0u) << "log lines in 128 I/Os";

  ASSERT_TRUE((*e)->Stop().ok());
  ASSERT_TRUE((*e)->Delete().ok());
}

INSTANTIATE_TEST_SUITE_P(ModesAndTargets, HotPathTest,
                         ::testing::Values(Case{CopyMode::kUserCopy, Backing::kNull},
                                           Case{CopyMode::kGetData, Backing::kNull},
                                           Case{CopyMode::kUserCopy, Backing::kFileInline},
                                           Case{CopyMode::kGetData, Backing::kFileInline},
                                           Case{CopyMode::kUserCopy, Backing::kFileRing},
                                           Case{CopyMode::kGetData, Backing::kFileRing}),
                         CaseName);

}  // namespace
}  // namespace ublk
