// MmapFaultMemorySource: a fault-injection wrapper for real-kernel tests of
// the degrade-to-heap rules (the e2e mass-recovery scenario). Map() fails
// with ResourceExhausted, as under memory pressure, until a deadline; heap
// allocations and everything after the deadline go to the wrapped source.
// Only main() builds one, and only when the test-only flag
// --fault_injection_fail_buffer_pool_mmap_seconds asks for it. Thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"
#include "ublk/clock.h"
#include "ublk/memory.h"

namespace ublk_csi {

class MmapFaultMemorySource final : public ublk::MemorySource {
 public:
  // `base` and `clock` must outlive this.
  MmapFaultMemorySource(ublk::MemorySource& base, ublk::Clock& clock, absl::Time fail_until)
      : base_(base), clock_(clock), fail_until_(fail_until) {}

  absl::StatusOr<void*> Map(size_t len) override;
  void Unmap(void* addr, size_t len) override { base_.Unmap(addr, len); }
  absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) override {
    return base_.AllocateHeap(len, align);
  }
  void FreeHeap(void* block) override { base_.FreeHeap(block); }

  int64_t failed_maps() const { return failed_.load(); }

 private:
  ublk::MemorySource& base_;
  ublk::Clock& clock_;
  const absl::Time fail_until_;
  std::atomic<int64_t> failed_{0};
};

}  // namespace ublk_csi
