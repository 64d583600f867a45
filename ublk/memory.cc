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
const char* StatusCodeText(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED (out of memory)";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    default:
      return "error";
  }
}

absl::StatusOr<void*> RealMemorySource::Map(size_t len) {
  if (len == 0) return absl::Status(absl::StatusCode::kInvalidArgument, "");
  void* addr = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) {
    return absl::Status(absl::ErrnoToStatusCode(errno), "");
  }
  if (::madvise(addr, len, MADV_POPULATE_WRITE) != 0) {
    const int err = errno;
    if (err != EINVAL) {
      ::munmap(addr, len);
      return absl::Status(err == ENOMEM || err == EFAULT || err == EHWPOISON
                              ? absl::StatusCode::kResourceExhausted
                              : absl::ErrnoToStatusCode(err),
                          "");
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
    LOG(ERROR) << "munmap(" << addr << ", " << len << ") failed: " << Errno(errno);
  }
}

absl::StatusOr<void*> RealMemorySource::AllocateHeap(size_t len, size_t align) {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap alignment ", align, " is not a power of two >= ", sizeof(void*)));
  }
  void* block = nullptr;
  const int err = ::posix_memalign(&block, align, len == 0 ? 1 : len);
  if (err != 0) return absl::Status(absl::StatusCode::kResourceExhausted, "");
  return block;
}

void RealMemorySource::FreeHeap(void* block) { std::free(block); }

}  // namespace ublk
