// FaultInjectingMemorySource wraps another MemorySource (normally a
// RealMemorySource) and makes Map() fail with ENOMEM or AllocateHeap() fail on
// demand, counting every call. For tests of the degrade-to-heap rules.
// Thread-safe: a test thread may switch faults while workers allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "ublk/memory.h"
#include "ublk/memory_budget.h"
#include "ublk/mutex.h"

namespace ublk {

class FaultInjectingMemorySource final : public MemorySource {
 public:
  // `base` serves every call that is not failed and must outlive this.
  explicit FaultInjectingMemorySource(MemorySource& base) : base_(base) {}

  absl::StatusOr<void*> Map(size_t len) override;
  void Unmap(void* addr, size_t len) override;
  absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) override;
  void FreeHeap(void* block) override;

  // Map(): fail every call until HealMap(); fail only the next `n` calls; or
  // stop failing. The last call wins.
  void FailMapAlways();
  void FailNextMaps(int n);
  void HealMap();
  // Same for AllocateHeap().
  void FailHeapAlways();
  void FailNextHeaps(int n);
  void HealHeap();

  // Calls made so far, failed ones included.
  int64_t map_calls() const;
  int64_t failed_map_calls() const;
  int64_t unmap_calls() const;
  int64_t heap_calls() const;
  int64_t failed_heap_calls() const;
  int64_t free_heap_calls() const;
  // Mappings and heap blocks handed out and not yet returned (leak checks).
  int64_t live_maps() const;
  int64_t live_heap_blocks() const;

 private:
  // Failure plan for one entry point: -1 = always, 0 = never, n = next n.
  static bool ShouldFail(int& plan);

  MemorySource& base_;
  mutable ublk::Mutex mu_;
  int map_plan_ ABSL_GUARDED_BY(mu_) = 0;
  int heap_plan_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t map_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_map_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t unmap_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t heap_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_heap_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t free_heap_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t live_maps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t live_heap_blocks_ ABSL_GUARDED_BY(mu_) = 0;
};

// FakeMemoryFiles: the cgroup and procfs files a MemoryBudget reads, held in
// memory, so tests set a limit, usage or memory.events and change them while
// the budget runs. A path never Set() reads as NotFound. Thread-safe.
class FakeMemoryFiles final : public MemoryFiles {
 public:
  absl::StatusOr<std::string> Read(const std::string& path) const override;
  void Set(const std::string& path, const std::string& content);
  void Remove(const std::string& path);
  int64_t reads() const;

  // A process in cgroup v2 group `group` (e.g. "/plugin") under
  // /sys/fs/cgroup: writes /proc/self/cgroup, memory.max, memory.current
  // and memory.events ("high N"). `max` 0 writes "max".
  void SetCgroupV2(const std::string& group, uint64_t max, uint64_t current,
                   uint64_t high_events = 0);

 private:
  mutable ublk::Mutex mu_;
  std::map<std::string, std::string> files_ ABSL_GUARDED_BY(mu_);
  mutable int64_t reads_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ublk
