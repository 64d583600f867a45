// The file-system seam: every file the plugin writes in its data dir (volume
// and snapshot records, backing files, the crash-loop counter) is created,
// written, synced, renamed and removed through a FileSystem, so tests can
// make any of those steps fail with EIO or ENOSPC (csi/fault_file_system.h;
// RocksDB's FaultInjectionFS is the model). main() builds one
// RealFileSystem; RecordStore hands it to the VolumeManager.
//
// Errors name the operation and the path ("fsync /d/records/x.tmp: ...") and
// carry the errno in their code: ENOSPC and EDQUOT are RESOURCE_EXHAUSTED,
// ENOENT NOT_FOUND, EEXIST ALREADY_EXISTS, anything else INTERNAL (callers
// that mean something more specific rewrap). Implementations are
// thread-safe; a File is used by one thread at a time.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ublk_csi {

// The status for a failed `op` on `path` with errno `err` (the mapping above).
absl::Status FsError(absl::string_view op, absl::string_view path, int err);

// A failed write step as the caller reports it: RESOURCE_EXHAUSTED (no
// space) and OUT_OF_RANGE (a size the filesystem cannot hold) stay, every
// other failure is INTERNAL (a NOT_FOUND from a missing data dir must not
// read as "your volume does not exist"). The message is kept.
absl::Status WriteFailure(absl::Status s);

// An open file. Closes on destruction.
class File {
 public:
  virtual ~File() = default;
  virtual const std::string& path() const = 0;
  // The descriptor, for calls that need two files (Clone) or a raw fd.
  virtual int fd() const = 0;

  // Writes all of `data` at the current offset (EINTR and short writes are
  // retried).
  virtual absl::Status Append(absl::string_view data) = 0;
  // Writes all `len` bytes at `offset`.
  virtual absl::Status WriteAt(const char* data, size_t len, int64_t offset) = 0;
  // Up to `len` bytes at `offset`; 0 at end of file.
  virtual absl::StatusOr<size_t> ReadAt(char* data, size_t len, int64_t offset) = 0;
  // The next data offset at or after `offset`, -1 when only a hole follows
  // (SEEK_DATA / ENXIO).
  virtual absl::StatusOr<int64_t> NextData(int64_t offset) = 0;
  // The next hole at or after `offset` (SEEK_HOLE; the end of the file).
  virtual absl::StatusOr<int64_t> NextHole(int64_t offset) = 0;
  // ftruncate. EFBIG and EINVAL (a size the filesystem cannot hold) are
  // OUT_OF_RANGE.
  virtual absl::Status Truncate(int64_t size) = 0;
  virtual absl::Status Sync() = 0;
  virtual absl::StatusOr<struct stat> Stat() = 0;
  // Shares `src`'s extents (FICLONE). UNIMPLEMENTED where the filesystem
  // cannot (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY): the caller copies instead.
  virtual absl::Status CloneFrom(File& src) = 0;
};

class FileSystem {
 public:
  enum class OpenMode {
    kRead,             // O_RDONLY
    kWrite,            // O_WRONLY, the file must exist
    kCreateExclusive,  // O_WRONLY|O_CREAT|O_EXCL: ALREADY_EXISTS if it does
    kCreateTruncate,   // O_WRONLY|O_CREAT|O_TRUNC
  };

  virtual ~FileSystem() = default;
  // Always O_CLOEXEC; created files get `perm`.
  virtual absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path, OpenMode mode,
                                                     mode_t perm = 0600) = 0;
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  virtual absl::Status Unlink(const std::string& path) = 0;
  virtual absl::Status MakeDir(const std::string& path, mode_t perm) = 0;
  // fsync of a directory: makes renames and unlinks in it durable.
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  // Names in `dir` without "." and "..".
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual absl::StatusOr<struct stat> Stat(const std::string& path) = 0;
  // Bytes an unprivileged writer may still allocate in the filesystem of
  // `path` (statvfs f_bavail x f_frsize).
  virtual absl::StatusOr<int64_t> FreeBytes(const std::string& path) = 0;

  // Helpers over the calls above (so faults injected into those hit them).
  absl::StatusOr<std::string> ReadFile(const std::string& path);
  // temp file (`tmp`), write, fsync, rename over `path`, fsync of its dir:
  // after a crash at any instant `path` holds the old or the new bytes. On
  // a failure before the rename the temp file is removed. A failed dir
  // fsync is reported although the rename is done: the caller cannot count
  // on the new bytes surviving a crash.
  absl::Status WriteFileAtomically(const std::string& path, const std::string& tmp,
                                   absl::string_view bytes, mode_t perm = 0600);
};

// The production file system: the syscalls.
class RealFileSystem final : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path, OpenMode mode,
                                             mode_t perm) override;
  absl::Status Rename(const std::string& from, const std::string& to) override;
  absl::Status Unlink(const std::string& path) override;
  absl::Status MakeDir(const std::string& path, mode_t perm) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override;
  absl::StatusOr<struct stat> Stat(const std::string& path) override;
  absl::StatusOr<int64_t> FreeBytes(const std::string& path) override;
};

// A process-wide RealFileSystem (stateless) for callers given none.
FileSystem& DefaultFileSystem();

}  // namespace ublk_csi
