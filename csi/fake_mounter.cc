#include "csi/fake_mounter.h"

#include <sys/stat.h>

#include <climits>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ublk/mutex.h"

namespace ublk_csi {

absl::Status FakeMounter::TakeFailure(Op op) {
  auto it = failures_.find(op);
  if (it == failures_.end()) return absl::OkStatus();
  absl::Status s = it->second;
  failures_.erase(it);
  return s;
}

std::string FakeMounter::DeviceKey(const std::string& path) const {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) != nullptr) return buf;
  return path;
}

const FakeMounter::Entry* FakeMounter::TopAt(const std::string& target) const {
  const Entry* top = nullptr;
  for (const Entry& e : table_) {
    if (e.info.target == target) top = &e;
  }
  return top;
}

absl::Status FakeMounter::Mount(const std::string& source, const std::string& target,
                                const std::string& fstype, const MountOptions& options) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("mount ", source, " ", target, " ", options.bind ? "bind" : fstype,
                                options.readonly ? " ro" : "", options.flags.empty() ? "" : " ",
                                absl::StrJoin(options.flags, ",")));
  if (absl::Status s = TakeFailure(Op::kMount); !s.ok()) return s;
  if (absl::Status s = ValidateMountFlags(options.flags, "mount"); !s.ok()) return s;
  struct stat st;
  if (::stat(target.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("mount ", source, " on ", target, ": target does not exist"));
  }
  Entry e;
  e.info.target = DeviceKey(target);  // the kernel follows symlinks in the target
  e.info.readonly = options.readonly;
  e.flags = options.flags;
  for (const std::string& f : options.flags) {
    if (f == "ro") e.info.readonly = true;
  }
  if (options.bind) {
    // Binding a mount point shows the mounted fs's source, like the kernel.
    const Entry* under = nullptr;
    const std::string resolved_source = DeviceKey(source);
    for (const Entry& m : table_) {
      if (m.info.target == resolved_source) under = &m;
    }
    if (under != nullptr) {
      e.info.source = under->info.source;
      e.info.fstype = under->info.fstype;
      e.device = under->device;
    } else {
      e.info.source = source;
      e.info.fstype = "devtmpfs";
      e.device = DeviceKey(source);
    }
    e.info.root = source;
  } else {
    e.device = DeviceKey(source);
    auto fs = filesystems_.find(e.device);
    if (fs == filesystems_.end() || fs->second != fstype) {
      return absl::InternalError(absl::StrCat("mount ", source, " on ", target, " (", fstype,
                                              "): wrong fs type, bad superblock"));
    }
    e.info.source = source;
    e.info.fstype = fstype;
    e.info.root = "/";
  }
  e.info.device = e.device;
  table_.push_back(std::move(e));
  return absl::OkStatus();
}

absl::Status FakeMounter::Unmount(const std::string& target) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("unmount ", target));
  if (absl::Status s = TakeFailure(Op::kUnmount); !s.ok()) return s;
  for (auto it = table_.rbegin(); it != table_.rend(); ++it) {
    if (it->info.target == target) {
      table_.erase(std::next(it).base());
      return absl::OkStatus();
    }
  }
  return absl::InternalError(absl::StrCat("unmount ", target, ": not mounted"));
}

absl::StatusOr<std::optional<MountInfo>> FakeMounter::GetMountInfo(const std::string& target) {
  ublk::MutexLock lock(&mu_);
  std::optional<MountInfo> found;
  for (const Entry& e : table_) {
    if (e.info.target == target) found = e.info;
  }
  return found;
}

absl::StatusOr<std::vector<MountInfo>> FakeMounter::ListMounts() {
  ublk::MutexLock lock(&mu_);
  std::vector<MountInfo> out;
  for (const Entry& e : table_) out.push_back(e.info);
  return out;
}

absl::StatusOr<std::string> FakeMounter::DeviceNumber(const std::string& device_path) {
  struct stat st;
  if (::stat(device_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("stat ", device_path, ": no such device"));
  }
  return DeviceKey(device_path);
}

absl::Status FakeMounter::MakeFilesystem(const std::string& device, const std::string& fstype) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("mkfs ", device, " ", fstype));
  if (absl::Status s = TakeFailure(Op::kMkfs); !s.ok()) return s;
  if (fstype != "ext4" && fstype != "xfs") {
    return absl::InvalidArgumentError(absl::StrCat("mkfs: unsupported type ", fstype));
  }
  struct stat st;
  if (::stat(device.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("mkfs: ", device, " does not exist"));
  }
  std::string key = DeviceKey(device);
  filesystems_[key] = fstype;
  fs_size_[key] = st.st_size;
  return absl::OkStatus();
}

