#include "csi/mounter.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "ublk/errno.h"

namespace ublk_csi {
namespace {

using ublk::Errno;

std::string Unescape(absl::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\\' && i + 3 < in.size() && in[i + 1] >= '0' && in[i + 1] <= '3') {
      out.push_back(
          static_cast<char>((in[i + 1] - '0') * 64 + (in[i + 2] - '0') * 8 + (in[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

// mount(2) flags named in CSI mount_flags; anything else is fs data.
const std::map<std::string, std::pair<unsigned long, bool>>& FlagTable() {
  // name -> (bit, set?)
  static const auto* table = new std::map<std::string, std::pair<unsigned long, bool>>{
      {"ro", {MS_RDONLY, true}},         {"rw", {MS_RDONLY, false}},
      {"nosuid", {MS_NOSUID, true}},     {"suid", {MS_NOSUID, false}},
      {"nodev", {MS_NODEV, true}},       {"dev", {MS_NODEV, false}},
      {"noexec", {MS_NOEXEC, true}},     {"exec", {MS_NOEXEC, false}},
      {"sync", {MS_SYNCHRONOUS, true}},  {"async", {MS_SYNCHRONOUS, false}},
      {"dirsync", {MS_DIRSYNC, true}},   {"noatime", {MS_NOATIME, true}},
      {"atime", {MS_NOATIME, false}},    {"nodiratime", {MS_NODIRATIME, true}},
      {"relatime", {MS_RELATIME, true}}, {"strictatime", {MS_STRICTATIME, true}},
      {"lazytime", {MS_LAZYTIME, true}},
  };
  return *table;
}

// ext4/xfs options the plugin passes through as fs data: plain words, and
// key=value options with the values each takes ("#" = a decimal number,
// optionally with a k/m/g suffix).
const std::set<std::string>& FsDataWords() {
  static const auto* words = new std::set<std::string>{
      "defaults",
      "discard",
      "nodiscard",
      "nouuid",
      "noquota",
      "quota",
      "usrquota",
      "grpquota",
      "prjquota",
      "uquota",
      "gquota",
      "pquota",
      "acl",
      "noacl",
      "user_xattr",
      "nouser_xattr",
      "barrier",
      "nobarrier",
      "inode64",
      "inode32",
      "largeio",
      "nolargeio",
      "nodelalloc",
      "delalloc",
      "journal_checksum",
      "nojournal_checksum",
      "dioread_nolock",
      "dioread_lock",
  };
  return *words;
}

const std::map<std::string, std::set<std::string>>& FsDataKeys() {
  static const auto* keys = new std::map<std::string, std::set<std::string>>{
      {"errors", {"continue", "remount-ro", "panic"}},
      {"data", {"ordered", "writeback", "journal"}},
      {"commit", {"#"}},
      {"stripe", {"#"}},
      {"logbufs", {"#"}},
      {"logbsize", {"#"}},
      {"allocsize", {"#"}},
      {"sunit", {"#"}},
      {"swidth", {"#"}},
  };
  return *keys;
}

bool IsSizeNumber(absl::string_view v) {
  if (!v.empty() && (absl::ascii_tolower(v.back()) == 'k' || absl::ascii_tolower(v.back()) == 'm' ||
                     absl::ascii_tolower(v.back()) == 'g')) {
    v.remove_suffix(1);
  }
  if (v.empty() || v.size() > 12) return false;
  for (char c : v) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool IsAllowedFsData(const std::string& flag) {
  if (FsDataWords().count(flag) != 0) return true;
  size_t eq = flag.find('=');
  if (eq == std::string::npos) return false;
  auto it = FsDataKeys().find(flag.substr(0, eq));
  if (it == FsDataKeys().end()) return false;
  const std::string value = flag.substr(eq + 1);
  if (it->second.count("#") != 0) return IsSizeNumber(value);
  return it->second.count(value) != 0;
}

// "maj:min" of a dev_t, the form /proc/self/mountinfo uses.
std::string DevString(dev_t dev) { return absl::StrCat(major(dev), ":", minor(dev)); }

// The mount table with `device` filled in: mountinfo's maj:min (the
// filesystem's device) or, for a bind-mounted device node, the node's own
// device number (mountinfo shows devtmpfs there).
absl::StatusOr<std::vector<MountInfo>> ReadMounts() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return absl::InternalError("cannot read /proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<MountInfo> mounts = ParseMountInfo(ss.str());
  for (MountInfo& m : mounts) {
    // Device nodes live on devtmpfs (tmpfs in some containers); stat only
    // such binds, never a network mount's target (it could hang).
    if (m.root == "/" || (m.fstype != "devtmpfs" && m.fstype != "tmpfs")) continue;
    struct stat st;
    if (::lstat(m.target.c_str(), &st) == 0 && S_ISBLK(st.st_mode))
      m.device = DevString(st.st_rdev);
  }
  return mounts;
}

std::string CommandError(const std::vector<std::string>& argv, const CommandResult& r) {
  // One line, so the whole of it lands in the CSI error and the log line.
  std::string out = absl::StrJoin(
      absl::StrSplit(absl::StripAsciiWhitespace(r.output), '\n', absl::SkipWhitespace()), "; ");
  return absl::StrCat("`", absl::StrJoin(argv, " "), "` ",
                      r.exit_code < 0 ? absl::StrCat("killed by signal ", -r.exit_code)
                                      : absl::StrCat("exited ", r.exit_code),
                      out.empty() ? "" : ": ", out);
}

absl::Status RunChecked(const std::vector<std::string>& argv) {
  absl::StatusOr<CommandResult> r = RunCommand(argv);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) return absl::InternalError(CommandError(argv, *r));
  VLOG(1) << absl::StrJoin(argv, " ") << ": ok";
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMountFlags(const std::vector<std::string>& flags, absl::string_view field) {
  for (const std::string& f : flags) {
    if (FlagTable().count(f) != 0 || IsAllowedFsData(f)) continue;
    std::string shown = f.size() > 64 ? f.substr(0, 64) + "..." : f;
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": mount flag '", absl::CHexEscape(shown),
        "' is not supported (allowed: VFS flags such as ro, noatime, nosuid, nodev, noexec, "
        "and ext4/xfs options such as discard, nouuid, errors=, commit=, data=; "
        "bind, remount, move and propagation flags are never allowed)"));
  }
  return absl::OkStatus();
}

absl::Status RefuseSymlinks(const std::string& path, absl::string_view field) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be an absolute path"));
  }
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    struct stat st;
    if (::lstat(prefix.c_str(), &st) != 0) {
      // A missing tail is created by us with mkdir/O_NOFOLLOW; any other
      // error shows up in the operation that follows.
      return absl::OkStatus();
    }
    if (S_ISLNK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " ", path, ": ", prefix,
                       " is a symbolic link; the plugin does not follow symlinks in node paths"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MountInfo>> MountsOfDevice(Mounter& mounter,
                                                      const std::string& device_path) {
  std::vector<MountInfo> out;
  if (device_path.empty()) return out;
  absl::StatusOr<std::string> dev = mounter.DeviceNumber(device_path);
  if (absl::IsNotFound(dev.status())) return out;
  if (!dev.ok()) return dev.status();
  return MountsWithDevice(mounter, *dev);
}

absl::StatusOr<std::vector<MountInfo>> MountsWithDevice(Mounter& mounter,
                                                        const std::string& device) {
  std::vector<MountInfo> out;
  if (device.empty()) return out;
  absl::StatusOr<std::vector<MountInfo>> all = mounter.ListMounts();
  if (!all.ok()) return all.status();
  for (MountInfo& m : *all) {
    if (m.device == device) out.push_back(std::move(m));
  }
  return out;
}

std::vector<MountInfo> ParseMountInfo(const std::string& text) {
  std::vector<MountInfo> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    // id parent maj:min root mountpoint options [optional...] - fstype source superopts
    size_t dash = 6;
    while (dash < f.size() && f[dash] != "-") ++dash;
    if (f.size() < 7 || dash + 2 >= f.size()) continue;
    MountInfo m;
    m.device = std::string(f[2]);
    m.root = Unescape(f[3]);
    m.target = Unescape(f[4]);
    for (absl::string_view o : absl::StrSplit(f[5], ',')) {
      if (o == "ro") m.readonly = true;
    }
    m.fstype = std::string(f[dash + 1]);
    m.source = Unescape(f[dash + 2]);
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout) {
  if (argv.empty()) return absl::InvalidArgumentError("RunCommand: empty argv");
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe for `", argv[0], "`: ", Errno(errno)));
  }
  // posix_spawn, not fork: nothing of this (threaded) process runs in the
  // child before exec, and glibc reports a failed exec as the return value.
  // The child leads its own process group so a timeout kills what it started too.
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  ::posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  ::posix_spawnattr_init(&attr);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  ::posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = -1;
  const int err = ::posix_spawnp(&pid, cargv[0], &actions, &attr, cargv.data(), environ);
  ::posix_spawn_file_actions_destroy(&actions);
  ::posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (err != 0) {
    ::close(fds[0]);
    if (err == ENOENT || err == EACCES) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot run `", argv[0], "`: not installed or not in PATH"));
    }
    return absl::InternalError(absl::StrCat("posix_spawn `", argv[0], "`: ", Errno(err)));
  }
  CommandResult result;
  bool timed_out = false;
  const absl::Time deadline = absl::Now() + timeout;
  char buf[4096];
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      timed_out = true;
      break;
    }
    pollfd p = {fds[0], POLLIN, 0};
    const int ready = ::poll(
        &p, 1, static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;
    ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n > 0) {
      if (result.output.size() < (1 << 20)) result.output.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  if (timed_out) {
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  // EOF on the pipe but the tool still running (it closed its output): the
  // rest of the timeout still bounds the wait.
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, timed_out ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid `", argv[0], "`: ", Errno(errno)));
    }
    if (w == 0) {
      if (absl::Now() >= deadline) {
        timed_out = true;
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
      } else {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  }
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat("`", absl::StrJoin(argv, " "),
                                                    "` did not finish within ",
                                                    absl::FormatDuration(timeout), "; killed"));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return result;
}

absl::Status RealMounter::Mount(const std::string& source, const std::string& target,
                                const std::string& fstype, const MountOptions& options) {
  if (absl::Status s = ValidateMountFlags(options.flags, "mount"); !s.ok()) return s;
  unsigned long flags = 0;
  std::vector<std::string> data;
  for (const std::string& f : options.flags) {
    auto it = FlagTable().find(f);
    if (it == FlagTable().end()) {
      data.push_back(f);
    } else if (it->second.second) {
      flags |= it->second.first;
    } else {
      flags &= ~it->second.first;
    }
  }
  if (options.readonly) flags |= MS_RDONLY;
  std::string data_str = absl::StrJoin(data, ",");
  if (options.bind) {
    if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      return absl::InternalError(
          absl::StrCat("bind mount ", source, " on ", target, ": ", Errno(errno)));
    }
    // A bind mount ignores all flags but MS_BIND; they take a remount.
    unsigned long remount = flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME |
                                     MS_NODIRATIME | MS_RELATIME);
    if (remount != 0 &&
        ::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | remount, nullptr) != 0) {
      int err = errno;
      ::umount2(target.c_str(), 0);
      return absl::InternalError(
          absl::StrCat("remount bind mount ", target, " with flags: ", Errno(err)));
    }
    return absl::OkStatus();
  }
  if (::mount(source.c_str(), target.c_str(), fstype.c_str(), flags,
              data_str.empty() ? nullptr : data_str.c_str()) != 0) {
    int err = errno;
    return absl::InternalError(absl::StrCat("mount ", source, " on ", target, " (", fstype,
                                            data_str.empty() ? "" : ", ", data_str,
                                            "): ", Errno(err)));
  }
  return absl::OkStatus();
}

absl::Status RealMounter::Unmount(const std::string& target) {
  if (::umount2(target.c_str(), UMOUNT_NOFOLLOW) != 0) {
    return absl::InternalError(absl::StrCat("unmount ", target, ": ", Errno(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<MountInfo>> RealMounter::GetMountInfo(const std::string& target) {
  absl::StatusOr<std::vector<MountInfo>> mounts = ReadMounts();
  if (!mounts.ok()) return mounts.status();
  std::optional<MountInfo> found;
  for (MountInfo& m : *mounts) {
    if (m.target == target) found = std::move(m);  // the last one is on top
  }
  return found;
}

absl::StatusOr<std::vector<MountInfo>> RealMounter::ListMounts() { return ReadMounts(); }

absl::StatusOr<std::string> RealMounter::DeviceNumber(const std::string& device_path) {
  struct stat st;
  if (::stat(device_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("stat ", device_path, ": ", Errno(errno)));
  }
  if (!S_ISBLK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(device_path, " is not a block device"));
  }
  return DevString(st.st_rdev);
}

// No discard at mkfs: a device only ever gets a filesystem when it is new,
// and a new volume (sparse file, fresh RBD image) reads zeros already; the
// whole-device discard cost an RBD volume one librbd op per object (over
// 90 s for 256 MiB under TCG). Lazy inode-table and journal init, as
// ceph-csi does: the kernel finishes them in the background.
absl::Status RealMounter::MakeFilesystem(const std::string& device, const std::string& fstype) {
  if (fstype == "ext4") {
    return RunChecked({"mkfs.ext4", "-F", "-q", "-E",
                       "nodiscard,lazy_itable_init=1,lazy_journal_init=1", device});
  }
  if (fstype == "xfs") return RunChecked({"mkfs.xfs", "-f", "-q", "-K", device});
  return absl::InvalidArgumentError(
      absl::StrCat("mkfs on ", device, ": unsupported filesystem type '", fstype, "'"));
}

absl::StatusOr<std::string> RealMounter::ProbeFilesystem(const std::string& device) {
  std::vector<std::string> argv = {"blkid", "-p", "-o", "export", device};
  absl::StatusOr<CommandResult> r = RunCommand(argv);
  if (!r.ok()) return r.status();
  // blkid exits 2 when it finds nothing it recognises.
  if (r->exit_code == 2) return std::string();
  if (r->exit_code != 0) return absl::InternalError(CommandError(argv, *r));
  std::string type, pttype;
  for (absl::string_view line : absl::StrSplit(r->output, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "TYPE=")) type = std::string(line);
    if (absl::ConsumePrefix(&line, "PTTYPE=")) pttype = std::string(line);
  }
  // A partition table (or any other signature) is data too: never "empty".
  if (type.empty() && !pttype.empty()) return absl::StrCat("partition-table-", pttype);
  if (type.empty()) return std::string("unknown-signature");
  return type;
}

absl::Status RealMounter::ResizeFilesystem(const std::string& device, const std::string& mount_path,
                                           const std::string& fstype) {
  if (fstype == "ext4" || fstype == "ext3" || fstype == "ext2") {
    return RunChecked({"resize2fs", device});
  }
  if (fstype == "xfs") return RunChecked({"xfs_growfs", mount_path});
  return absl::UnimplementedError(
      absl::StrCat("grow filesystem on ", device, ": unsupported type '", fstype, "'"));
}

absl::StatusOr<FsStats> RealMounter::Statfs(const std::string& path) {
  struct statvfs s;
  if (::statvfs(path.c_str(), &s) != 0) {
    return absl::InternalError(absl::StrCat("statvfs ", path, ": ", Errno(errno)));
  }
  FsStats st;
  int64_t frsize = static_cast<int64_t>(s.f_frsize);
  st.total_bytes = static_cast<int64_t>(s.f_blocks) * frsize;
  st.available_bytes = static_cast<int64_t>(s.f_bavail) * frsize;
  st.used_bytes = static_cast<int64_t>(s.f_blocks - s.f_bfree) * frsize;
  st.total_inodes = static_cast<int64_t>(s.f_files);
  st.free_inodes = static_cast<int64_t>(s.f_ffree);
  st.used_inodes = st.total_inodes - st.free_inodes;
  return st;
}

namespace {

// FIFREEZE / FITHAW on the mount point's directory.
absl::Status FreezeIoctl(const std::string& mount_path, unsigned long request, const char* what) {
  int fd = ::open(mount_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("open ", mount_path, ": ", Errno(errno)));
  int rc = ::ioctl(fd, request, 0);
  int err = errno;
  ::close(fd);
  if (rc == 0) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, " ", mount_path, ": ", Errno(err));
  if (request == FIFREEZE && err == EBUSY) {
    return absl::FailedPreconditionError(absl::StrCat(msg, " (already frozen)"));
  }
  if (request == FITHAW && err == EINVAL) {
    return absl::FailedPreconditionError(absl::StrCat(msg, " (not frozen)"));
  }
  if (err == EOPNOTSUPP || err == ENOTTY) return absl::UnimplementedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::Status RealMounter::Freeze(const std::string& mount_path) {
  return FreezeIoctl(mount_path, FIFREEZE, "freeze");
}

absl::Status RealMounter::Thaw(const std::string& mount_path) {
  return FreezeIoctl(mount_path, FITHAW, "thaw");
}

}  // namespace ublk_csi
