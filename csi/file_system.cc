#include "csi/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "ublk/errno.h"
#include "ublk/status_macros.h"
#include "ublk/unique_fd.h"

namespace ublk_csi {

absl::Status FsError(absl::string_view op, absl::string_view path, int err) {
  std::string msg = absl::StrCat(op, " ", path, ": ", ublk::Errno(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(std::move(msg));
    case ENOENT:
      return absl::NotFoundError(std::move(msg));
    case EEXIST:
      return absl::AlreadyExistsError(std::move(msg));
    default:
      return absl::InternalError(std::move(msg));
  }
}

absl::Status WriteFailure(absl::Status s) {
  if (s.ok() || absl::IsResourceExhausted(s) || absl::IsOutOfRange(s)) return s;
  return absl::InternalError(s.message());
}

namespace {

class RealFile final : public File {
 public:
  RealFile(std::string path, ublk::UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}

  const std::string& path() const override { return path_; }
  int fd() const override { return fd_.get(); }

  absl::Status Append(absl::string_view data) override {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd_.get(), data.data() + off, data.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return FsError("write", path_, errno);
      off += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::Status WriteAt(const char* data, size_t len, int64_t offset) override {
    for (size_t done = 0; done < len;) {
      ssize_t n = ::pwrite(fd_.get(), data + done, len - done, offset + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return FsError("write", path_, errno);
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> ReadAt(char* data, size_t len, int64_t offset) override {
    for (;;) {
      ssize_t n = ::pread(fd_.get(), data, len, offset);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return FsError("read", path_, errno);
      return static_cast<size_t>(n);
    }
  }

  absl::StatusOr<int64_t> NextData(int64_t offset) override {
    off_t at = ::lseek(fd_.get(), offset, SEEK_DATA);
    if (at < 0) {
      if (errno == ENXIO) return -1;
      return FsError("seek data in", path_, errno);
    }
    return at;
  }

  absl::StatusOr<int64_t> NextHole(int64_t offset) override {
    off_t at = ::lseek(fd_.get(), offset, SEEK_HOLE);
    if (at < 0) return FsError("seek hole in", path_, errno);
    return at;
  }

  absl::Status Truncate(int64_t size) override {
    if (::ftruncate(fd_.get(), size) == 0) return absl::OkStatus();
    const int err = errno;
    const std::string what = absl::StrCat("size ", path_, " to ", size, " bytes");
    if (err == EFBIG || err == EINVAL) {
      return absl::OutOfRangeError(absl::StrCat(what, ": ", ublk::Errno(err),
                                                " (beyond the largest file the filesystem holds)"));
    }
    return FsError("size", absl::StrCat(path_, " to ", size, " bytes"), err);
  }

  absl::Status Sync() override {
    if (::fsync(fd_.get()) != 0) return FsError("fsync", path_, errno);
    return absl::OkStatus();
  }

  absl::StatusOr<struct stat> Stat() override {
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) return FsError("stat", path_, errno);
    return st;
  }

  absl::Status CloneFrom(File& src) override {
    if (::ioctl(fd_.get(), FICLONE, src.fd()) == 0) return absl::OkStatus();
    const int err = errno;
    const std::string what = absl::StrCat(src.path(), " -> ", path_);
    if (err == EOPNOTSUPP || err == EXDEV || err == EINVAL || err == ENOTTY) {
      return absl::UnimplementedError(absl::StrCat("reflink ", what, ": ", ublk::Errno(err)));
    }
    return FsError("reflink", what, err);
  }

 private:
  const std::string path_;
  ublk::UniqueFd fd_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<File>> RealFileSystem::Open(const std::string& path, OpenMode mode,
                                                           mode_t perm) {
  int flags = O_CLOEXEC;
  const char* op = "open";
  switch (mode) {
    case OpenMode::kRead:
      flags |= O_RDONLY;
      break;
    case OpenMode::kWrite:
      flags |= O_WRONLY;
      break;
    case OpenMode::kCreateExclusive:
      flags |= O_WRONLY | O_CREAT | O_EXCL;
      op = "create";
      break;
    case OpenMode::kCreateTruncate:
      flags |= O_WRONLY | O_CREAT | O_TRUNC;
      op = "create";
      break;
  }
  ublk::UniqueFd fd(::open(path.c_str(), flags, perm));
  if (!fd.valid()) return FsError(op, path, errno);
  return std::make_unique<RealFile>(path, std::move(fd));
}

absl::Status RealFileSystem::Rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return FsError("rename", absl::StrCat(from, " -> ", to), errno);
  }
  return absl::OkStatus();
}

absl::Status RealFileSystem::Unlink(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return FsError("unlink", path, errno);
  return absl::OkStatus();
}

absl::Status RealFileSystem::MakeDir(const std::string& path, mode_t perm) {
  if (::mkdir(path.c_str(), perm) != 0) return FsError("mkdir", path, errno);
  return absl::OkStatus();
}

absl::Status RealFileSystem::SyncDir(const std::string& dir) {
  ublk::UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return FsError("open dir", dir, errno);
  if (::fsync(fd.get()) != 0) return FsError("fsync dir", dir, errno);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> RealFileSystem::ListDir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return FsError("opendir", dir, errno);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  ::closedir(d);
  return names;
}

absl::StatusOr<struct stat> RealFileSystem::Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return FsError("stat", path, errno);
  return st;
}

absl::StatusOr<int64_t> RealFileSystem::FreeBytes(const std::string& path) {
  struct statvfs s;
  if (::statvfs(path.c_str(), &s) != 0) return FsError("statvfs", path, errno);
  return static_cast<int64_t>(s.f_bavail) * static_cast<int64_t>(s.f_frsize);
}

absl::StatusOr<std::string> FileSystem::ReadFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<File> f, Open(path, OpenMode::kRead));
  std::string out;
  char buf[8192];
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, f->ReadAt(buf, sizeof(buf), static_cast<int64_t>(out.size())));
    if (n == 0) return out;
    out.append(buf, n);
  }
}

absl::Status FileSystem::WriteFileAtomically(const std::string& path, const std::string& tmp,
                                             absl::string_view bytes, mode_t perm) {
  absl::Status s;
  {
    absl::StatusOr<std::unique_ptr<File>> f = Open(tmp, OpenMode::kCreateTruncate, perm);
    if (!f.ok()) return f.status();
    s = (*f)->Append(bytes);
    if (s.ok()) s = (*f)->Sync();
  }
  if (s.ok()) s = Rename(tmp, path);
  if (!s.ok()) {
    Unlink(tmp).IgnoreError();  // the old file, if any, is intact
    return s;
  }
  const size_t slash = path.rfind('/');
  return SyncDir(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash));
}

FileSystem& DefaultFileSystem() {
  static RealFileSystem* fs = new RealFileSystem;
  return *fs;
}

}  // namespace ublk_csi
