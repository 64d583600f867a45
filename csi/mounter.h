// The seam for every mount-table and filesystem effect of the Node service:
// mount/unmount, the mount table, mkfs, "has a filesystem?", online grow,
// statfs and freeze/thaw. RealMounter does it with mount(2)/umount2(2), /proc/self/mountinfo
// and the util programs (mkfs.ext4, mkfs.xfs, blkid, resize2fs, xfs_growfs);
// FakeMounter (csi/fake_mounter.h) keeps an in-memory table for tests.
// Implementations are thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ublk_csi {

struct MountOptions {
  bool bind = false;
  bool readonly = false;
  // Mount flags as CSI passes them (e.g. "noatime", "discard", "nouuid").
  // Known VFS flags become MS_* bits; the rest is fs-specific data.
  std::vector<std::string> flags;
};

struct MountInfo {
  std::string source;  // device (or the bind source's device)
  std::string target;
  std::string fstype;
  std::string root;  // path within the source fs ("/" for a plain mount)
  bool readonly = false;
  // Which device's data the mount shows, comparable with DeviceNumber(): the
  // filesystem's device for a mount or a bind of a mount, the node's device
  // for a bind-mounted device node (block publish). "" if unknown.
  std::string device;
};

struct FsStats {
  int64_t total_bytes = 0;
  int64_t available_bytes = 0;
  int64_t used_bytes = 0;
  int64_t total_inodes = 0;
  int64_t free_inodes = 0;
  int64_t used_inodes = 0;
};

class Mounter {
 public:
  virtual ~Mounter() = default;

  virtual absl::Status Mount(const std::string& source, const std::string& target,
                             const std::string& fstype, const MountOptions& options) = 0;
  // Unmounts the topmost mount at target; error if target is not mounted.
  virtual absl::Status Unmount(const std::string& target) = 0;
  // The topmost mount at exactly `target`, or nullopt if it is not a mount point.
  virtual absl::StatusOr<std::optional<MountInfo>> GetMountInfo(const std::string& target) = 0;
  // Every mount in this mount namespace, in mount order (stacked mounts:
  // the later one is on top), with `device` filled in.
  virtual absl::StatusOr<std::vector<MountInfo>> ListMounts() = 0;
  // The identity of a block device path, as MountInfo::device reports it.
  virtual absl::StatusOr<std::string> DeviceNumber(const std::string& device_path) = 0;
  // Creates a fresh filesystem (ext4 or xfs) on device.
  virtual absl::Status MakeFilesystem(const std::string& device, const std::string& fstype) = 0;
  // The filesystem type found on device ("ext4", "xfs", ...) or "" for none.
  virtual absl::StatusOr<std::string> ProbeFilesystem(const std::string& device) = 0;
  // Grows the filesystem on device (mounted at mount_path) to fill the device.
  virtual absl::Status ResizeFilesystem(const std::string& device, const std::string& mount_path,
                                        const std::string& fstype) = 0;
  virtual absl::StatusOr<FsStats> Statfs(const std::string& path) = 0;
  // Freezes the filesystem mounted at mount_path (FIFREEZE): its dirty data
  // reaches the device and writers wait until Thaw. FailedPrecondition if it
  // is frozen already; Unimplemented if the filesystem cannot be frozen.
  virtual absl::Status Freeze(const std::string& mount_path) = 0;
  // Thaws it (FITHAW). FailedPrecondition if it was not frozen.
  virtual absl::Status Thaw(const std::string& mount_path) = 0;

  absl::StatusOr<bool> IsMountPoint(const std::string& target) {
    absl::StatusOr<std::optional<MountInfo>> info = GetMountInfo(target);
    if (!info.ok()) return info.status();
    return info->has_value();
  }
};

class RealMounter final : public Mounter {
 public:
  absl::Status Mount(const std::string& source, const std::string& target,
                     const std::string& fstype, const MountOptions& options) override;
  absl::Status Unmount(const std::string& target) override;
  absl::StatusOr<std::optional<MountInfo>> GetMountInfo(const std::string& target) override;
  absl::StatusOr<std::vector<MountInfo>> ListMounts() override;
  absl::StatusOr<std::string> DeviceNumber(const std::string& device_path) override;
  absl::Status MakeFilesystem(const std::string& device, const std::string& fstype) override;
  absl::StatusOr<std::string> ProbeFilesystem(const std::string& device) override;
  absl::Status ResizeFilesystem(const std::string& device, const std::string& mount_path,
                                const std::string& fstype) override;
  absl::StatusOr<FsStats> Statfs(const std::string& path) override;
  absl::Status Freeze(const std::string& mount_path) override;
  absl::Status Thaw(const std::string& mount_path) override;
};

// CSI mount_flags the plugin accepts: the VFS flags mount(2) takes as MS_*
// bits (ro, noatime, nosuid, ...) and a short list of ext4/xfs options
// (discard, nouuid, errors=..., commit=N, ...). Anything else, and above all
// flags that change what kind of mount it is (bind, rbind, remount, move,
// shared, private, ...), is INVALID_ARGUMENT naming the flag and `field`.
absl::Status ValidateMountFlags(const std::vector<std::string>& flags, absl::string_view field);

// Node paths the plugin creates, mounts on or removes are never resolved
// through a symbolic link: the kernel's mount table shows resolved paths, so
// a symlink would make the plugin mount in one place and look (and unmount)
// in another. INVALID_ARGUMENT naming `field` and the symlink if any existing
// component of `path` (absolute, clean) is one; a missing tail is fine.
absl::Status RefuseSymlinks(const std::string& path, absl::string_view field);

// Every mount that shows device_path's device (its filesystem, a bind of it,
// or a bind of the device node), wherever it is. Empty if the device is gone.
absl::StatusOr<std::vector<MountInfo>> MountsOfDevice(Mounter& mounter,
                                                      const std::string& device_path);
// Every mount whose MountInfo::device is `device` (a DeviceNumber() value);
// works when the device node itself is gone. Empty for "".
absl::StatusOr<std::vector<MountInfo>> MountsWithDevice(Mounter& mounter,
                                                        const std::string& device);

// Parses /proc/self/mountinfo text; exposed for tests.
std::vector<MountInfo> ParseMountInfo(const std::string& text);

struct CommandResult {
  int exit_code = -1;  // -signal if killed
  std::string output;  // stdout and stderr
};
// Runs argv (argv[0] looked up in PATH) to completion, capturing its output.
// An error when it could not be started at all (FAILED_PRECONDITION when it
// is not installed), or DEADLINE_EXCEEDED when it ran longer than `timeout`:
// then it and its process group are killed (a mkfs or fsck stuck on a dead
// device must not hold a CSI call forever).
inline constexpr absl::Duration kToolTimeout = absl::Minutes(10);
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout = kToolTimeout);

}  // namespace ublk_csi
