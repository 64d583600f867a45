// FaultInjectingFileSystem wraps another FileSystem (normally the real one)
// and fails chosen operations with a chosen errno (EIO, ENOSPC, ...), the way
// a failing or full disk would: by operation kind and path, after N calls
// that match have succeeded, once or until cleared. For tests of what a
// failed write leaves behind (RocksDB's FaultInjectionFS is the model).
// Thread-safe: a test may change faults while calls run.
#pragma once

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "csi/file_system.h"
#include "ublk/mutex.h"

namespace ublk_csi {

enum class FsOp {
  kOpen,      // Open(kRead / kWrite)
  kCreate,    // Open(kCreateExclusive / kCreateTruncate)
  kWrite,     // Append, WriteAt
  kRead,      // ReadAt
  kTruncate,  // Truncate
  kSync,      // File::Sync
  kClone,     // CloneFrom
  kRename,
  kUnlink,
  kMkdir,
  kSyncDir,
  kListDir,
  kStat,  // Stat, File::Stat, FreeBytes
};
const char* FsOpName(FsOp op);

struct FsFault {
  FsOp op = FsOp::kWrite;
  // The call's path (for Rename: either path) must contain this; "" = any.
  std::string path_contains;
  int err = EIO;
  // Matching calls that succeed before the first failure.
  int after = 0;
  // Fail one call, then stop; else every matching call until cleared.
  bool once = false;
};

class FaultInjectingFileSystem final : public FileSystem {
 public:
  // `base` serves every call that is not failed and must outlive this.
  explicit FaultInjectingFileSystem(FileSystem& base) : base_(base) {}

  void Inject(FsFault fault);
  void Clear();
  // Calls failed so far.
  int64_t injected() const;
  // Every call made so far as "op path" (to find the steps of a request).
  std::vector<std::string> calls() const;
  void ClearCalls();

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path, OpenMode mode,
                                             mode_t perm) override;
  absl::Status Rename(const std::string& from, const std::string& to) override;
  absl::Status Unlink(const std::string& path) override;
  absl::Status MakeDir(const std::string& path, mode_t perm) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override;
  absl::StatusOr<struct stat> Stat(const std::string& path) override;
  absl::StatusOr<int64_t> FreeBytes(const std::string& path) override;

  // The errno a call of `op` on `path` (and `path2`, for Rename) must fail
  // with, 0 to let it through. Used by the files this hands out.
  int Check(FsOp op, absl::string_view path, absl::string_view path2 = "");

 private:
  struct Armed {
    FsFault fault;
    int seen = 0;
    bool spent = false;
  };
  FileSystem& base_;
  mutable ublk::Mutex mu_;
  std::vector<Armed> faults_ ABSL_GUARDED_BY(mu_);
  int64_t injected_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ublk_csi
