#include "csi/fake_volume_backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "ublk/errno.h"
#include "ublk/mutex.h"

namespace ublk_csi {

absl::Status FakeVolumeBackend::TakeFailure(Op op) {
  auto it = failures_.find(op);
  if (it == failures_.end()) return absl::OkStatus();
  absl::Status s = it->second;
  failures_.erase(it);
  return s;
}

absl::StatusOr<ExportInfo> FakeVolumeBackend::EnsureExport(const ExportSpec& spec) {
  std::function<void(const ExportSpec&)> hook;
  {
    ublk::MutexLock lock(&mu_);
    hook = ensure_hook_;
  }
  if (hook) hook(spec);
  ublk::MutexLock lock(&mu_);
  ++ensure_calls_;
  if (absl::Status s = TakeFailure(Op::kEnsure); !s.ok()) return s;
  if (auto it = exports_.find(spec.volume_id); it != exports_.end()) return it->second.info;
  // An RBD image's "device" is a sparse file standing in for the image
  // (one per pool/image, kept across exports, as the image outlives them).
  std::string source = spec.backing_file;
  if (spec.rbd) {
    if (spec.rbd->user.empty() || spec.rbd->key.empty()) {
      return absl::PermissionDeniedError(
          absl::StrCat("volume ", spec.volume_id, ": no cephx credentials for the RBD target"));
    }
    source = absl::StrCat(device_dir_, "/rbd-", spec.rbd->pool, "-", spec.rbd->image, ".img");
    const int fd = ::open(source.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, spec.size_bytes) != 0) {
      const int e = errno;
      if (fd >= 0) ::close(fd);
      return absl::InternalError(
          absl::StrCat("volume ", spec.volume_id, ": ", source, ": ", ublk::Errno(e)));
    }
    ::close(fd);
  }
  struct stat st;
  if (::stat(source.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("volume ", spec.volume_id, ": backing file ",
                                            spec.backing_file, ": ", ublk::Errno(errno)));
  }
  if (static_cast<int>(exports_.size()) >= max_volumes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "volume ", spec.volume_id, ": device limit reached (", max_volumes_, " exports)"));
  }
  std::set<int32_t> used;
  for (const auto& [_, e] : exports_) used.insert(e.info.dev_id);
  int32_t dev_id = spec.preferred_dev_id;
  if (dev_id < 0 || used.count(dev_id) != 0) {
    dev_id = 0;
    while (used.count(dev_id) != 0) ++dev_id;
  }
  Export e;
  e.spec = spec;
  e.info.dev_id = dev_id;
  e.info.device_path = absl::StrCat(device_dir_, "/ublkb", dev_id);
  e.info.size_bytes = spec.size_bytes;
  e.info.state = ExportState::kLive;
  ::unlink(e.info.device_path.c_str());
  if (::symlink(source.c_str(), e.info.device_path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("volume ", spec.volume_id, ": symlink ",
                                            e.info.device_path, ": ", ublk::Errno(errno)));
  }
  ExportInfo info = e.info;
  exports_[spec.volume_id] = std::move(e);
  return info;
}

absl::Status FakeVolumeBackend::RemoveExport(const std::string& volume_id) {
  ublk::MutexLock lock(&mu_);
  if (absl::Status s = TakeFailure(Op::kRemove); !s.ok()) return s;
  auto it = exports_.find(volume_id);
  if (it == exports_.end()) return absl::OkStatus();
  ::unlink(it->second.info.device_path.c_str());
  exports_.erase(it);
  return absl::OkStatus();
}

absl::Status FakeVolumeBackend::ResizeExport(const std::string& volume_id, int64_t new_size_bytes) {
  ublk::MutexLock lock(&mu_);
  if (absl::Status s = TakeFailure(Op::kResize); !s.ok()) return s;
  auto it = exports_.find(volume_id);
  if (it == exports_.end()) {
    return absl::NotFoundError(absl::StrCat("volume ", volume_id, ": no export to resize"));
  }
  if (!resize_supported_) {
    return absl::UnimplementedError(
        absl::StrCat("volume ", volume_id, ": this kernel cannot resize a live ublk device"));
  }
  it->second.info.size_bytes = new_size_bytes;
  it->second.spec.size_bytes = new_size_bytes;
  return absl::OkStatus();
}

ExportStatus FakeVolumeBackend::GetExportStatus(const std::string& volume_id) {
  ublk::MutexLock lock(&mu_);
  ExportStatus st;
  auto it = exports_.find(volume_id);
  if (it == exports_.end()) return st;
  st.state = it->second.info.state;
  st.message = it->second.message;
  st.device_path = it->second.info.device_path;
  st.dev_id = it->second.info.dev_id;
  st.worker = it->second.info.dev_id % 4;
  st.copy_mode = "fake";
  return st;
}

absl::Status FakeVolumeBackend::Usable() {
  ublk::MutexLock lock(&mu_);
  return usable_;
}

void FakeVolumeBackend::FailNext(Op op, absl::Status status) {
  ublk::MutexLock lock(&mu_);
  failures_[op] = std::move(status);
}

void FakeVolumeBackend::SetState(const std::string& volume_id, ExportState state,
                                 std::string message) {
  ublk::MutexLock lock(&mu_);
  auto it = exports_.find(volume_id);
  if (it == exports_.end()) return;
  it->second.info.state = state;
  it->second.message = std::move(message);
}

void FakeVolumeBackend::SetEnsureHook(std::function<void(const ExportSpec&)> hook) {
  ublk::MutexLock lock(&mu_);
  ensure_hook_ = std::move(hook);
}

void FakeVolumeBackend::SetUsable(absl::Status status) {
  ublk::MutexLock lock(&mu_);
  usable_ = std::move(status);
}

void FakeVolumeBackend::SetResizeSupported(bool supported) {
  ublk::MutexLock lock(&mu_);
  resize_supported_ = supported;
}

int FakeVolumeBackend::ensure_calls() const {
  ublk::MutexLock lock(&mu_);
  return ensure_calls_;
}

int FakeVolumeBackend::export_count() const {
  ublk::MutexLock lock(&mu_);
  return static_cast<int>(exports_.size());
}

ExportSpec FakeVolumeBackend::LastSpec(const std::string& volume_id) const {
  ublk::MutexLock lock(&mu_);
  auto it = exports_.find(volume_id);
  return it == exports_.end() ? ExportSpec{} : it->second.spec;
}

}  // namespace ublk_csi
