// VolumeManager: the Node half (stage, publish, stats, expand, info).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "csi/log_escape.h"
#include "csi/volume_manager.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

using csi::v1::VolumeCapability;
using records::VolumeRecord;

namespace {

using ublk::Errno;

// Makes path and any missing parents (never through a symlink: callers ran
// RefuseSymlinks, and mkdir does not follow a last component). Appends to
// `created` the dirs it made, parents first.
absl::Status MkdirAll(const std::string& path, std::vector<std::string>* created = nullptr) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    RETURN_IF_ERROR(MkdirAll(path.substr(0, slash), created));
  }
  if (::mkdir(path.c_str(), 0750) != 0) {
    if (errno == EEXIST) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("mkdir ", path, ": ", Errno(errno)));
  }
  if (created != nullptr) created->push_back(path);
  return absl::OkStatus();
}

// The block publish target: a regular file. *created says whether this call
// made it (an existing file is used as it is and never removed by us).
absl::Status EnsureTargetFile(const std::string& path, bool* created) {
  *created = false;
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) RETURN_IF_ERROR(MkdirAll(path.substr(0, slash)));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
  if (fd >= 0) {
    ::close(fd);
    *created = true;
    return absl::OkStatus();
  }
  if (errno != EEXIST)
    return absl::InternalError(absl::StrCat("create ", path, ": ", Errno(errno)));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    return absl::FailedPreconditionError(
        absl::StrCat("target_path ", path, " exists and is not a file"));
  }
  return absl::OkStatus();
}

