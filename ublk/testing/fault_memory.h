// Test-only memory seams: FakeMemoryFiles below, and (from ublk/fault_memory.h)
// FaultInjectingMemorySource, which the plugin itself also uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "ublk/fault_memory.h"
#include "ublk/memory.h"
#include "ublk/memory_budget.h"
#include "ublk/mutex.h"

namespace ublk {

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
