// Worker specifics on the fake kernel: bounded buffers (pool exhaustion parks
// I/O, no memory at all requeues it, neither fails it), several devices on
// one worker, and the cross-thread API's errors.
#include "ublk/worker.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/data.h"
#include "ublk/export.h"
#include "ublk/memory.h"
#include "ublk/mutex.h"
#include "ublk/null_target.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fault_memory.h"

namespace ublk {
namespace {

using ublk_test::Pattern;

constexpr uint64_t kSize = 8 << 20;

// A RAM-backed target: data written is kept, so reads can be checked.
class RamTarget final : public Target {
 public:
  RamTarget() : data_(kSize, '\0') {}
  uint64_t size_bytes() const override { return kSize; }
  bool supports_discard() const override { return false; }
  const char* name() const override { return "ram"; }
  std::optional<int32_t> StartIo(Ring&, const TargetIo& io, uint64_t) override {
    ublk::MutexLock lock(&mu_);
    if (io.op == UBLK_IO_OP_READ) std::memcpy(io.buf, data_.data() + io.offset, io.len);
    if (io.op == UBLK_IO_OP_WRITE) std::memcpy(data_.data() + io.offset, io.buf, io.len);
    return io.op == UBLK_IO_OP_READ || io.op == UBLK_IO_OP_WRITE ? static_cast<int32_t>(io.len) : 0;
  }
  std::optional<int32_t> FinishIo(const TargetIo&, int32_t res) override { return res; }

