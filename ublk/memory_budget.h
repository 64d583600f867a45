// MemoryBudget: how much memory the plugin may still commit to I/O buffers
// before its memory cgroup's OOM killer would end it. Under a cgroup limit
// mmap and malloc do not fail: pre-faulting a pool or growing the heap past
// memory.max simply kills the process (DESIGN.md, "Memory limits are
// cgroups"). So every buffer-pool chunk and every heap fallback is charged
// here first (TryCharge), and refused while it would eat into the headroom
// margin; the caller then parks the I/O and retries.
//
// The limit is the lowest of memory.max and memory.high of the process's own
// cgroup v2 and its ancestors (from /proc/self/cgroup), else the v1
// memory.limit_in_bytes, else none; a configured override wins. Usage is
// memory.current minus the page cache on the file LRU lists (active_file and
// inactive_file of memory.stat: reclaimable before an OOM kill), memory.usage_in_bytes (v1), else
// the RSS from /proc/self/statm. Refresh() re-reads them (a background thread calls it); between
// refreshes the buffers charged here are counted exactly, so usage that is not ours (`other`) is
// what the last refresh saw minus our charges.
//
// Threads: TryCharge/Uncharge and the accessors are lock-free and never
// allocate (they run on the workers' no-memory path). Refresh() runs on one
// thread at a time (it takes a lock) and may allocate.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "ublk/mutex.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace ublk {

// The seam for the files the budget reads (cgroup and procfs). Thread-safe.
class MemoryFiles {
 public:
  virtual ~MemoryFiles() = default;
  // The whole file; NotFound if it does not exist.
  virtual absl::StatusOr<std::string> Read(const std::string& path) const = 0;
};

class RealMemoryFiles final : public MemoryFiles {
 public:
  absl::StatusOr<std::string> Read(const std::string& path) const override;
};

struct MemoryBudgetOptions {
  // Overrides the cgroup limit (--memory_limit): bytes the process may use.
  std::optional<uint64_t> limit_override;
  // Kept free below the limit: buffers are admitted only while
  // usage + charge <= limit - headroom.
  uint64_t headroom = 8ull << 20;
  std::string proc_self = "/proc/self";
  std::string cgroup_root = "/sys/fs/cgroup";
};

class MemoryBudget {
 public:
  // `files` must outlive the budget. `registry` (nullable) gets:
  //   ublk_csi_memory_budget_bytes       the limit in force (0: none)
  //   ublk_csi_memory_usage_bytes        usage at the last refresh
  //   ublk_csi_memory_headroom_bytes     limit - usage (estimated now)
  //   ublk_csi_memory_buffer_bytes       bytes charged to I/O buffers
  //   ublk_csi_memory_denials_total      buffer allocations refused
  //   ublk_csi_memory_high_events_total  memory.high throttling events seen
  // Reads nothing yet: call Refresh().
  MemoryBudget(const MemoryBudgetOptions& options, const MemoryFiles& files,
               prometheus::Registry* registry);
  ~MemoryBudget();
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Re-reads limit, usage and memory.events. Logs one line per transition
  // (limit found/changed, headroom exhausted/restored, throttling seen). An
  // unreadable usage keeps the last reading; the error is returned.
  absl::Status Refresh();

  // Admits `bytes` of buffer memory if they fit under limit - headroom;
  // false (and a denial counted) otherwise. Always true without a limit.
  bool TryCharge(uint64_t bytes);
  void Uncharge(uint64_t bytes);

  bool limited() const { return limit_.load(std::memory_order_relaxed) != 0; }
  // 0 without a limit.
  uint64_t limit() const { return limit_.load(std::memory_order_relaxed); }
  uint64_t charged() const { return charged_.load(std::memory_order_relaxed); }
  // Memory not charged here, as of the last refresh.
  uint64_t other_usage() const { return other_.load(std::memory_order_relaxed); }
  // limit - (other + charged); negative when over; INT64_MAX without a limit.
  int64_t headroom() const;
  uint64_t denials() const { return denials_.load(std::memory_order_relaxed); }
  uint64_t high_events() const { return high_events_seen_.load(std::memory_order_relaxed); }
  // Bumped each time memory gets tight (headroom below the margin, or new
  // memory.high events): holders of idle buffer memory should give it back.
  uint64_t pressure_epoch() const { return pressure_epoch_.load(std::memory_order_relaxed); }
  // True between a "headroom exhausted" and a "restored" transition.
  bool tight() const { return tight_.load(std::memory_order_relaxed); }
  const MemoryBudgetOptions& options() const { return options_; }

 private:
  struct Series;
  struct Reading {
    uint64_t limit = 0;  // 0: none
    std::string limit_source;
    std::optional<uint64_t> usage;
    std::string usage_source;
    std::optional<uint64_t> high_events;
  };
  Reading Read() const;
  void UpdateMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(refresh_mu_);

  const MemoryBudgetOptions options_;
  const MemoryFiles& files_;
  std::unique_ptr<Series> series_;

  std::atomic<uint64_t> limit_{0};
  std::atomic<uint64_t> other_{0};
  std::atomic<uint64_t> charged_{0};
  std::atomic<uint64_t> denials_{0};
  std::atomic<uint64_t> high_events_seen_{0};
  std::atomic<uint64_t> pressure_epoch_{0};
  std::atomic<bool> tight_{false};

  ublk::Mutex refresh_mu_;  // ublk::Mutex: see worker.h
  bool first_refresh_ ABSL_GUARDED_BY(refresh_mu_) = true;
  std::string limit_source_ ABSL_GUARDED_BY(refresh_mu_);
  std::optional<uint64_t> last_high_ ABSL_GUARDED_BY(refresh_mu_);
  uint64_t last_usage_ ABSL_GUARDED_BY(refresh_mu_) = 0;
  bool usage_error_logged_ ABSL_GUARDED_BY(refresh_mu_) = false;
};

}  // namespace ublk