// Removes a node path the plugin created, if it still looks like what it
// made: an empty dir, or an empty regular file (a block target once the
// device is unmounted from it). Anything else stays, with a log line.
void RemoveCreated(const std::string& volume_id, const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  int rc = -1;
  if (S_ISDIR(st.st_mode)) {
    rc = ::rmdir(path.c_str());
  } else if (S_ISREG(st.st_mode) && st.st_size == 0) {
    rc = ::unlink(path.c_str());
  } else {
    errno = ENOTEMPTY;
  }
  if (rc != 0) {
    LOG(WARNING) << "volume " << volume_id << ": not removing " << path
                 << " (it holds something now: " << Errno(errno) << ")";
  }
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

void Erase(google::protobuf::RepeatedPtrField<std::string>* list, const std::string& s) {
  list->erase(std::remove(list->begin(), list->end(), s), list->end());
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

absl::Status CheckMode(const VolumeCapability& cap, const VolumeRecord& rec,
                       absl::string_view field) {
  RETURN_IF_ERROR(ValidateCapability(cap, field));
  const bool block = rec.access_type() == VolumeRecord::BLOCK;
  if (cap.has_block() != block) {  // CSI: "exceeds capabilities" of the volume
    return absl::FailedPreconditionError(
        absl::StrCat(field, " asks for ", cap.has_block() ? "block" : "mount", " access; volume ",
                     rec.volume_id(), " is a ", block ? "block" : "mount", " volume"));
  }
  return absl::OkStatus();
}

// The identity (Mounter::DeviceNumber) of the volume's device now. Without
// an export (a recovery that failed, a device removed behind the plugin's
// back) the one recorded when it was staged: a mount that still shows that
// device at a path the record lists is this volume's own. "" if neither:
// then no mount anywhere can be this volume's. An export whose device cannot
// be identified is an error, never "not ours".
absl::StatusOr<std::string> DeviceOf(VolumeBackend* backend, Mounter* mounter,
                                     const VolumeRecord& rec) {
  ExportStatus es = backend->GetExportStatus(rec.volume_id());
  if (es.state == ExportState::kAbsent || es.device_path.empty()) return rec.staged_device();
  absl::StatusOr<std::string> dev = mounter->DeviceNumber(es.device_path);
  if (!dev.ok()) {
    return absl::Status(dev.status().code(),
                        absl::StrCat("volume ", rec.volume_id(), ": ", dev.status().message()));
  }
  return *dev;
}

}  // namespace

ExportSpec VolumeManager::SpecFor(const VolumeRecord& rec) const {
  ExportSpec spec;
  spec.volume_id = rec.volume_id();
  if (!rec.has_rbd()) spec.backing_file = store_->Abs(rec.backing_file());
  spec.size_bytes = rec.capacity_bytes();
  auto bs = rec.parameters().find("blockSize");
  spec.logical_block_size = bs != rec.parameters().end() && bs->second == "4096" ? 4096 : 512;
  spec.preferred_dev_id = rec.has_dev_id() ? rec.dev_id() : -1;
  return spec;
}

absl::StatusOr<ExportInfo> VolumeManager::EnsureExport(VolumeRecord* rec,
                                                       const RbdCredentials* creds) {
  ExportSpec spec = SpecFor(*rec);
  if (rec->has_rbd()) {
    // The engine's RBD target connects with the cluster's credentials: the
    // stage's, or after a restart the ones this node kept.
    RbdCredentials kept;
    if (creds == nullptr) {
      ASSIGN_OR_RETURN(kept, KeptCredentials(*rec));
      creds = &kept;
    }
    spec.backing_file.clear();
    spec.rbd = RbdExportSpec{rec->rbd().monitors(), creds->user, creds->key, rec->rbd().pool(),
                             rec->rbd().image()};
  }
  absl::StatusOr<ExportInfo> info = backend_->EnsureExport(spec);
  if (!info.ok()) {
    return absl::Status(info.status().code(), absl::StrCat("volume ", rec->volume_id(),
                                                           ": export: ", info.status().message()));
  }
  if (info->state == ExportState::kFailed) {
    return absl::InternalError(absl::StrCat("volume ", rec->volume_id(), ": export failed: ",
                                            backend_->GetExportStatus(rec->volume_id()).message));
  }
  if (!rec->has_dev_id() || rec->dev_id() != info->dev_id) {
    rec->set_dev_id(info->dev_id);
    RETURN_IF_ERROR(SaveVolume(*rec));
  }
  return info;
}

absl::StatusOr<ExportInfo> VolumeManager::RecoverExport(const std::string& volume_id) {
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(volume_id, "volume " + volume_id));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(volume_id));
  if (rec.staged_path().empty() && rec.published_paths_size() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", volume_id, " ", kNotStagedNow, ": nothing to recover"));
  }
  if (rec.has_rbd()) {
    // The stage lock is held by this node's dead earlier process: take it
    // over now (which blocklists that client), so the exclusive lock it
    // held passes to this process at its first write instead of after the
    // dead client's watch times out (~30 s of stalled writes).
    ASSIGN_OR_RETURN(RbdCredentials creds, KeptCredentials(rec));
    RETURN_IF_ERROR(TakeRbdLock(rec, AccessOf(rec.rbd(), creds)));
  }
  ASSIGN_OR_RETURN(ExportInfo info, EnsureExport(&rec));
  if (rec.frozen_for_copy()) {
    // The previous process died while it held the filesystem frozen for a
    // copy: thaw it now that the device serves again (the thaw writes).
    LOG(WARNING) << "volume " << volume_id << ": its filesystem at " << rec.staged_path()
                 << " was left frozen by an interrupted copy; thawing it";
    absl::Status s = mounter_->Thaw(rec.staged_path());
    if (!s.ok() && s.code() != absl::StatusCode::kFailedPrecondition) {
      LOG(ERROR) << "volume " << volume_id << ": " << s;
    } else {
      rec.set_frozen_for_copy(false);
      RETURN_IF_ERROR(SaveVolume(rec));
    }
  }
  return info;
}

