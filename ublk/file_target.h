// FileTarget: a volume stored in a sparse regular file. Reads and writes go
// through io_uring on the worker's ring, O_DIRECT where the filesystem takes
// it (else buffered, logged once); flush = fdatasync, discard = fallocate
// PUNCH_HOLE|KEEP_SIZE, write-zeroes = fallocate ZERO_RANGE (PUNCH_HOLE where
// the filesystem lacks it, e.g. tmpfs), FUA = RWF_DSYNC.
// A file in memory (tmpfs, ramfs) is read and written inline, with a
// pread/pwrite on the worker thread: io_uring has no non-blocking path for
// shmem on 6.12 and would hand each such I/O to an io-wq thread (one more
// thread hop per I/O than loop makes); a page of tmpfs is a memcpy away.
// Zero-copy (fixed-buffer) I/O still goes on the ring.
// Thread-safe: several workers may serve queues of the same file.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "ublk/target.h"
#include "ublk/unique_fd.h"

namespace ublk {

struct FileTargetOptions {
  std::string path;
  uint64_t size_bytes = 0;  // the volume size
  // Create the file (sparse, size_bytes) if missing; grow it if smaller.
  bool create = false;
  bool try_direct = true;
  // Serve READ/WRITE of a file on tmpfs or ramfs inline (see above).
  bool inline_memory_files = true;
};

class FileTarget final : public Target {
 public:
  // InvalidArgument for a zero or unaligned size; NotFound for a missing
  // file (without create); FailedPrecondition for a non-regular file, a file
  // smaller than the volume, or a read-only one.
  static absl::StatusOr<std::unique_ptr<FileTarget>> Open(const FileTargetOptions& options);

  uint64_t size_bytes() const override { return size_bytes_.load(std::memory_order_relaxed); }
  // Raises the volume size (live resize) once the file is at least that
  // large; FailedPrecondition if it is not. Never shrinks. Any thread.
  absl::Status Grow(uint64_t new_size);
  bool supports_discard() const override { return true; }
  const char* name() const override { return "file"; }
  bool direct() const { return direct_.load(std::memory_order_relaxed); }
  // Whether READ/WRITE are served inline (the file is in memory).
  bool inline_io() const { return inline_io_; }
  // A file in memory (tmpfs/ramfs) whose READ/WRITE go on the ring: in zero
  // copy (the request's pages are only reachable through the ring), or with
  // inline_memory_files off. io-wq threads copy them.
  bool ring_io_on_kernel_threads(bool zero_copy) const override {
    return memory_file_ && (zero_copy || !inline_io_);
  }
  const std::string& path() const { return path_; }

  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override;
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t cqe_res) override;

 private:
  FileTarget(std::string path, uint64_t size, UniqueFd buffered, UniqueFd direct, bool memory_file,
             bool inline_io);
  std::optional<int32_t> InlineIo(const TargetIo& io);

  const std::string path_;
  std::atomic<uint64_t> size_bytes_;
  const UniqueFd buffered_fd_;
  const UniqueFd direct_fd_;  // invalid when O_DIRECT open failed
  std::atomic<bool> direct_;
  const bool memory_file_;  // on tmpfs or ramfs
  const bool inline_io_;
  std::atomic<bool> zero_range_{true};  // false once the filesystem refused it
};

}  // namespace ublk
