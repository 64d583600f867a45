// WorkerPool: the fixed set of Workers that serve every export on the node,
// and the accounting that spreads exports' queues over them. The pool only
// chooses workers and counts: an export adds and removes its own queues on
// the workers it was given (Worker handles that without disturbing the other
// queues), and gives its assignment back with Release().
//
// Memory: workers are created without touching buffer memory (each worker's
// BufferPool is lazy), and the per-worker slot count is derived from one
// node-wide budget, so total bounce-buffer memory stays bounded whatever the
// worker count (see WorkerPoolOptions).
//
// Threads: every method is thread-safe. Assign/Release/UpdateMetrics may be
// called from any thread but a worker's own. Stop() (and the destructor) must
// not run concurrently with calls that use the workers (Assign's result, or
// exports that still hold queues on them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ublk/buffer_pool.h"
#include "ublk/clock.h"
#include "ublk/memory.h"
#include "ublk/memory_budget.h"
#include "ublk/mutex.h"
#include "ublk/worker.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace ublk {

// The fewest workers a default pool has, whatever the CPU count. When a
// server is killed, each of its threads cancels the uring_cmds it submitted
// and ublk quiesces every device it served on the way (one RCU grace period
// per device, one device after another per thread): the kernel releases the
// dead server's devices, and lets the new process recover them, in about
// devices / workers grace periods. With 256 volumes in the 2-vCPU guest: 2.1
// s with 2 workers, 1.0 s with 4, at no measured data-path cost
// (bench/README.md, "Recovery after kill -9, session 11").
inline constexpr int kMinDefaultWorkers = 4;

struct WorkerPoolOptions {
  // 0: one worker per online CPU (std::thread::hardware_concurrency()), and
  // at least kMinDefaultWorkers. Negative is InvalidArgument.
  int worker_count = 0;

  // Node-wide bounce-buffer budget, split evenly over the workers:
  //   slot_count per worker = max(1, buffer_pool_bytes / workers / slot_size)
  //   total = workers * slot_count * slot_size <= buffer_pool_bytes
  // (exceeded only when workers > buffer_pool_bytes / slot_size, by at most
  // one slot per worker). Defaults: 64 MiB / 128 KiB = 512 slots in total;
  // e.g. 16 workers x 32 slots x 128 KiB = 64 MiB, 2 workers x 256 slots.
  // The pool is mapped only by a worker that serves copy-mode I/O, and only
  // on its first I/O. slot_size should be >= the exports' max I/O size
  // (larger I/O is served from the heap and counted as a heap fallback).
  size_t buffer_pool_bytes = BufferPoolOptions::kDefaultTotalBudget;
  size_t buffer_slot_size = BufferPoolOptions::kDefaultSlotSize;
  // Set: use this per-worker slot count instead of deriving it from
  // buffer_pool_bytes (--buffer-pool-slots).
  std::optional<size_t> buffer_slots_per_worker;
  // Minimum time between two attempts to create a worker's pool after one
  // failed.
  absl::Duration buffer_retry_interval = absl::Seconds(1);

  unsigned ring_entries = 512;
  // As WorkerOptions::ring_flags_allowed.
  unsigned ring_flags_allowed = Ring::kSingleIssuerFlags;
  // How soon an I/O that found no memory at all (no pool, no heap) retries.
  absl::Duration no_memory_retry = absl::Milliseconds(5);
  // As WorkerOptions::busy_poll_rounds.
  unsigned busy_poll_rounds = WorkerOptions{}.busy_poll_rounds;
  // Pin worker i to the i-th CPU (modulo their number) the process may run
  // on when the pool starts (WorkerOptions::cpu). Off: left to the scheduler.
  bool pin_workers = false;

  // Required; must outlive the pool (main() passes a RealMemorySource).
  MemorySource* memory = nullptr;
  // Nullable: a RealClock.
  const Clock* clock = nullptr;

  // With a registry: how often a background thread copies the workers'
  // counters into the metrics. Zero: no thread; call UpdateMetrics() (e.g.
  // before each scrape).
  absl::Duration metrics_refresh_interval = absl::Seconds(1);

