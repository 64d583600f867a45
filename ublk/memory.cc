#include "ublk/memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "ublk/errno.h"

namespace ublk {
absl::StatusOr<void*> RealMemorySource::Map(size_t len) {
  if (len == 0) return absl::InvalidArgumentError("mmap of 0 bytes");
  void* addr = ::mmap(nullptr, len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) {
    const int err = errno;
    return absl::Status(
        absl::ErrnoToStatusCode(err),
        absl::StrCat("mmap of ", len,
                     " bytes of anonymous memory: ", Errno(err)));
  }
  if (::madvise(addr, len, MADV_POPULATE_WRITE) != 0) {
    const int err = errno;
    if (err != EINVAL) {
      ::munmap(addr, len);
      return absl::Status(err == ENOMEM || err == EFAULT || err == EHWPOISON
                              ? absl::StatusCode::kResourceExhausted
                              : absl::ErrnoToStatusCode(err),
                          absl::StrCat("pre-faulting ", len,
                                       " bytes (madvise MADV_POPULATE_WRITE): ",
                                       Errno(err)));
    }
    // Kernel older than 5.14: keep the lazily-faulted mapping (see header).
  }
  return addr;
}

void RealMemorySource::Unmap(void* addr, size_t len) {
  if (addr == nullptr) return;
  if (::munmap(addr, len) != 0) {
    // Only a caller passing a wrong address/length gets here; leaking the
    // range is the safe answer.
    LOG(ERROR) << "munmap(" << addr << ", " << len
               << ") failed: " << Errno(errno);
  }
}

absl::StatusOr<void*> RealMemorySource::AllocateHeap(size_t len, size_t align) {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heap alignment ", align, " is not a power of two >= ", sizeof(void*)));
  }
  void* block = nullptr;
  const int err = ::posix_memalign(&block, align, len == 0 ? 1 : len);
  if (err != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("heap allocation of ", len, " bytes aligned to ", align,
                     ": ", Errno(err)));
  }
  return block;
}

void RealMemorySource::FreeHeap(void* block) { std::free(block); }

}  // namespace ublk
