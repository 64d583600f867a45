#include "ublk/file_target.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/uapi.h"

namespace ublk {

absl::StatusOr<std::unique_ptr<FileTarget>> FileTarget::Open(const FileTargetOptions& o) {
  if (o.path.empty()) return absl::InvalidArgumentError("file target: empty backing file path");
  if (o.size_bytes == 0 || o.size_bytes % 512 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("file target ", o.path, ": volume size ",
                                                   o.size_bytes,
                                                   " is not a positive multiple of 512"));
  }
  int flags = O_RDWR | O_CLOEXEC | (o.create ? O_CREAT : 0);
  int fd = open(o.path.c_str(), flags, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("file target: backing file ", o.path, " missing"));
    }
    if (err == EACCES || err == EROFS || err == EPERM) {
      return absl::FailedPreconditionError(absl::StrCat("file target: backing file ", o.path,
                                                        " is not writable: ", ublk::Errno(err)));
    }
    return absl::ErrnoToStatus(err, absl::StrCat("file target: open ", o.path));
  }
  UniqueFd buffered(fd);
  struct stat st {};
  if (fstat(buffered.get(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("file target: fstat ", o.path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("file target: backing file ", o.path, " is not a regular file"));
  }
  if ((st.st_mode & (S_IWUSR | S_IWGRP | S_IWOTH)) == 0) {
    // Root could still open it for writing; the mode says the operator
    // meant it read-only.
    return absl::FailedPreconditionError(
        absl::StrCat("file target: backing file ", o.path, " is read-only (mode ",
                     absl::StrFormat("%04o", st.st_mode & 07777), ")"));
  }
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < o.size_bytes) {
    if (!o.create) {
      return absl::FailedPreconditionError(
          absl::StrCat("file target: backing file ", o.path, " has ", file_size,
                       " bytes, smaller than the volume (", o.size_bytes, ")"));
    }
    if (ftruncate(buffered.get(), static_cast<off_t>(o.size_bytes)) != 0) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("file target: grow ", o.path, " to ", o.size_bytes, " bytes"));
    }
  }
  UniqueFd direct;
  if (o.try_direct) {
    int dfd = open(o.path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
    if (dfd >= 0) {
      direct.reset(dfd);
    } else {
      LOG(INFO) << "file target " << o.path << ": O_DIRECT refused (" << ublk::Errno(errno)
                << "), using buffered I/O";
    }
  }
  struct statfs fs {};
  const bool memory_file =
      fstatfs(buffered.get(), &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
  const bool inline_io = memory_file && o.inline_memory_files;
  if (inline_io) {
    // Debug only: logged for every export opened (a mass recovery opens
    // hundreds at once, and every log line is written under glog's lock).
    VLOG(1) << "file target " << o.path << ": file in memory (tmpfs/ramfs), reads and writes "
            << "served inline";
  }
  return std::unique_ptr<FileTarget>(new FileTarget(o.path, o.size_bytes, std::move(buffered),
                                                    std::move(direct), memory_file, inline_io));
}

FileTarget::FileTarget(std::string path, uint64_t size, UniqueFd buffered, UniqueFd direct,
                       bool memory_file, bool inline_io)
    : path_(std::move(path)),
      size_bytes_(size),
      buffered_fd_(std::move(buffered)),
      direct_fd_(std::move(direct)),
      direct_(direct_fd_.valid()),
      memory_file_(memory_file),
      inline_io_(inline_io) {}

std::optional<int32_t> FileTarget::InlineIo(const TargetIo& io) {
  char* p = static_cast<char*>(io.buf);
  uint64_t off = io.offset;
  size_t left = io.len;
  const int flags = io.op == UBLK_IO_OP_WRITE && (io.flags & UBLK_IO_F_FUA) ? RWF_DSYNC : 0;
  while (left > 0) {
    iovec iov{p, left};
    ssize_t n = io.op == UBLK_IO_OP_READ
                    ? preadv2(buffered_fd_.get(), &iov, 1, static_cast<off_t>(off), 0)
                    : pwritev2(buffered_fd_.get(), &iov, 1, static_cast<off_t>(off), flags);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) {
      // READ past the end of a shorter file reads nothing: zeros, as a hole.
      if (io.op == UBLK_IO_OP_READ) {
        std::memset(p, 0, left);
        break;
      }
      return -EIO;
    }
    p += n;
    off += static_cast<uint64_t>(n);
    left -= static_cast<size_t>(n);
  }
  return static_cast<int32_t>(io.len);
}