absl::StatusOr<csi::v1::NodeStageVolumeResponse> VolumeManager::NodeStageVolume(
    const csi::v1::NodeStageVolumeRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  if (!req.has_volume_capability())
    return absl::InvalidArgumentError("volume_capability is required");
  RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  std::vector<std::string> flags;
  if (req.volume_capability().has_mount()) {
    const auto& mf = req.volume_capability().mount().mount_flags();
    flags.assign(mf.begin(), mf.end());
    RETURN_IF_ERROR(ValidateMountFlags(flags, "volume_capability.mount.mount_flags"));
  }
  RETURN_IF_ERROR(RefuseSymlinks(req.staging_target_path(), "staging_target_path"));
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(req.volume_id()));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  std::optional<VolumeRecord> found = FindVolume(req.volume_id());
  // RBD: the credentials come with the stage (node-stage secrets).
  std::optional<RbdCredentials> rbd_creds;
  if ((found && found->has_rbd()) || (!found && ParseRbdVolumeId(req.volume_id()))) {
    ASSIGN_OR_RETURN(RbdCredentials c, ParseRbdSecrets(req.secrets(), "secrets"));
    rbd_creds = std::move(c);
  }
  if (!found && rbd_creds) {
    // Created by the controller elsewhere: this node's own record of it.
    ASSIGN_OR_RETURN(VolumeRecord made, AttachOnlyRecord(req, *rbd_creds));
    found = std::move(made);
  }
  if (!found)
    return absl::NotFoundError(absl::StrCat("volume ", req.volume_id(), " does not exist"));
  VolumeRecord rec = *std::move(found);
  RETURN_IF_ERROR(CheckMode(req.volume_capability(), rec, "volume_capability"));
  const std::string& staging = req.staging_target_path();
  if (!rec.staged_path().empty() && rec.staged_path() != staging) {
    ASSIGN_OR_RETURN(bool still, mounter_->IsMountPoint(rec.staged_path()));
    if (still || rec.access_type() == VolumeRecord::BLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", rec.volume_id(), " is already staged at ", rec.staged_path()));
    }
  }
  const bool had_export = backend_->GetExportStatus(rec.volume_id()).state != ExportState::kAbsent;
  std::vector<std::string> made_dirs;
  std::string device_path;
  bool locked_now = false;
  if (rbd_creds) {
    // Multi-attach safety first: nothing is exported for a volume another
    // node holds. Then the credentials a restarted plugin will need.
    const bool was_staged = !rec.staged_path().empty();
    RETURN_IF_ERROR(CheckKeptUser(rec, *rbd_creds));
    RETURN_IF_ERROR(TakeRbdLock(rec, AccessOf(rec.rbd(), *rbd_creds)));
    locked_now = !was_staged;
    records::ClusterCredentials kept;
    kept.set_cluster_id(rec.rbd().cluster_id());
    kept.set_monitors(rec.rbd().monitors());
    kept.set_user(rbd_creds->user);
    kept.set_key(rbd_creds->key);
    if (absl::Status s = store_->PutCredentials(kept); !s.ok()) {
      if (locked_now) ReleaseRbdLockWith(rec, *rbd_creds);
      return absl::Status(s.code(),
                          absl::StrCat("volume ", rec.volume_id(),
                                       ": keeping the cluster's credentials: ", s.message()));
    }
    if (rec.attach_only() && !FindVolume(rec.volume_id())) {
      if (absl::Status s = SaveVolume(rec); !s.ok()) {
        if (locked_now) ReleaseRbdLockWith(rec, *rbd_creds);
        return s;
      }
    }
  }
  // What a failed stage did is undone, so a retry (or a give-up) leaves no
  // device and no dir behind.
  auto undo = [&](absl::Status failed) -> absl::Status {
    std::vector<std::string> undone;
    if (locked_now) {
      ReleaseRbdLockWith(rec, *rbd_creds);
      undone.push_back("released its RBD lock");
    }
    if (rec.attach_only() && rec.staged_path().empty()) {
      ForgetVolume(rec.volume_id()).IgnoreError();
      DropCredentialsIfUnused(rec.rbd().cluster_id());
    }
    if (!had_export && !device_path.empty()) {
      if (absl::Status s = backend_->RemoveExport(rec.volume_id()); s.ok()) {
        undone.push_back("removed its export " + device_path);
      } else {
        LOG(ERROR) << "volume " << rec.volume_id() << ": undo stage: " << s;
      }
    }
    for (auto it = made_dirs.rbegin(); it != made_dirs.rend(); ++it) {
      if (::rmdir(it->c_str()) == 0) undone.push_back("removed dir " + *it);
    }
    LOG(WARNING) << "volume " << rec.volume_id() << ": stage at " << staging
                 << " failed: " << failed
                 << (undone.empty() ? "" : "; undid: " + absl::StrJoin(undone, ", "));
    return failed;
  };
  absl::StatusOr<ExportInfo> exported = EnsureExport(&rec, rbd_creds ? &*rbd_creds : nullptr);
  if (!exported.ok()) {
    if (!had_export) device_path = backend_->GetExportStatus(rec.volume_id()).device_path;
    return undo(exported.status());
  }
  const ExportInfo dev = *exported;
  device_path = dev.device_path;
  // Recorded with the staging: teardown's way to know this volume's mounts
  // should the export go. Best effort: without it teardown treats mounts as
  // it did before the number was recorded (foreign once the export is gone).
  const absl::StatusOr<std::string> device_number = mounter_->DeviceNumber(dev.device_path);
  if (!device_number.ok()) {
    LOG(WARNING) << "volume " << rec.volume_id() << ": cannot identify " << dev.device_path << " ("
                 << device_number.status()
                 << "); teardown will not recognise its mounts if the export is lost";
  }
  absl::Status done = [&]() -> absl::Status {
    RETURN_IF_ERROR(MkdirAll(staging, &made_dirs));
    if (rec.access_type() != VolumeRecord::MOUNT) return absl::OkStatus();
    std::string fs_type = req.volume_capability().mount().fs_type();
    if (fs_type.empty()) fs_type = rec.fs_type();
    if (fs_type.empty()) fs_type = "ext4";
    ASSIGN_OR_RETURN(std::optional<MountInfo> mounted, mounter_->GetMountInfo(staging));
    if (mounted) {
      RETURN_IF_ERROR(device_number.status());
      if (mounted->device != *device_number) {
        return absl::AlreadyExistsError(
            absl::StrCat("staging_target_path ", staging, " already has ", mounted->source,
                         " mounted, not volume ", rec.volume_id(), " (", dev.device_path, ")"));
      }
      if (mounted->fstype != fs_type) {
        return absl::AlreadyExistsError(absl::StrCat("volume ", rec.volume_id(), " is staged with ",
                                                     mounted->fstype, ", not ", fs_type));
      }
    } else {
      ASSIGN_OR_RETURN(std::string found, mounter_->ProbeFilesystem(dev.device_path));
      if (found.empty()) {
        if (rec.filesystem_created()) {
          // Never mkfs over a volume we formatted before: that would be data loss.
          return absl::DataLossError(
              absl::StrCat("volume ", rec.volume_id(), ": its record says a ", rec.fs_type(),
                           " filesystem was created, but none is found on ", dev.device_path,
                           "; refusing to format it again"));
        }
        LOG(INFO) << "volume " << rec.volume_id() << ": mkfs." << fs_type << " " << dev.device_path;
        RETURN_IF_ERROR(mounter_->MakeFilesystem(dev.device_path, fs_type));
        rec.set_filesystem_created(true);
        rec.set_fs_type(fs_type);
        RETURN_IF_ERROR(SaveVolume(rec));
      } else if (found != fs_type) {
        return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(), " holds a ",
                                                          found, " filesystem, ", fs_type,
                                                          " was requested"));
      } else if (!rec.filesystem_created()) {
        rec.set_filesystem_created(true);  // came with a snapshot or clone
        RETURN_IF_ERROR(SaveVolume(rec));
      }
      MountOptions opts;
      opts.flags = flags;
      // A volume restored from a snapshot or cloned carries its source's XFS
      // UUID, and XFS refuses (EINVAL) to mount a second filesystem with a
      // UUID already mounted on the node.
      if (fs_type == "xfs") opts.flags.push_back("nouuid");
      RETURN_IF_ERROR(mounter_->Mount(dev.device_path, staging, fs_type, opts));
    }
    rec.clear_mount_flags();
    for (const std::string& f : flags) rec.add_mount_flags(f);
    return absl::OkStatus();
  }();
  if (done.ok()) {
    rec.set_staged_path(staging);
    if (device_number.ok()) {
      rec.set_staged_device(*device_number);
    } else {
      rec.clear_staged_device();
    }
    if (!made_dirs.empty() && made_dirs.back() == staging &&
        !Contains(rec.created_paths(), staging)) {
      rec.add_created_paths(staging);
    }
    done = SaveVolume(rec);
    if (!done.ok() && rec.access_type() == VolumeRecord::MOUNT) {
      mounter_->Unmount(staging).IgnoreError();
    }
  }
  if (!done.ok()) return undo(done);
  LOG(INFO) << "volume " << rec.volume_id() << " staged at " << staging << " (" << dev.device_path
            << ")";
  return csi::v1::NodeStageVolumeResponse();
}

