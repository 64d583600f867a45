// Worker: one thread owning one io_uring that serves every ublk queue handed
// to it: the queues' FETCH/COMMIT/NEED_GET_DATA commands and their targets'
// file I/O share the ring, and completions are dispatched by user_data ->
// (queue, tag, kind). Nothing here assumes a thread per device or per queue:
// a WorkerPool spreads queues over N workers.
//
// Threads: AddQueue/RemoveQueue/Stop may be called from any thread except
// the worker's own; they reach the worker through a mutex-protected task
// list and an eventfd the ring reads. Everything else runs on the worker.
// Buffers: in the copy modes an I/O holds a buffer (from the worker's
// BufferPool) only while it is served; a tag at rest holds none. Zero-copy
// queues never touch the BufferPool: the ring gets a sparse registered-buffer
// table when the first zero-copy queue attaches, each such queue gets a range
// of queue_depth indices in it (given back, and cleared, when the queue is
// dropped), and the kernel registers each request's pages at its tag's index.
// Targets that complete on a library's own threads (RBD) post their results
// to the worker's AsyncCompletionQueue; an eventfd READ on the ring wakes the
// worker, which finishes them like ring completions.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ublk/async_completion.h"
#include "ublk/buffer_pool.h"
#include "ublk/clock.h"
#include "ublk/kernel.h"
#include "ublk/memory.h"
#include "ublk/memory_budget.h"
#include "ublk/mutex.h"
#include "ublk/ring.h"
#include "ublk/target.h"
#include "ublk/unique_fd.h"

namespace ublk {

struct WorkerOptions {
  int worker_id = 0;
  unsigned ring_entries = 512;
  // Completion queue: room for every tag's command and target I/O of many
  // queues at once without the kernel's overflow list (0: twice the SQ).
  unsigned cq_entries = 4096;
  // IORING_SETUP_* task-run flags the worker's ring may use (it takes the
  // best the kernel has, see Ring::CreateSingleIssuer). Tests whose fake
  // kernel registers buffers on the ring from another thread pass 0:
  // SINGLE_ISSUER refuses that.
  unsigned ring_flags_allowed = Ring::kSingleIssuerFlags;
  BufferPoolOptions buffer_pool;
  // Required; must outlive the worker (main() passes a RealMemorySource).
  MemorySource* memory = nullptr;
  // Nullable: a RealClock is used.
  const Clock* clock = nullptr;
  BufferPoolMetrics* pool_metrics = nullptr;  // nullable
  // Nullable; must outlive the worker. Admits the pool's chunks and heap
  // buffers; when its pressure_epoch() moves the worker releases an idle pool.
  MemoryBudget* budget = nullptr;
  // How soon an I/O that found no memory at all tries again.
  absl::Duration no_memory_retry = absl::Milliseconds(5);
  // Size of the ring's registered-buffer table (registered sparse, at the
  // first zero-copy queue): the sum of the depths of the zero-copy queues the
  // worker can serve at once. io_uring allows at most 16384.
  unsigned fixed_buffer_slots = 16384;
  // User copy: move a request's bytes to and from /dev/ublkcN with READ and
  // WRITE SQEs on the worker's ring instead of a synchronous pread/pwrite per
  // request on the worker thread. Off by default: measured slower on 6.12 and
  // on 7.3 (bench/README.md, session 10): the char device takes no
  // non-blocking I/O, so io_uring hands every copy to an io-wq thread (one
  // more context switch per copy; 4k QD32 rows fell from 0.75-0.92x to
  // 0.37-0.50x). With it on, a copy that cannot get an SQE, or comes back
  // short, is finished synchronously.
  bool user_copy_on_ring = false;
  // After a wait that brought completions, up to this many non-blocking
  // submit-and-reap rounds (io_uring_enter with GETEVENTS, no wait) before
  // the worker sleeps again: a request that arrives meanwhile is taken
  // without a wake-up (on 6.12, null target, user copy: 4k QD1 0.04x -> 0.15x
  // of null_blk, 4k QD32 0.54-0.58x -> 0.70-0.73x; bench/README.md, session
  // 15). An idle worker sleeps after at most this many rounds (tens of
  // microseconds); 0: always sleep at once.
  unsigned busy_poll_rounds = 128;
  // A pinned worker (`cpu`) does not busy-poll while target I/O that io-wq
  // threads serve is in flight (Target::ring_io_on_kernel_threads: a file on
  // tmpfs in zero copy): it sleeps and leaves its CPU to them. On 7.3 that
  // took 128k reads from 0.66x to 0.86x of loop and writes from 0.70x to
  // 0.96x, 4k QD32 from 1.18-1.20x to 1.24-1.32x, and cost 4k QD1 1.03x ->
  // 0.92x. Unpinned, the same rule cost QD1 0.68x -> 0.45x and 128k reads
  // 0.64x -> 0.56x, so an unpinned worker polls as before (bench/README.md,
  // session 18). true: a pinned worker polls regardless (the A/B baseline).
  bool poll_while_on_kernel_threads = false;
  // >= 0: the worker thread pins itself to this CPU before it makes its ring
  // (its io-wq helpers stay free). On 7.3, file on tmpfs in zero copy (every
  // read and write handed to an io-wq thread), pinning took 4k QD32 from
  // 0.64x to 1.06x of loop and QD1 from 0.52x to 0.96x (bench/README.md,
  // session 17). A CPU the thread may not use (cpuset) is logged and the
  // worker serves unpinned. -1: left to the scheduler.
  int cpu = -1;
};

// The CPUs thread `tid` (0: the calling thread) may run on
// (sched_getaffinity), ascending; empty if they cannot be read.
std::vector<int> AllowedCpus(pid_t tid = 0);

// The WorkerOptions::cpu of worker `i` when workers are pinned round robin
// over `cpus` (AllowedCpus()); -1 (unpinned) when `cpus` is empty.
int RoundRobinCpu(const std::vector<int>& cpus, int i);

struct QueueConfig {
  std::unique_ptr<QueueChannel> channel;
  std::shared_ptr<Target> target;
  CopyMode copy_mode = CopyMode::kUserCopy;
};

class Worker {
 public:
  using QueueId = uint64_t;

