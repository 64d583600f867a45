#include "csi/mmap_fault_memory.h"

#include "absl/strings/str_cat.h"

namespace ublk_csi {

absl::StatusOr<void*> MmapFaultMemorySource::Map(size_t len) {
  if (clock_.Now() < fail_until_) {
    failed_.fetch_add(1);
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap of ", len, " bytes: Cannot allocate memory (fault injection: ",
                     "--fault_injection_fail_buffer_pool_mmap_seconds)"));
  }
  return base_.Map(len);
}

}  // namespace ublk_csi