absl::StatusOr<csi::v1::NodeUnstageVolumeResponse> VolumeManager::NodeUnstageVolume(
    const csi::v1::NodeUnstageVolumeRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& staging = req.staging_target_path();
  if (rec.staged_path().empty()) {
    // Not staged: whatever is at staging belongs to someone else.
    VLOG(1) << "volume " << rec.volume_id() << " is not staged; nothing to unstage at " << staging;
    return csi::v1::NodeUnstageVolumeResponse();
  }
  if (rec.staged_path() != staging) {
    return absl::InvalidArgumentError(absl::StrCat("volume ", rec.volume_id(), " is staged at ",
                                                   rec.staged_path(), ", not ", staging));
  }
  // Until recovery re-attached the device after a restart, its mounts
  // cannot be told from anyone else's: the CO retries.
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(rec.volume_id()));
  ASSIGN_OR_RETURN(const std::string dev, DeviceOf(backend_, mounter_, rec));
  // Publications whose mount is gone (e.g. after a reboot) no longer count.
  std::vector<std::string> live;
  for (const std::string& p : rec.published_paths()) {
    ASSIGN_OR_RETURN(std::optional<MountInfo> m, mounter_->GetMountInfo(p));
    if (m && !dev.empty() && m->device == dev) live.push_back(p);
  }
  if (!live.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(), " is still published at ", absl::StrJoin(live, ", ")));
  }
  if (!dev.empty()) {
    for (;;) {  // only this volume's own mounts, top down
      ASSIGN_OR_RETURN(std::optional<MountInfo> m, mounter_->GetMountInfo(staging));
      if (!m || m->device != dev) break;
      RETURN_IF_ERROR(mounter_->Unmount(staging));
    }
    // Removing the device under a mount would leave that mount reading
    // whichever volume gets the device number next.
    ASSIGN_OR_RETURN(std::vector<MountInfo> left, MountsWithDevice(*mounter_, dev));
    if (!left.empty()) {
      std::vector<std::string> where;
      for (const MountInfo& m : left) where.push_back(m.target);
      return absl::FailedPreconditionError(absl::StrCat(
          "volume ", rec.volume_id(), ": its device is still mounted at ",
          absl::StrJoin(where, ", "), " (not by this plugin's records); unmount it first"));
    }
  }
  RETURN_IF_ERROR(backend_->RemoveExport(rec.volume_id()));
  for (const std::string& p : rec.created_paths()) {
    if (p == staging) RemoveCreated(rec.volume_id(), p);
  }
  if (rec.has_rbd()) ReleaseRbdLock(rec);
  rec.clear_staged_path();
  rec.clear_staged_device();
  rec.clear_published_paths();
  rec.clear_created_paths();
  if (rec.attach_only()) {
    RETURN_IF_ERROR(ForgetVolume(rec.volume_id()));
  } else {
    RETURN_IF_ERROR(SaveVolume(rec));
  }
  if (rec.has_rbd()) DropCredentialsIfUnused(rec.rbd().cluster_id());
  LOG(INFO) << "volume " << rec.volume_id() << " unstaged from " << staging;
  return csi::v1::NodeUnstageVolumeResponse();
}