 private:
  ublk::Mutex mu_;
  std::string data_;
};

// A RAM target whose I/O stays in flight on the worker's ring until the test
// opens the gate: each request, once copied, waits on a 1-byte read from a
// pipe. While the gate is shut every request that has a pool slot keeps it,
// so more requests than slots must park: pool exhaustion by construction,
// not by timing (the old version relied on file writes being slow enough,
// which TSan's slowdown broke).
class GatedTarget final : public Target {
 public:
  // on_kernel_threads: what ring_io_on_kernel_threads answers.
  explicit GatedTarget(bool on_kernel_threads = false) : on_kernel_threads_(on_kernel_threads) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    read_fd_ = fds[0];
    write_fd_ = fds[1];
  }
  ~GatedTarget() override {
    close(read_fd_);
    close(write_fd_);
  }
  uint64_t size_bytes() const override { return ram_.size_bytes(); }
  bool supports_discard() const override { return false; }
  const char* name() const override { return "gated"; }
  bool ring_io_on_kernel_threads(bool) const override { return on_kernel_threads_; }
  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override {
    std::optional<int32_t> res = ram_.StartIo(ring, io, user_data);
    if (open_.load()) return res;
    started_.fetch_add(1);
    io_uring_sqe* sqe = ring.GetSqe();
    io_uring_prep_read(sqe, read_fd_, &sink_[user_data % sizeof(sink_)], 1, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return std::nullopt;
  }
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t res) override {
    return res == 1 ? static_cast<int32_t>(io.len) : -EIO;
  }
  // From now on requests complete at once; the ones waiting on the pipe get
  // a byte each (more bytes than the queue depth: the rest stay unread).
  void Open() {
    open_.store(true);
    const std::string bytes(256, 'x');
    EXPECT_EQ(write(write_fd_, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }
  int started() const { return started_.load(); }

 private:
  const bool on_kernel_threads_;
  RamTarget ram_;
  int read_fd_ = -1;
  int write_fd_ = -1;
  std::atomic<bool> open_{false};
  std::atomic<int> started_{0};
  char sink_[256] = {};
};

class WorkerTest : public ::testing::TestWithParam<CopyMode> {
 protected:
  std::unique_ptr<Worker> MakeWorker(MemorySource& memory, size_t slots,
                                     BufferPoolMetrics* metrics = nullptr,
                                     bool user_copy_on_ring = false) {
    WorkerOptions o = Options(slots, &memory);
    o.user_copy_on_ring = user_copy_on_ring;
    o.pool_metrics = metrics;
    o.no_memory_retry = absl::Milliseconds(2);
    auto w = Worker::Create(o);
    EXPECT_TRUE(w.ok()) << w.status();
    return std::move(*w);
  }
  // A worker of `slots` bounce buffers of 128 KiB on `memory` (default: the real one).
  WorkerOptions Options(size_t slots = 8, MemorySource* memory = nullptr) {
    WorkerOptions o;
    o.memory = memory != nullptr ? memory : &real_memory_;
    o.buffer_pool.slot_count = slots;
    o.buffer_pool.slot_size = 128 * 1024;
    return o;
  }
  std::unique_ptr<Export> Serve(Worker& w, std::shared_ptr<Target> t, uint16_t depth) {
    ExportOptions o;
    o.size_bytes = kSize;
    o.queue_depth = depth;
    o.copy_mode = GetParam();
    o.max_io_bytes = 128 * 1024;
    auto e = Export::Create(*control_, {&w}, std::move(t), o);
    EXPECT_TRUE(e.ok()) << e.status();
    EXPECT_TRUE((*e)->Start().ok());
    return std::move(*e);
  }

  FakeKernel kernel_;
  std::unique_ptr<ControlDevice> control_ = kernel_.OpenControl(CmdEncoding::kIoctl);
  RealMemorySource real_memory_;
};

TEST_P(WorkerTest, PoolExhaustionParksIoUntilASlotIsFree) {
  prometheus::Registry registry;
  BufferPoolMetrics metrics(registry);
  auto w = MakeWorker(real_memory_, /*slots=*/2, &metrics);
  // The gated target holds each request's buffer until Open(): 16 requests
  // at once against 2 slots must park 14 of them.
  auto target = std::make_shared<GatedTarget>();
  auto e = Serve(*w, target, /*depth=*/16);
  std::vector<std::shared_ptr<FakeKernel::Request>> writes;
  for (int i = 0; i < 48; ++i) {
    writes.push_back(kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, i * 65536ull, 65536,
                                           Pattern(65536, i)));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (metrics.slot_waits(0) == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_GT(metrics.slot_waits(0), 0);  // the parking path was taken
  // Parked, not failed and not given a heap buffer: no request got past the
  // two that hold the slots.
  EXPECT_EQ(target->started(), 2);
  EXPECT_EQ(metrics.heap_fallbacks(0), 0);
  EXPECT_EQ(kernel_.Wait(writes.back(), absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  target->Open();
  for (auto& r : writes) {
    auto res = kernel_.Wait(r, absl::Seconds(10));
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_EQ(res->result, 65536);
  }
  std::vector<std::shared_ptr<FakeKernel::Request>> reads;
  for (int i = 0; i < 48; ++i) {
    reads.push_back(kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_READ, i * 65536ull, 65536));
  }
  for (int i = 0; i < 48; ++i) {
    auto res = kernel_.Wait(reads[i], absl::Seconds(10));
    ASSERT_TRUE(res.ok());
    EXPECT_TRUE(res->data == Pattern(65536, i)) << "block " << i;
  }
  EXPECT_EQ(metrics.heap_fallbacks(0), 0);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(WorkerTest, NoMemoryAtAllRequeuesIoInsteadOfFailingIt) {
  FaultInjectingMemorySource memory(real_memory_);
  memory.FailMapAlways();
  memory.FailHeapAlways();
  auto w = MakeWorker(memory, 4);
  auto e = Serve(*w, std::make_shared<RamTarget>(), 4);
  const std::string data = Pattern(8192, 7);
  auto write = kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, 4096, 8192, data);
  // No buffer can be had: the I/O waits, it is not failed.
  EXPECT_EQ(kernel_.Wait(write, absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_GT(memory.failed_heap_calls(), 1);  // retried
  memory.HealHeap();
  auto res = kernel_.Wait(write, absl::Seconds(5));
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->result, 8192);
  auto r = kernel_.Read(e->dev_id(), 4096, 8192);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == data);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
  w->Stop();
  EXPECT_EQ(memory.live_heap_blocks(), 0);
  EXPECT_EQ(memory.live_maps(), 0);
}

TEST_P(WorkerTest, OneWorkerServesSeveralDevices) {
  auto w = MakeWorker(real_memory_, 8);
  auto a = Serve(*w, std::make_shared<RamTarget>(), 4);
  auto b = Serve(*w, std::make_shared<NullTarget>(kSize), 4);
  auto c = Serve(*w, std::make_shared<RamTarget>(), 4);
  EXPECT_EQ(w->queue_count(), 3u);
  ASSERT_EQ(kernel_.Write(a->dev_id(), 0, std::string(4096, 'a'))->result, 4096);
  ASSERT_EQ(kernel_.Write(c->dev_id(), 0, std::string(4096, 'c'))->result, 4096);
  EXPECT_EQ(kernel_.Read(a->dev_id(), 0, 4096)->data, std::string(4096, 'a'));
  EXPECT_EQ(kernel_.Read(b->dev_id(), 0, 4096)->data, std::string(4096, '\0'));
  EXPECT_EQ(kernel_.Read(c->dev_id(), 0, 4096)->data, std::string(4096, 'c'));
  ASSERT_TRUE(b->Stop().ok());
  ASSERT_TRUE(b->Delete().ok());
  EXPECT_EQ(w->queue_count(), 2u);
  EXPECT_EQ(kernel_.Read(a->dev_id(), 0, 4096)->data, std::string(4096, 'a'));
  for (auto* e : {a.get(), c.get()}) {
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
  EXPECT_EQ(w->queue_count(), 0u);
}

// The worker's ring takes the cheapest task-run mode the kernel offers
// (COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN on 6.1+), made on the worker's
// own thread (a single-issuer ring refuses every other submitter), and
// serves I/O the same with any subset of the flags (older kernels).
TEST_P(WorkerTest, RingTakesTheBestTaskRunFlagsAndServesWithAnySubset) {
  // What this kernel accepts, probed the same way on this thread.
  auto probe = Ring::CreateSingleIssuer(8);
  ASSERT_TRUE(probe.ok()) << probe.status();
  const unsigned best = (*probe)->flags();
  probe->reset();
  for (unsigned allowed :
       {Ring::kSingleIssuerFlags, unsigned{IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER},
        unsigned{IORING_SETUP_COOP_TASKRUN}, 0u}) {
    SCOPED_TRACE(allowed);
    WorkerOptions o = Options();
    o.ring_flags_allowed = allowed;
    auto w = Worker::Create(o);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ((*w)->ring_flags() & ~unsigned{IORING_SETUP_CQSIZE}, best & allowed);
    auto e = Serve(**w, std::make_shared<RamTarget>(), 4);
    for (int i = 0; i < 8; ++i) {
      const std::string data(4096, static_cast<char>('a' + i));
      ASSERT_EQ(kernel_.Write(e->dev_id(), 4096 * i, data)->result, 4096);
      EXPECT_EQ(kernel_.Read(e->dev_id(), 4096 * i, 4096)->data, data);
    }
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
}

// The affinity of the thread named `name` in this process, or empty.
std::vector<int> ThreadCpus(const std::string& name) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(entry.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) {
      return AllowedCpus(std::stoi(entry.path().filename().string()));
    }
  }
  return {};
}

// WorkerOptions::cpu: the worker thread runs on that CPU only and serves as
// before; a CPU it may not use is refused with a log line and the worker
// serves unpinned.
TEST_P(WorkerTest, PinnedWorkerRunsOnItsCpuAndARefusedCpuLeavesItUnpinned) {
  const std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  for (int cpu : {allowed.back(), CPU_SETSIZE - 1, CPU_SETSIZE + 5}) {
    SCOPED_TRACE(cpu);
    WorkerOptions o = Options();
    o.worker_id = 77;
    o.cpu = cpu;
    auto w = Worker::Create(o);
    ASSERT_TRUE(w.ok()) << w.status();
    const bool usable = std::find(allowed.begin(), allowed.end(), cpu) != allowed.end();
    EXPECT_EQ((*w)->pinned_cpu(), usable ? cpu : -1);
    EXPECT_EQ(ThreadCpus("ublk-worker-77"), usable ? std::vector<int>{cpu} : allowed);
    auto e = Serve(**w, std::make_shared<RamTarget>(), 4);
    const std::string data(4096, 'p');
    ASSERT_EQ(kernel_.Write(e->dev_id(), 0, data)->result, 4096);
    EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 4096)->data, data);
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
}

// The null target's READs in the copy modes come from the worker's
// read-only zero mapping: no bounce buffer (the pool is never mapped for
// them), no memset, and zeros even after writes dirtied the pool's slots.
TEST_P(WorkerTest, NullTargetReadsNeedNoBuffer) {
  auto w = MakeWorker(real_memory_, 8);
  auto e = Serve(*w, std::make_shared<NullTarget>(kSize), 4);
  EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 4096)->data, std::string(4096, '\0'));
  EXPECT_EQ(kernel_.Read(e->dev_id(), 8192, 128 * 1024)->data, std::string(128 * 1024, '\0'));
  EXPECT_FALSE(w->buffer_pool_touched());
  ASSERT_EQ(kernel_.Write(e->dev_id(), 0, std::string(128 * 1024, 'w'))->result, 128 * 1024);
  EXPECT_TRUE(w->buffer_pool_touched());
  EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 128 * 1024)->data, std::string(128 * 1024, '\0'));
  EXPECT_EQ(w->completed_ios(), 4u);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// Writes blocks of several sizes at once, reads them back, and returns how
// many user copies went through the ring and how many synchronously.
std::pair<int, int> WriteAndReadBack(FakeKernel& kernel, uint32_t dev_id) {
  const uint32_t sizes[] = {4096, 65536, 128 * 1024, 8192};
  std::vector<std::shared_ptr<FakeKernel::Request>> writes;
  for (int i = 0; i < 16; ++i) {
    const uint32_t len = sizes[i % 4];
    writes.push_back(
        kernel.SubmitIoAsync(dev_id, UBLK_IO_OP_WRITE, i * 131072ull, len, Pattern(len, i)));
  }
  for (int i = 0; i < 16; ++i) {
    auto res = kernel.Wait(writes[i], absl::Seconds(10));
    EXPECT_TRUE(res.ok()) << res.status();
    if (res.ok()) {
      EXPECT_EQ(res->result, static_cast<int32_t>(sizes[i % 4]));
    }
  }
  std::vector<std::shared_ptr<FakeKernel::Request>> reads;
  for (int i = 0; i < 16; ++i) {
    reads.push_back(kernel.SubmitIoAsync(dev_id, UBLK_IO_OP_READ, i * 131072ull, sizes[i % 4]));
  }
  for (int i = 0; i < 16; ++i) {
    auto res = kernel.Wait(reads[i], absl::Seconds(10));
    EXPECT_TRUE(res.ok()) << res.status();
    if (res.ok()) {
      EXPECT_TRUE(res->data == Pattern(sizes[i % 4], i)) << "block " << i;
    }
  }
  return {kernel.user_copies_on_ring(), kernel.user_copies_sync()};
}

// With user_copy_on_ring, user copy moves each request's bytes with a READ
// or WRITE SQE on the worker's ring, not a synchronous pread/pwrite on the
// worker thread (the default, which measured faster). Get-data never copies
// through /dev/ublkcN at all.
TEST_P(WorkerTest, UserCopyMovesRequestDataOnTheRing) {
  auto w = MakeWorker(real_memory_, 8, nullptr, /*user_copy_on_ring=*/true);
  auto e = Serve(*w, std::make_shared<RamTarget>(), 8);
  auto [on_ring, sync] = WriteAndReadBack(kernel_, e->dev_id());
  EXPECT_EQ(on_ring, GetParam() == CopyMode::kUserCopy ? 32 : 0);
  EXPECT_EQ(sync, 0);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

TEST_P(WorkerTest, UserCopyIsSynchronousByDefault) {
  auto w = MakeWorker(real_memory_, 8);
  auto e = Serve(*w, std::make_shared<RamTarget>(), 8);
  auto [on_ring, sync] = WriteAndReadBack(kernel_, e->dev_id());
  EXPECT_EQ(on_ring, 0);
  EXPECT_EQ(sync, GetParam() == CopyMode::kUserCopy ? 32 : 0);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// A copy that fails on the ring fails that one request with EIO; the tag is
// committed and fetched again, and the next request on it is served.
TEST_P(WorkerTest, FailedUserCopyOnTheRingFailsOnlyThatRequest) {
  if (GetParam() != CopyMode::kUserCopy) GTEST_SKIP() << "user copy only";
  auto w = MakeWorker(real_memory_, 8, nullptr, /*user_copy_on_ring=*/true);
  auto e = Serve(*w, std::make_shared<RamTarget>(), 1);  // one tag: it must be reused
  kernel_.FailNextUserCopyOnRing();
  EXPECT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'x'))->result, -EIO);
  ASSERT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'y'))->result, 4096);
  kernel_.FailNextUserCopyOnRing();
  EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 4096)->result, -EIO);
  EXPECT_EQ(kernel_.Read(e->dev_id(), 0, 4096)->data, std::string(4096, 'y'));
  EXPECT_EQ(w->completed_ios(), 4u);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// NullTarget::Reads::kUntouched (null_blk's behaviour, for benchmarks): a