  static absl::StatusOr<std::unique_ptr<Worker>> Create(const WorkerOptions& options);
  ~Worker();  // Stop()
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Takes the queue and FETCHes every tag. Returns once the fetches are
  // submitted (the device may then be started from another thread).
  // Zero copy: ResourceExhausted naming the worker when its buffer table has
  // no free range of queue_depth indices; the error of registering the table
  // if the kernel refuses it.
  absl::StatusOr<QueueId> AddQueue(QueueConfig config);
  // Drops the queue and closes its channel. Waits up to `drain_timeout` for
  // the kernel to abort every tag (it does after STOP_DEV); after that the
  // queue is dropped with its fetches still pending in the kernel (how a
  // device is left quiesced for recovery: pass a zero timeout). File I/O in
  // flight always finishes first. Returns true if the queue had drained.
  absl::StatusOr<bool> RemoveQueue(QueueId id, absl::Duration drain_timeout);
  // Drops every queue (as RemoveQueue with zero timeout) and ends the thread.
  void Stop();

  int id() const { return options_.worker_id; }
  // The IORING_SETUP_* flags of the worker's ring. Any thread.
  unsigned ring_flags() const { return ring_flags_; }
  // The CPU the worker thread is pinned to, or -1 (not asked, or refused).
  int pinned_cpu() const { return pinned_cpu_; }
  // Requests completed to the kernel (all queues, ever).
  uint64_t completed_ios() const { return completed_ios_.load(std::memory_order_relaxed); }
  size_t queue_count() const { return queue_count_.load(std::memory_order_relaxed); }
  // True while this worker's buffer pool cannot be created and I/O is served
  // from the heap (as of the worker's last buffer acquisition). Any thread.
  bool buffer_pool_degraded() const { return pool_degraded_.load(std::memory_order_relaxed); }
  // Registered-buffer table indices held by zero-copy queues. Any thread.
  size_t fixed_buffers_in_use() const {
    return fixed_buffers_in_use_.load(std::memory_order_relaxed);
  }
  // Whether the worker ever created its BufferPool's memory or fell back to
  // the heap (false while it served only zero-copy queues). Any thread.
  bool buffer_pool_touched() const { return pool_touched_.load(std::memory_order_relaxed); }
  // I/Os waiting for a buffer now, and ever parked. Any thread.
  size_t parked_ios() const { return parked_now_.load(std::memory_order_relaxed); }
  uint64_t parked_ios_total() const { return parked_ever_.load(std::memory_order_relaxed); }
  // Times the worker slept in the ring (blocking waits), busy-poll rounds
  // (WorkerOptions::busy_poll_rounds) and those that found a completion.
  uint64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }
  uint64_t polls() const { return polls_.load(std::memory_order_relaxed); }
  uint64_t polls_found() const { return polls_found_.load(std::memory_order_relaxed); }
  // Bytes of the worker's buffer pool mapped now. Any thread.
  size_t buffer_pool_bytes() const { return pool_bytes_.load(std::memory_order_relaxed); }
  // Wakes the worker so that it looks at the memory budget's pressure now.
  // Any thread; allocates nothing.
  void Poke();

 private:
  struct Queue;
  struct TagState;
  struct Removal;
  enum class Kind : uint8_t { kWakeup = 1, kCmd = 2, kTarget = 3, kAsync = 4, kCopy = 5 };