absl::StatusOr<csi::v1::NodePublishVolumeResponse> VolumeManager::NodePublishVolume(
    const csi::v1::NodePublishVolumeRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  // An empty staging_target_path is checked after the lookup below: the spec
  // lists it as FAILED_PRECONDITION ("Staging target path not set"), not as
  // a malformed request.
  if (!req.staging_target_path().empty()) {
    RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  }
  RETURN_IF_ERROR(ValidatePath(req.target_path(), "target_path"));
  if (!req.has_volume_capability())
    return absl::InvalidArgumentError("volume_capability is required");
  RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  MountOptions opts;
  if (req.volume_capability().has_mount()) {
    const auto& mf = req.volume_capability().mount().mount_flags();
    opts.flags.assign(mf.begin(), mf.end());
    RETURN_IF_ERROR(ValidateMountFlags(opts.flags, "volume_capability.mount.mount_flags"));
  }
  RETURN_IF_ERROR(RefuseSymlinks(req.target_path(), "target_path"));
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(req.volume_id()));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  RETURN_IF_ERROR(CheckMode(req.volume_capability(), rec, "volume_capability"));
  if (req.staging_target_path().empty()) {
    // Every volume of this plugin is staged first (STAGE_UNSTAGE_VOLUME).
    return absl::FailedPreconditionError(
        absl::StrCat("staging_target_path is not set: volume ", rec.volume_id(),
                     " must be staged with NodeStageVolume and published from its staging path"));
  }
  if (rec.staged_path() != req.staging_target_path()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(), " is not staged at ", req.staging_target_path(),
        rec.staged_path().empty() ? " (not staged)" : " (staged at " + rec.staged_path() + ")"));
  }
  const std::string& target = req.target_path();
  const bool readonly = req.readonly() || req.volume_capability().access_mode().mode() ==
                                              VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY;
  opts.bind = true;
  opts.readonly = readonly;
  std::string source;
  std::string device_path;
  const bool block = rec.access_type() == VolumeRecord::BLOCK;
  if (block) {
    ExportStatus st = backend_->GetExportStatus(rec.volume_id());
    if (st.state == ExportState::kAbsent || st.device_path.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", rec.volume_id(), " has no device; stage it again"));
    }
    source = st.device_path;
    device_path = st.device_path;
  } else {
    ASSIGN_OR_RETURN(bool staged, mounter_->IsMountPoint(req.staging_target_path()));
    if (!staged) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", rec.volume_id(), ": staging path ", req.staging_target_path(),
                       " is not mounted; stage it again"));
    }
    source = req.staging_target_path();
    device_path = backend_->GetExportStatus(rec.volume_id()).device_path;
  }
  if (device_path.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", rec.volume_id(), " has no device; stage it again"));
  }
  ASSIGN_OR_RETURN(std::string ours, mounter_->DeviceNumber(device_path));
  const bool recorded = Contains(rec.published_paths(), target);
  ASSIGN_OR_RETURN(std::optional<MountInfo> mounted, mounter_->GetMountInfo(target));
  if (mounted) {
    if (!recorded || mounted->device != ours) {
      return absl::AlreadyExistsError(
          absl::StrCat("target_path ", target, " is already a mount point of something else"));
    }
    if (mounted->readonly != readonly) {
      return absl::AlreadyExistsError(
          absl::StrCat("volume ", rec.volume_id(), " is published at ", target,
                       mounted->readonly ? " read-only" : " read-write", "; asked for the other"));
    }
    return csi::v1::NodePublishVolumeResponse();
  }
  bool created = false;
  if (block) {
    RETURN_IF_ERROR(EnsureTargetFile(target, &created));
  } else {
    std::vector<std::string> made;
    RETURN_IF_ERROR(MkdirAll(target, &made));
    created = !made.empty() && made.back() == target;
  }
  // The record lists the path before the mount exists, so a crash between
  // the two leaves a path teardown knows about, never an unknown mount.
  const VolumeRecord before = rec;
  if (!recorded) rec.add_published_paths(target);
  if (created && !Contains(rec.created_paths(), target)) rec.add_created_paths(target);
  absl::Status s = SaveVolume(rec);
  if (s.ok()) {
    s = mounter_->Mount(source, target, "", opts);
    if (!s.ok() && SaveVolume(before).ok() && created) RemoveCreated(rec.volume_id(), target);
  } else if (created) {
    RemoveCreated(rec.volume_id(), target);
  }
  RETURN_IF_ERROR(s);
  LOG(INFO) << "volume " << rec.volume_id() << " published at " << target
            << (readonly ? " (read-only)" : "");
  return csi::v1::NodePublishVolumeResponse();
}