// user-copy READ or WRITE completes without any copy; get-data still answers
// zeros (and takes a WRITE's data: the kernel copies it first).
TEST_P(WorkerTest, NullTargetWithUntouchedReadsCopiesNothing) {
  auto w = MakeWorker(real_memory_, 8);
  auto e = Serve(*w, std::make_shared<NullTarget>(kSize, NullTarget::Reads::kUntouched), 4);
  auto wr = kernel_.Write(e->dev_id(), 0, std::string(128 * 1024, 'w'));
  ASSERT_TRUE(wr.ok()) << wr.status();
  EXPECT_EQ(wr->result, 128 * 1024);
  EXPECT_EQ(w->buffer_pool_touched(), GetParam() == CopyMode::kGetData);
  auto r = kernel_.Read(e->dev_id(), 0, 128 * 1024);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->result, 128 * 1024);
  EXPECT_EQ(kernel_.user_copies_on_ring() + kernel_.user_copies_sync(), 0);
  if (GetParam() == CopyMode::kGetData) {
    EXPECT_EQ(r->data, std::string(128 * 1024, '\0'));
  }
  EXPECT_EQ(w->buffer_pool_touched(), GetParam() == CopyMode::kGetData);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// The I/O loop reads no clock per I/O (nor per pass while nothing waits on