absl::Status FileTarget::Grow(uint64_t new_size) {
  struct stat st;
  if (fstat(buffered_fd_.get(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("file target: fstat ", path_));
  }
  if (static_cast<uint64_t>(st.st_size) < new_size) {
    return absl::FailedPreconditionError(absl::StrCat("file target: backing file ", path_, " has ",
                                                      st.st_size, " bytes, less than ", new_size));
  }
  uint64_t cur = size_bytes_.load(std::memory_order_relaxed);
  while (cur < new_size &&
         !size_bytes_.compare_exchange_weak(cur, new_size, std::memory_order_relaxed)) {
  }
  return absl::OkStatus();
}

std::optional<int32_t> FileTarget::StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) {
  const uint64_t size = size_bytes();
  if (io.op != UBLK_IO_OP_FLUSH && (io.offset > size || io.len > size - io.offset)) {
    return -EIO;
  }
  if (inline_io_ && io.buf_index < 0 && (io.op == UBLK_IO_OP_READ || io.op == UBLK_IO_OP_WRITE)) {
    return InlineIo(io);
  }
  io_uring_sqe* sqe = ring.GetSqe();
  if (sqe == nullptr) return -EAGAIN;
  const int fd = direct() ? direct_fd_.get() : buffered_fd_.get();
  switch (io.op) {
    case UBLK_IO_OP_READ:
      if (io.buf_index >= 0) {
        // Zero copy: straight into the request's registered pages.
        io_uring_prep_read_fixed(sqe, fd, io.buf, io.len, io.offset, io.buf_index);
      } else {
        io_uring_prep_read(sqe, fd, io.buf, io.len, io.offset);
      }
      break;
    case UBLK_IO_OP_WRITE:
      if (io.buf_index >= 0) {
        io_uring_prep_write_fixed(sqe, fd, io.buf, io.len, io.offset, io.buf_index);
      } else {
        io_uring_prep_write(sqe, fd, io.buf, io.len, io.offset);
      }
      if (io.flags & UBLK_IO_F_FUA) sqe->rw_flags = RWF_DSYNC;
      break;
    case UBLK_IO_OP_FLUSH:
      io_uring_prep_fsync(sqe, buffered_fd_.get(), IORING_FSYNC_DATASYNC);
      break;
    case UBLK_IO_OP_DISCARD:
      io_uring_prep_fallocate(sqe, buffered_fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              io.offset, io.len);
      break;
    case UBLK_IO_OP_WRITE_ZEROES:
      io_uring_prep_fallocate(sqe, buffered_fd_.get(),
                              (zero_range_.load(std::memory_order_relaxed) ? FALLOC_FL_ZERO_RANGE
                                                                           : FALLOC_FL_PUNCH_HOLE) |
                                  FALLOC_FL_KEEP_SIZE,
                              io.offset, io.len);
      break;
    default:
      // An SQE was taken: turn it into a NOP so the ring stays consistent.
      io_uring_prep_nop(sqe);
      sqe->user_data = user_data;
      return std::nullopt;
  }
  sqe->user_data = user_data;
  return std::nullopt;
}

std::optional<int32_t> FileTarget::FinishIo(const TargetIo& io, int32_t res) {
  switch (io.op) {
    case UBLK_IO_OP_READ:
    case UBLK_IO_OP_WRITE:
      if (res == -EINVAL && direct()) {
        // The filesystem takes O_DIRECT at open but not this I/O (alignment):
        // switch this file to buffered I/O for good and redo the request.
        if (direct_.exchange(false)) {
          LOG(WARNING) << "file target " << path_ << ": O_DIRECT I/O refused (EINVAL) at offset "
                       << io.offset << " len " << io.len << ", switching to buffered I/O";
        }
        return std::nullopt;
      }
      if (res >= 0 && static_cast<uint32_t>(res) < io.len && io.op == UBLK_IO_OP_WRITE) {
        return -EIO;  // a short write to a preallocated-size file is an error
      }
      return res;
    case UBLK_IO_OP_WRITE_ZEROES:
      if (res == -EOPNOTSUPP && zero_range_.exchange(false)) {
        // tmpfs and others have no ZERO_RANGE; a punched hole reads as zeros
        // too (it gives up the allocation, which NOUNMAP asked to keep: we
        // accept that rather than fail the request).
        LOG(INFO) << "file target " << path_
                  << ": fallocate ZERO_RANGE not supported, write-zeroes punch holes";
        return std::nullopt;
      }
      return res < 0 ? res : 0;
    case UBLK_IO_OP_FLUSH:
    case UBLK_IO_OP_DISCARD:
      return res < 0 ? res : 0;
    default:
      return -EOPNOTSUPP;
  }
}

}  // namespace ublk