absl::StatusOr<csi::v1::NodeUnpublishVolumeResponse> VolumeManager::NodeUnpublishVolume(
    const csi::v1::NodeUnpublishVolumeRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.target_path(), "target_path"));
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& target = req.target_path();
  if (!Contains(rec.published_paths(), target)) {
    // Never published there (or already unpublished): nothing of ours to undo.
    VLOG(1) << "volume " << rec.volume_id() << " is not published at " << target;
    return csi::v1::NodeUnpublishVolumeResponse();
  }
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(rec.volume_id()));
  ASSIGN_OR_RETURN(const std::string dev, DeviceOf(backend_, mounter_, rec));
  bool foreign = false;
  for (;;) {  // only this volume's own mounts, top down
    ASSIGN_OR_RETURN(std::optional<MountInfo> m, mounter_->GetMountInfo(target));
    if (!m) break;
    if (dev.empty() || m->device != dev) {
      LOG(WARNING) << "volume " << rec.volume_id() << ": " << target << " has a mount of "
                   << m->source << " that is not this volume's; leaving it alone";
      foreign = true;
      break;
    }
    RETURN_IF_ERROR(mounter_->Unmount(target));
  }
  if (foreign && !dev.empty()) {
    ASSIGN_OR_RETURN(std::vector<MountInfo> mine, MountsWithDevice(*mounter_, dev));
    for (const MountInfo& m : mine) {
      if (m.target == target) {
        return absl::FailedPreconditionError(
            absl::StrCat("volume ", rec.volume_id(), ": its mount at ", target,
                         " is covered by another mount; unmount that first"));
      }
    }
  }
  if (!foreign && Contains(rec.created_paths(), target)) RemoveCreated(rec.volume_id(), target);
  Erase(rec.mutable_published_paths(), target);
  Erase(rec.mutable_created_paths(), target);
  RETURN_IF_ERROR(SaveVolume(rec));
  LOG(INFO) << "volume " << rec.volume_id() << " unpublished from " << target;
  return csi::v1::NodeUnpublishVolumeResponse();
}

