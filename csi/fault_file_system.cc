#include "csi/fault_file_system.h"

#include <cerrno>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ublk_csi {

const char* FsOpName(FsOp op) {
  switch (op) {
    case FsOp::kOpen:
      return "open";
    case FsOp::kCreate:
      return "create";
    case FsOp::kWrite:
      return "write";
    case FsOp::kRead:
      return "read";
    case FsOp::kTruncate:
      return "truncate";
    case FsOp::kSync:
      return "fsync";
    case FsOp::kClone:
      return "reflink";
    case FsOp::kRename:
      return "rename";
    case FsOp::kUnlink:
      return "unlink";
    case FsOp::kMkdir:
      return "mkdir";
    case FsOp::kSyncDir:
      return "fsync dir";
    case FsOp::kListDir:
      return "opendir";
    case FsOp::kStat:
      return "stat";
  }
  return "?";
}

namespace {

class FaultFile final : public File {
 public:
  FaultFile(FaultInjectingFileSystem* fs, std::unique_ptr<File> base)
      : fs_(fs), base_(std::move(base)) {}

  const std::string& path() const override { return base_->path(); }
  int fd() const override { return base_->fd(); }

  absl::Status Append(absl::string_view data) override {
    if (int err = fs_->Check(FsOp::kWrite, path())) return FsError("write", path(), err);
    return base_->Append(data);
  }
  absl::Status WriteAt(const char* data, size_t len, int64_t offset) override {
    if (int err = fs_->Check(FsOp::kWrite, path())) return FsError("write", path(), err);
    return base_->WriteAt(data, len, offset);
  }
  absl::StatusOr<size_t> ReadAt(char* data, size_t len, int64_t offset) override {
    if (int err = fs_->Check(FsOp::kRead, path())) return FsError("read", path(), err);
    return base_->ReadAt(data, len, offset);
  }
  absl::StatusOr<int64_t> NextData(int64_t offset) override { return base_->NextData(offset); }
  absl::StatusOr<int64_t> NextHole(int64_t offset) override { return base_->NextHole(offset); }
  absl::Status Truncate(int64_t size) override {
    if (int err = fs_->Check(FsOp::kTruncate, path())) {
      return FsError("size", absl::StrCat(path(), " to ", size, " bytes"), err);
    }
    return base_->Truncate(size);
  }
  absl::Status Sync() override {
    if (int err = fs_->Check(FsOp::kSync, path())) return FsError("fsync", path(), err);
    return base_->Sync();
  }
  absl::StatusOr<struct stat> Stat() override {
    if (int err = fs_->Check(FsOp::kStat, path())) return FsError("stat", path(), err);
    return base_->Stat();
  }
  absl::Status CloneFrom(File& src) override {
    if (int err = fs_->Check(FsOp::kClone, path(), src.path())) {
      const std::string what = absl::StrCat(src.path(), " -> ", path());
      if (err == EOPNOTSUPP) {
        return absl::UnimplementedError(absl::StrCat("reflink ", what, ": injected EOPNOTSUPP"));
      }
      return FsError("reflink", what, err);
    }
    return base_->CloneFrom(src);  // uses src.fd(), the real descriptor
  }

 private:
  FaultInjectingFileSystem* const fs_;
  const std::unique_ptr<File> base_;
};

}  // namespace

void FaultInjectingFileSystem::Inject(FsFault fault) {
  ublk::MutexLock lock(&mu_);
  faults_.push_back(Armed{std::move(fault)});
}

void FaultInjectingFileSystem::Clear() {
  ublk::MutexLock lock(&mu_);
  faults_.clear();
}

int64_t FaultInjectingFileSystem::injected() const {
  ublk::MutexLock lock(&mu_);
  return injected_;
}

std::vector<std::string> FaultInjectingFileSystem::calls() const {
  ublk::MutexLock lock(&mu_);
  return calls_;
}

void FaultInjectingFileSystem::ClearCalls() {
  ublk::MutexLock lock(&mu_);
  calls_.clear();
}

int FaultInjectingFileSystem::Check(FsOp op, absl::string_view path, absl::string_view path2) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat(FsOpName(op), " ", path, path2.empty() ? "" : " ", path2));
  for (Armed& a : faults_) {
    if (a.spent || a.fault.op != op) continue;
    const std::string& want = a.fault.path_contains;
    if (!want.empty() && !absl::StrContains(path, want) && !absl::StrContains(path2, want)) {
      continue;
    }
    if (a.seen++ < a.fault.after) continue;
    if (a.fault.once) a.spent = true;
    ++injected_;
    return a.fault.err;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<File>> FaultInjectingFileSystem::Open(const std::string& path,
                                                                     OpenMode mode, mode_t perm) {
  const bool create = mode == OpenMode::kCreateExclusive || mode == OpenMode::kCreateTruncate;
  if (int err = Check(create ? FsOp::kCreate : FsOp::kOpen, path)) {
    return FsError(create ? "create" : "open", path, err);
  }
  absl::StatusOr<std::unique_ptr<File>> f = base_.Open(path, mode, perm);
  if (!f.ok()) return f.status();
  return std::unique_ptr<File>(new FaultFile(this, *std::move(f)));
}

absl::Status FaultInjectingFileSystem::Rename(const std::string& from, const std::string& to) {
  if (int err = Check(FsOp::kRename, from, to)) {
    return FsError("rename", absl::StrCat(from, " -> ", to), err);
  }
  return base_.Rename(from, to);
}

absl::Status FaultInjectingFileSystem::Unlink(const std::string& path) {
  if (int err = Check(FsOp::kUnlink, path)) return FsError("unlink", path, err);
  return base_.Unlink(path);
}

absl::Status FaultInjectingFileSystem::MakeDir(const std::string& path, mode_t perm) {
  if (int err = Check(FsOp::kMkdir, path)) return FsError("mkdir", path, err);
  return base_.MakeDir(path, perm);
}

absl::Status FaultInjectingFileSystem::SyncDir(const std::string& dir) {
  if (int err = Check(FsOp::kSyncDir, dir)) return FsError("fsync dir", dir, err);
  return base_.SyncDir(dir);
}

absl::StatusOr<std::vector<std::string>> FaultInjectingFileSystem::ListDir(const std::string& dir) {
  if (int err = Check(FsOp::kListDir, dir)) return FsError("opendir", dir, err);
  return base_.ListDir(dir);
}

absl::StatusOr<struct stat> FaultInjectingFileSystem::Stat(const std::string& path) {
  if (int err = Check(FsOp::kStat, path)) return FsError("stat", path, err);
  return base_.Stat(path);
}

absl::StatusOr<int64_t> FaultInjectingFileSystem::FreeBytes(const std::string& path) {
  if (int err = Check(FsOp::kStat, path)) return FsError("statvfs", path, err);
  return base_.FreeBytes(path);
}

}  // namespace ublk_csi
