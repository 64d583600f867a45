// The memory seam: every allocation the data path makes for I/O buffers goes
// through a MemorySource, so tests can make mmap or the heap fail on demand
// (see ublk/testing/fault_memory.h). main() constructs one RealMemorySource and
// passes it down. Implementations are thread-safe; none of them throws.
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"

namespace ublk {

class MemorySource {
 public:
  virtual ~MemorySource() = default;

  // Failures are returned as a Status WITHOUT a message (absl keeps such a
  // Status inline): these calls fail exactly when memory is short, and
  // building a message would allocate. The caller's log line gives the
  // context (see StatusCodeText).
  //
  // Maps `len` bytes of private anonymous read-write memory. Memory pressure is
  // reported here as ResourceExhausted, never later as a signal or an abort.
  virtual absl::StatusOr<void*> Map(size_t len) = 0;
  // Releases a mapping returned by Map() with the same `len`.
  virtual void Unmap(void* addr, size_t len) = 0;

  // An `align`-aligned heap block of at least `len` bytes (align: a power of
  // two, a multiple of sizeof(void*); 4096 for O_DIRECT). ResourceExhausted on
  // failure; never throws.
  virtual absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) = 0;
  // Frees a block from AllocateHeap(). nullptr is ignored.
  virtual void FreeHeap(void* block) = 0;
};

// A static name for `code` (absl::StatusCodeToString allocates a string).
const char* StatusCodeText(absl::StatusCode code);

// The production source.
//
// Map() is mmap(MAP_PRIVATE | MAP_ANONYMOUS) followed by
// madvise(MADV_POPULATE_WRITE) (Linux 5.14+). We pre-fault so that a host
// without memory says so now, as ENOMEM on this call, which the buffer pool
// turns into "degrade to heap and retry later"; without pre-faulting the
// shortfall would surface on the first I/O touching a page, as an OOM kill in
// the middle of serving. MAP_POPULATE is NOT used: the kernel ignores
// population failures for it, so it reports nothing and only adds a burst of
// faults. Where the madvise is unsupported (EINVAL, pre-5.14 kernels) the
// mapping is kept and faults in lazily: the pool is small and bounded, so that
// is the same risk as any other page of the process. Under strict overcommit
// (vm.overcommit_memory=2) the mmap itself already fails with ENOMEM.
class RealMemorySource final : public MemorySource {
 public:
  absl::StatusOr<void*> Map(size_t len) override;
  void Unmap(void* addr, size_t len) override;
  absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) override;
  void FreeHeap(void* block) override;
};

}  // namespace ublk