absl::StatusOr<csi::v1::NodeGetVolumeStatsResponse> VolumeManager::NodeGetVolumeStats(
    const csi::v1::NodeGetVolumeStatsRequest& req, Driver driver) {
  // CSI: an unknown volume is NOT_FOUND whatever its path says; a path is
  // judged only for a volume that exists.
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  if (req.volume_path().empty()) return absl::InvalidArgumentError("volume_path is required");
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  // Any path the record does not list (relative ones included: the record's
  // are absolute) is "the volume does not exist on the specified path".
  const std::string& path = req.volume_path();
  const bool known = path == rec.staged_path() ||
                     std::find(rec.published_paths().begin(), rec.published_paths().end(), path) !=
                         rec.published_paths().end();
  if (!known || !Exists(path)) {
    return absl::NotFoundError(absl::StrCat("volume ", rec.volume_id(),
                                            " is not staged or published at ", EscapeForLog(path)));
  }
  csi::v1::NodeGetVolumeStatsResponse resp;
  if (rec.access_type() == VolumeRecord::BLOCK) {
    auto* u = resp.add_usage();
    u->set_unit(csi::v1::VolumeUsage::BYTES);
    u->set_total(rec.capacity_bytes());
  } else {
    ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(path));
    if (!mounted) {
      // statfs would describe whatever filesystem holds the empty directory.
      auto* cond = resp.mutable_volume_condition();
      cond->set_abnormal(true);
      cond->set_message(absl::StrCat(path,
                                     " is not mounted (node rebooted or mount lost); "
                                     "the volume must be staged and published again"));
      return resp;
    }
    ASSIGN_OR_RETURN(FsStats st, mounter_->Statfs(path));
    auto* b = resp.add_usage();
    b->set_unit(csi::v1::VolumeUsage::BYTES);
    b->set_total(st.total_bytes);
    b->set_available(st.available_bytes);
    b->set_used(st.used_bytes);
    auto* i = resp.add_usage();
    i->set_unit(csi::v1::VolumeUsage::INODES);
    i->set_total(st.total_inodes);
    i->set_available(st.free_inodes);
    i->set_used(st.used_inodes);
  }
  auto* cond = resp.mutable_volume_condition();
  if (VolumeGate* gate = gate_.load()) {
    if (absl::Status s = gate->CheckServing(rec.volume_id()); !s.ok()) {
      cond->set_abnormal(true);
      cond->set_message(std::string(s.message()));
      return resp;
    }
  }
  ExportStatus es = backend_->GetExportStatus(rec.volume_id());
  switch (es.state) {
    case ExportState::kLive:
      cond->set_abnormal(false);
      cond->set_message("export live");
      break;
    case ExportState::kDegraded:
      cond->set_abnormal(true);
      cond->set_message(absl::StrCat("export degraded: ", es.message));
      break;
    case ExportState::kFailed:
      cond->set_abnormal(true);
      cond->set_message(absl::StrCat("export failed: ", es.message));
      break;
    case ExportState::kRecovering:
      cond->set_abnormal(true);
      cond->set_message("export is being recovered after a plugin restart");
      break;
    case ExportState::kAbsent:
      cond->set_abnormal(true);
      cond->set_message("volume is staged but has no export (device gone); stage it again");
      break;
  }
  return resp;
}

