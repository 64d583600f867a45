// A Mounter with an in-memory mount table and filesystem registry: no mount
// ever happens. Records every call, lets tests inject one failure per
// operation, and reports statfs numbers from the size of the "device" (the
// file behind the source path). Like the kernel, a mount lands on (and the
// table shows) the target with its symlinks resolved, so tests can make
// symlinked node paths in a temp dir. Used by unit tests and `ublk-csi
// --mounter=fake` demos. Thread-safe.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "csi/mounter.h"
#include "ublk/mutex.h"

namespace ublk_csi {

class FakeMounter final : public Mounter {
 public:
  enum class Op { kMount, kUnmount, kMkfs, kProbe, kResize, kStatfs, kFreeze, kThaw };

  absl::Status Mount(const std::string& source, const std::string& target,
                     const std::string& fstype, const MountOptions& options) override;
  absl::Status Unmount(const std::string& target) override;
  absl::StatusOr<std::optional<MountInfo>> GetMountInfo(const std::string& target) override;
  absl::StatusOr<std::vector<MountInfo>> ListMounts() override;
  // The "device" is the file a device path resolves to (the fake backend's
  // device nodes are symlinks to backing files).
  absl::StatusOr<std::string> DeviceNumber(const std::string& device_path) override;
  absl::Status MakeFilesystem(const std::string& device, const std::string& fstype) override;
  absl::StatusOr<std::string> ProbeFilesystem(const std::string& device) override;
  absl::Status ResizeFilesystem(const std::string& device, const std::string& mount_path,
                                const std::string& fstype) override;
  absl::StatusOr<FsStats> Statfs(const std::string& path) override;
  // The filesystem of the topmost mount at mount_path is frozen until Thaw,
  // as by the kernel (per filesystem: a bind mount of it is frozen too).
  absl::Status Freeze(const std::string& mount_path) override;
  absl::Status Thaw(const std::string& mount_path) override;

  // Whether the filesystem mounted at mount_path is frozen.
  bool IsFrozen(const std::string& mount_path) const;
  void FailNext(Op op, absl::Status status);
  // Every call so far, e.g. "mount /dev/ublkb0 /stage ext4 noatime".
  std::vector<std::string> calls() const;
  int CountCalls(const std::string& prefix) const;
  std::vector<MountInfo> mounts() const;
  // The mount flags the topmost mount at target was made with.
  std::vector<std::string> FlagsOf(const std::string& target) const;

 private:
  struct Entry {
    MountInfo info;
    std::vector<std::string> flags;
    std::string device;  // the real device behind a bind of a mount
  };
  absl::Status TakeFailure(Op op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The topmost mount at exactly target, or null.
  const Entry* TopAt(const std::string& target) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string DeviceKey(const std::string& path) const;

  mutable ublk::Mutex mu_;
  std::vector<Entry> table_ ABSL_GUARDED_BY(mu_);                        // in mount order
  std::map<std::string, std::string> filesystems_ ABSL_GUARDED_BY(mu_);  // device -> type
  std::map<std::string, int64_t> fs_size_ ABSL_GUARDED_BY(mu_);          // device -> bytes
  std::map<Op, absl::Status> failures_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> frozen_ ABSL_GUARDED_BY(mu_);  // devices whose fs is frozen
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ublk_csi