  explicit Worker(const WorkerOptions& options);
  // Bytes of zero_region_: a READ longer than this takes a buffer as usual.
  static constexpr size_t kZeroRegionBytes = size_t{1} << 20;
  // The thread: makes the ring (a single-issuer ring belongs to the thread
  // that made it), reports through `ready`, then serves until stopped.
  void Main(std::promise<absl::Status>* ready);
  // Pins the calling (worker) thread to `cpu`; logs and leaves it unpinned on failure.
  void PinToCpu(int cpu);
  void Run();
  // Runs `task` on the worker thread and waits for it.
  absl::Status RunOnWorker(std::function<void()> task);
  void ArmWakeup();
  // Keeps a READ on the async completion queue's eventfd.
  void ArmAsync();
  // Hands every posted async target completion to OnTargetDone.
  void DrainAsync();
  void RunTasks();
  void HandleCqe(const io_uring_cqe& cqe);
  void OnCommand(Queue& q, uint16_t tag, int32_t raw);
  void OnTargetDone(Queue& q, uint16_t tag, int32_t raw);
  void BeginRequest(Queue& q, uint16_t tag);
  // Gets the tag's buffer; false if it had to park the tag. Allocation-free,
  // as is everything on the parked path (the queue's parked FIFO is
  // allocated with the queue).
  bool AcquireBuffer(Queue& q, uint16_t tag, size_t len);
  // Tries to give the tag a buffer; false (and nothing changed) if none.
  bool TryAcquire(Queue& q, uint16_t tag, size_t len);
  void Park(Queue& q, uint16_t tag);
  void CheckMemoryPressure();
  void Continue(Queue& q, uint16_t tag);
  void StartTarget(Queue& q, uint16_t tag);
  // Commits `result`; a user-copy READ's data is first copied to the kernel
  // (on the ring, then OnCopyDone commits).
  void Commit(Queue& q, uint16_t tag, int32_t result);
  void CommitNow(Queue& q, uint16_t tag, int32_t result);
  // User copy on the ring: true if the copy's SQE is queued.
  bool QueueCopy(Queue& q, uint16_t tag, void* data, size_t len, bool to_kernel);
  void OnCopyDone(Queue& q, uint16_t tag, int32_t res);
  // Where a READ's data is in the worker's memory: the zero mapping for a
  // zero read, else the tag's buffer; nullptr if neither.
  void* ReadData(const TagState& t) const;
  void RetryParked();
  void ReapQueues();
  void DropQueue(Queue& q, bool drained);
  uint64_t UserData(Kind kind, const Queue& q, uint16_t tag) const;
  Queue* FindQueue(uint16_t slot, uint16_t gen);
  // Zero copy: registers the sparse buffer table once; a range of `n`
  // indices, or ResourceExhausted.
  absl::Status EnsureBufferTable();
  absl::StatusOr<uint16_t> AllocBufferRange(uint16_t n);
  // Empties the range's slots (a buffer the kernel registered and never got
  // back through a commit stays registered otherwise) and frees it.
  void ReleaseBufferRange(uint16_t base, uint16_t n);

  const WorkerOptions options_;
  RealClock real_clock_;
  const Clock& clock_;
  std::unique_ptr<Ring> ring_;
  unsigned ring_flags_ = 0;  // written before Create returns
  int pinned_cpu_ = -1;      // written before Create returns
  std::unique_ptr<BufferPool> pool_;
  UniqueFd wakeup_fd_;
  uint64_t wakeup_buf_ = 0;
  // Completions of targets that finish off the ring (RbdTarget): see
  // async_completion.h. Destroyed after the thread has ended.
  std::unique_ptr<AsyncCompletionQueue> async_;
  uint64_t async_buf_ = 0;
  std::thread thread_;
  std::thread::id thread_id_;

  ublk::Mutex mu_;
  std::vector<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Worker thread only.
  bool running_ = true;
  std::vector<std::unique_ptr<Queue>> slots_;
  std::vector<uint16_t> slot_gen_;
  QueueId next_queue_id_ = 1;
  size_t parked_count_ = 0;  // tags parked over all queues
  size_t retry_cursor_ = 0;  // slot whose parked tags are retried first
  bool slot_released_ = false;
  size_t copy_demand_ = 0;     // summed depth of the copy-mode queues
  size_t get_data_depth_ = 0;  // summed depth of the get-data queues
  uint64_t pressure_seen_ = 0;
  absl::Time next_memory_retry_ = absl::InfinitePast();
  // Get-data READ buffers: the kernel copies them while the commit is
  // submitted, so they are released right after the next submit.
  std::vector<IoBuffer> release_after_submit_;
  // Copy-mode READs of a target that reads_zeros() are answered from this
  // read-only anonymous mapping (the kernel's zero page: no memory).
  void* zero_region_ = nullptr;
  bool buffer_table_ = false;
  std::vector<std::pair<uint32_t, uint32_t>> buffer_ranges_;  // (base, n), sorted by base

  std::atomic<uint64_t> completed_ios_{0};
  // Blocking waits and busy-poll rounds (Run), and rounds that found work.
  std::atomic<uint64_t> sleeps_{0};
  std::atomic<uint64_t> polls_{0};
  std::atomic<uint64_t> polls_found_{0};
  std::atomic<size_t> queue_count_{0};
  std::atomic<bool> pool_degraded_{false};
  std::atomic<bool> pool_touched_{false};
  std::atomic<size_t> parked_now_{0};
  std::atomic<uint64_t> parked_ever_{0};
  std::atomic<size_t> pool_bytes_{0};
  std::atomic<size_t> fixed_buffers_in_use_{0};
};

}  // namespace ublk