absl::StatusOr<csi::v1::NodeExpandVolumeResponse> VolumeManager::NodeExpandVolume(
    const csi::v1::NodeExpandVolumeRequest& req, Driver driver) {
  // The spec's order: missing fields, then an unknown volume (NOT_FOUND,
  // whatever its path), then what the request says about that volume.
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  if (req.volume_path().empty()) return absl::InvalidArgumentError("volume_path is required");
  const int64_t required = req.capacity_range().required_bytes();
  const int64_t limit = req.capacity_range().limit_bytes();
  if (required < 0 || limit < 0) {
    return absl::InvalidArgumentError("capacity_range must not be negative");
  }
  if (limit != 0 && required > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_range.required_bytes (", required, ") > limit_bytes (", limit, ")"));
  }
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  RETURN_IF_ERROR(ValidatePath(req.volume_path(), "volume_path"));
  if (req.has_volume_capability()) {
    RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
    if (req.volume_capability().has_block() != (rec.access_type() == VolumeRecord::BLOCK)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "volume_capability asks for ", req.volume_capability().has_block() ? "block" : "mount",
          " access; volume ", rec.volume_id(), " is a ",
          rec.access_type() == VolumeRecord::BLOCK ? "block" : "mount", " volume"));
    }
  }
  const std::string& path = req.volume_path();
  if (!Exists(path))
    return absl::NotFoundError(absl::StrCat("volume_path ", path, " does not exist"));
  if (rec.staged_path().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", rec.volume_id(), " is not staged"));
  }
  if (rec.has_rbd() && required > rec.capacity_bytes()) {
    // The controller (elsewhere) grew the image: this node's record learns
    // the size from the cluster.
    ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
    ASSIGN_OR_RETURN(RbdCredentials creds, KeptCredentials(rec));
    absl::StatusOr<RbdImageInfo> info =
        admin->Stat(AccessOf(rec.rbd(), creds), rec.rbd().pool(), rec.rbd().image());
    if (!info.ok()) {
      return absl::Status(
          info.status().code(),
          absl::StrCat("volume ", rec.volume_id(), ": RBD image: ", info.status().message()));
    }
    if (info->size_bytes > rec.capacity_bytes()) {
      rec.set_capacity_bytes(info->size_bytes);
      RETURN_IF_ERROR(SaveVolume(rec));
    }
  }
  const int64_t size = rec.capacity_bytes();
  if (required > size) {
    return absl::OutOfRangeError(
        absl::StrCat("volume ", rec.volume_id(), " is ", size,
                     " bytes; expand it with ControllerExpandVolume first"));
  }
  if (limit != 0 && size > limit) {
    return absl::OutOfRangeError(absl::StrCat("volume ", rec.volume_id(), " is ", size,
                                              " bytes, above capacity_range.limit_bytes ", limit));
  }
  ExportStatus es = backend_->GetExportStatus(rec.volume_id());
  if (es.state == ExportState::kAbsent) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", rec.volume_id(), " has no export; stage it again"));
  }
  RETURN_IF_ERROR(backend_->ResizeExport(rec.volume_id(), size));
  if (rec.access_type() == VolumeRecord::MOUNT) {
    RETURN_IF_ERROR(mounter_->ResizeFilesystem(es.device_path, rec.staged_path(), rec.fs_type()));
  }
  LOG(INFO) << "volume " << rec.volume_id() << " expanded on the node to " << size << " bytes";
  csi::v1::NodeExpandVolumeResponse resp;
  resp.set_capacity_bytes(size);
  return resp;
}

csi::v1::NodeGetInfoResponse VolumeManager::NodeGetInfo(Driver driver) {
  csi::v1::NodeGetInfoResponse resp;
  resp.set_node_id(options_.node_id);
  const int limit =
      driver == Driver::kRbd ? options_.rbd_max_volumes_override : options_.max_volumes_override;
  resp.set_max_volumes_per_node(limit > 0 ? limit : backend_->MaxVolumes());
  *resp.mutable_accessible_topology() = NodeTopology();
  return resp;
}

std::vector<VolumeStatus> VolumeManager::Status() {
  std::vector<VolumeRecord> all;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) all.push_back(rec);
  }
  std::vector<VolumeStatus> out;
  for (const VolumeRecord& rec : all) {
    VolumeStatus s;
    s.volume_id = rec.volume_id();
    s.name = rec.name();
    s.capacity_bytes = rec.capacity_bytes();
    s.staged_path = rec.staged_path();
    s.published = rec.published_paths_size();
    s.export_status = backend_->GetExportStatus(rec.volume_id());
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace ublk_csi