// time): after the pool exists, 128 requests read the clock 0 times.
TEST_P(WorkerTest, ServingIoReadsNoClock) {
  FakeClock clock;
  WorkerOptions o = Options();
  o.clock = &clock;
  auto w = Worker::Create(o);
  ASSERT_TRUE(w.ok()) << w.status();
  auto e = Serve(**w, std::make_shared<RamTarget>(), 8);
  ASSERT_EQ(kernel_.Write(e->dev_id(), 0, std::string(4096, 'a'))->result, 4096);  // makes the pool
  const int before = clock.now_calls();
  for (int i = 0; i < 64; ++i) {
    const std::string data = Pattern(4096, i);
    ASSERT_EQ(kernel_.Write(e->dev_id(), 4096 * i, data)->result, 4096);
    EXPECT_TRUE(kernel_.Read(e->dev_id(), 4096 * i, 4096)->data == data);
  }
  EXPECT_EQ(clock.now_calls() - before, 0);
  ASSERT_TRUE(e->Stop().ok());
  ASSERT_TRUE(e->Delete().ok());
}

// WorkerOptions::busy_poll_rounds: after a wait that brought completions the
// worker reaps without sleeping for up to that many rounds, serves I/O the
// same, and once idle goes back to sleep instead of spinning. 0 never
// polls.
TEST_P(WorkerTest, BusyPollServesIoAndSleepsWhenIdle) {
  for (unsigned rounds : {0u, 16u}) {
    SCOPED_TRACE(absl::StrCat("busy_poll_rounds=", rounds));
    WorkerOptions o = Options();
    o.busy_poll_rounds = rounds;
    auto w = Worker::Create(o);
    ASSERT_TRUE(w.ok()) << w.status();
    auto e = Serve(**w, std::make_shared<RamTarget>(), 8);
    for (int i = 0; i < 32; ++i) {
      const std::string data = Pattern(4096, i);
      ASSERT_EQ(kernel_.Write(e->dev_id(), 4096 * i, data)->result, 4096);
      EXPECT_TRUE(kernel_.Read(e->dev_id(), 4096 * i, 4096)->data == data);
    }
    // Idle now: the rounds run out within a moment and the count stops.
    uint64_t polls = (*w)->polls();
    for (int i = 0; i < 50; ++i) {
      absl::SleepFor(absl::Milliseconds(20));
      if ((*w)->polls() == polls) break;
      polls = (*w)->polls();
    }
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_EQ((*w)->polls(), polls) << "an idle worker keeps polling";
    if (rounds == 0) {
      EXPECT_EQ(polls, 0u);
    } else {
      // Every completion is followed by rounds; 64 requests make at least 64.
      EXPECT_GE(polls, 64u);
      // A run of empty rounds is at most `rounds` long and ends in a sleep
      // or in a round that found work.
      EXPECT_LE(polls - (*w)->polls_found(), rounds * ((*w)->sleeps() + (*w)->polls_found()));
    }
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
}

// While io-wq threads serve a queue's target I/O (a file on tmpfs in zero
// copy), a pinned worker sleeps instead of busy-polling: its spinning would
// hold a CPU they need. It polls again once that I/O is done, and always for
// a target whose I/O is a device's, when unpinned, or with
// poll_while_on_kernel_threads.
TEST_P(WorkerTest, PinnedWorkerDoesNotBusyPollWhileIoIsOnKernelThreads) {
  struct Case {
    bool on_kernel_threads;
    bool pinned;
    bool poll_anyway;
  };
  const std::vector<int> cpus = AllowedCpus();
  ASSERT_FALSE(cpus.empty());
  for (const Case c : {Case{true, true, false}, Case{false, true, false}, Case{true, false, false},
                       Case{true, true, true}}) {
    SCOPED_TRACE(absl::StrCat("on_kernel_threads=", c.on_kernel_threads, " pinned=", c.pinned,
                              " poll_while_on_kernel_threads=", c.poll_anyway));
    WorkerOptions o = Options();
    if (c.pinned) o.cpu = cpus.front();
    // Rounds enough to outlast the checks below (a round is a syscall).
    o.busy_poll_rounds = 50'000'000;
    o.poll_while_on_kernel_threads = c.poll_anyway;
    auto w = Worker::Create(o);
    ASSERT_TRUE(w.ok()) << w.status();
    auto target = std::make_shared<GatedTarget>(c.on_kernel_threads);
    auto e = Serve(**w, target, 4);
    const std::string data = Pattern(4096, 3);
    auto write = kernel_.SubmitIoAsync(e->dev_id(), UBLK_IO_OP_WRITE, 0, 4096, data);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (target->started() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
    ASSERT_EQ(target->started(), 1);
    absl::SleepFor(absl::Milliseconds(20));
    const uint64_t polls = (*w)->polls();
    absl::SleepFor(absl::Milliseconds(50));
    if (c.on_kernel_threads && c.pinned && !c.poll_anyway) {
      EXPECT_EQ((*w)->polls(), polls) << "the worker spins while io-wq has its I/O";
    } else {
      EXPECT_GT((*w)->polls(), polls) << "the worker stopped polling with I/O in flight";
    }
    target->Open();
    auto res = kernel_.Wait(write, absl::Seconds(10));
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_EQ(res->result, 4096);
    // The I/O is done: the completion's rounds run, whatever the target.
    const uint64_t after = (*w)->polls();
    absl::SleepFor(absl::Milliseconds(20));
    EXPECT_GT((*w)->polls(), after);
    EXPECT_TRUE(kernel_.Read(e->dev_id(), 0, 4096)->data == data);
    ASSERT_TRUE(e->Stop().ok());
    ASSERT_TRUE(e->Delete().ok());
  }
}

TEST_P(WorkerTest, ApiErrors) {
  auto w = MakeWorker(real_memory_, 2);
  EXPECT_EQ(w->AddQueue(QueueConfig{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->RemoveQueue(12345, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kNotFound);
  w->Stop();
  w->Stop();  // idempotent
  auto info = control_->AddDevice(DeviceInfo{});
  ASSERT_TRUE(info.ok());
  auto ch = control_->OpenQueue(info->dev_id, 0, info->queue_depth);
  ASSERT_TRUE(ch.ok());
  EXPECT_EQ(
      w->AddQueue(QueueConfig{std::move(*ch), std::make_shared<NullTarget>(kSize), GetParam()})
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
  WorkerOptions no_memory;
  EXPECT_EQ(Worker::Create(no_memory).status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(CopyModes, WorkerTest,
                         ::testing::Values(CopyMode::kUserCopy, CopyMode::kGetData),
                         [](const auto& info) { return std::string(CopyModeName(info.param)); });

}  // namespace
}  // namespace ublk