  // Set: the pool owns a MemoryBudget with these options (the cgroup limit,
  // or the override) that admits every pool chunk and heap buffer, re-read
  // every budget_refresh_interval by a background thread (zero: only by
  // RefreshBudget()). Unset: no budget (tests of the pool alone).
  std::optional<MemoryBudgetOptions> budget;
  absl::Duration budget_refresh_interval = absl::Milliseconds(250);
  // Nullable: RealMemoryFiles. Must outlive the pool.
  const MemoryFiles* memory_files = nullptr;
  // Slots per pool chunk (BufferPoolOptions::chunk_slots): a worker's pool
  // is mapped a chunk at a time as its queues need it. 0: whole pools.
  size_t buffer_chunk_slots = 8;

  // The per-worker buffer pool options these settings give. InvalidArgument
  // naming the field when they do not validate.
  absl::StatusOr<BufferPoolOptions> BufferPoolFor(int workers) const;
};

class WorkerPool {
 public:
  // Starts the workers. `registry` (nullable, must outlive the pool) gets the
  // buffer pool metrics (BufferPoolMetrics, shared by all workers) and
  //   ublk_csi_worker_ios_total{worker="<id>"}  requests completed
  //   ublk_csi_worker_queues{worker="<id>"}     queues being served
  //   ublk_csi_worker_assigned_queues{worker="<id>"}  queues assigned
  //   ublk_csi_worker_parked_ios{worker="<id>"}  I/Os waiting for a buffer
  //   ublk_csi_worker_parked_ios_total{worker="<id>"}  I/Os that ever waited
  //   and, with options.budget, MemoryBudget's ublk_csi_memory_* metrics
  // InvalidArgument for bad options (naming the field); a worker's own
  // creation error (io_uring, eventfd) with context.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(const WorkerPoolOptions& options,
                                                            prometheus::Registry* registry);
  // Create()'s option checks alone (InvalidArgument naming the field), so a
  // caller can tell a bad option from a host that cannot run workers.
  static absl::Status ValidateOptions(const WorkerPoolOptions& options);
  ~WorkerPool();  // Stop()
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Workers for an export with `nr_queues` queues: element q serves queue q
  // (Export uses workers[q % size]). Each queue goes to the worker with the
  // fewest assigned queues at that moment (ties: lowest id), so exports
  // spread as they come and go and one export's queues land on different
  // workers while loads are even. Counted until Release(). Empty if
  // nr_queues is 0 or the pool is stopped.
  std::vector<Worker*> Assign(size_t nr_queues);
  // Gives back what Assign() returned (the export's queues are removed from
  // the workers by the export itself). Workers not of this pool are ignored.
  void Release(const std::vector<Worker*>& workers);

  // Stops every worker (their queues are dropped without STOP_DEV, as in
  // Worker::Stop) and the metrics thread. Idempotent.
  void Stop();

  size_t size() const { return workers_.size(); }
  Worker* worker(size_t i) const { return workers_[i].get(); }
  size_t assigned_queues(size_t i) const;
  const BufferPoolOptions& buffer_pool_options() const { return buffer_pool_options_; }
  // Null without a registry.
  BufferPoolMetrics* buffer_pool_metrics() const { return pool_metrics_.get(); }

  // Copies the workers' I/O counters and queue counts into the metrics now.
  void UpdateMetrics();
  // Null without options.budget.
  MemoryBudget* memory_budget() const { return budget_.get(); }
  // Re-reads the budget and wakes the workers if memory got tight.
  void RefreshBudget();

 private:
  struct Series;

  WorkerPool();
  void RefreshLoop(absl::Duration metrics_interval, absl::Duration budget_interval);

  BufferPoolOptions buffer_pool_options_;
  RealMemoryFiles real_files_;
  std::unique_ptr<MemoryBudget> budget_;
  uint64_t budget_epoch_ = 0;  // under metrics_mu_ (after Create)
  std::unique_ptr<BufferPoolMetrics> pool_metrics_;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable ublk::Mutex mu_;
  std::vector<size_t> assigned_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  ublk::CondVar stop_cv_;

  ublk::Mutex metrics_mu_;  // serializes UpdateMetrics
  std::vector<Series> series_ ABSL_GUARDED_BY(metrics_mu_);

  std::thread refresher_;
};

}  // namespace ublk