absl::StatusOr<std::string> FakeMounter::ProbeFilesystem(const std::string& device) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("probe ", device));
  if (absl::Status s = TakeFailure(Op::kProbe); !s.ok()) return s;
  auto it = filesystems_.find(DeviceKey(device));
  return it == filesystems_.end() ? std::string() : it->second;
}

absl::Status FakeMounter::ResizeFilesystem(const std::string& device, const std::string& mount_path,
                                           const std::string& fstype) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("resizefs ", device, " ", mount_path, " ", fstype));
  if (absl::Status s = TakeFailure(Op::kResize); !s.ok()) return s;
  std::string key = DeviceKey(device);
  struct stat st;
  if (filesystems_.count(key) == 0 || ::stat(device.c_str(), &st) != 0) {
    return absl::InternalError(absl::StrCat("resize ", device, ": no filesystem"));
  }
  fs_size_[key] = st.st_size;
  return absl::OkStatus();
}

absl::StatusOr<FsStats> FakeMounter::Statfs(const std::string& path) {
  ublk::MutexLock lock(&mu_);
  if (absl::Status s = TakeFailure(Op::kStatfs); !s.ok()) return s;
  const Entry* top = TopAt(path);
  if (top == nullptr) return absl::NotFoundError(absl::StrCat("statfs ", path, ": not mounted"));
  FsStats st;
  st.total_bytes = fs_size_[top->device];
  st.used_bytes = st.total_bytes / 100;
  st.available_bytes = st.total_bytes - st.used_bytes;
  st.total_inodes = st.total_bytes / 16384;
  st.used_inodes = 11;
  st.free_inodes = st.total_inodes - st.used_inodes;
  return st;
}

absl::Status FakeMounter::Freeze(const std::string& mount_path) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("freeze ", mount_path));
  if (absl::Status s = TakeFailure(Op::kFreeze); !s.ok()) return s;
  const Entry* top = TopAt(mount_path);
  if (top == nullptr)
    return absl::NotFoundError(absl::StrCat("freeze ", mount_path, ": not mounted"));
  if (!frozen_.insert(top->device).second) {
    return absl::FailedPreconditionError(absl::StrCat("freeze ", mount_path, ": already frozen"));
  }
  return absl::OkStatus();
}

absl::Status FakeMounter::Thaw(const std::string& mount_path) {
  ublk::MutexLock lock(&mu_);
  calls_.push_back(absl::StrCat("thaw ", mount_path));
  if (absl::Status s = TakeFailure(Op::kThaw); !s.ok()) return s;
  const Entry* top = TopAt(mount_path);
  if (top == nullptr || frozen_.erase(top->device) == 0) {
    return absl::FailedPreconditionError(absl::StrCat("thaw ", mount_path, ": not frozen"));
  }
  return absl::OkStatus();
}

bool FakeMounter::IsFrozen(const std::string& mount_path) const {
  ublk::MutexLock lock(&mu_);
  const Entry* top = TopAt(mount_path);
  return top != nullptr && frozen_.count(top->device) != 0;
}

void FakeMounter::FailNext(Op op, absl::Status status) {
  ublk::MutexLock lock(&mu_);
  failures_[op] = std::move(status);
}

std::vector<std::string> FakeMounter::calls() const {
  ublk::MutexLock lock(&mu_);
  return calls_;
}

int FakeMounter::CountCalls(const std::string& prefix) const {
  ublk::MutexLock lock(&mu_);
  int n = 0;
  for (const std::string& c : calls_) n += absl::StartsWith(c, prefix) ? 1 : 0;
  return n;
}

std::vector<MountInfo> FakeMounter::mounts() const {
  ublk::MutexLock lock(&mu_);
  std::vector<MountInfo> out;
  for (const Entry& e : table_) out.push_back(e.info);
  return out;
}

std::vector<std::string> FakeMounter::FlagsOf(const std::string& target) const {
  ublk::MutexLock lock(&mu_);
  std::vector<std::string> flags;
  for (const Entry& e : table_) {
    if (e.info.target == target) flags = e.flags;
  }
  return flags;
}

}  // namespace ublk_csi
