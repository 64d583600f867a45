// FaultInjectingMemorySource wraps another MemorySource (normally a
// RealMemorySource) and makes Map() fail with ENOMEM or AllocateHeap() fail on
// demand, counting every call. Unit tests of the degrade-to-heap rules use it,
// and so does the plugin under its test-only flag
// --fault_injection_fail_buffer_pool_mmap_seconds (the e2e mass-recovery
// scenario): the one mmap fault injector of the tree. A failed call carries
// no message (a message would allocate; see MemorySource).
// Thread-safe: a test thread may switch faults while workers allocate.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "ublk/clock.h"
#include "ublk/memory.h"
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
  // Map(): fail every call while `clock` reads before `until`, then serve
  // again by itself (the plugin's --fault_injection_fail_buffer_pool_mmap_seconds
  // for the real-kernel mass-recovery scenario). `clock` must outlive this.
  void FailMapUntil(const Clock& clock, absl::Time until);
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
  const Clock* map_clock_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Time map_fail_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
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

}  // namespace ublk
