// VolumeManager: the Node half (stage, publish, stats, expand, info).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

absl::Status MkdirAll(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) RETURN_IF_ERROR(MkdirAll(path.substr(0, slash)));
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkdir ", path, ": ", Errno(errno)));
  }
  return absl::OkStatus();
}

absl::Status TouchFile(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) RETURN_IF_ERROR(MkdirAll(path.substr(0, slash)));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return absl::InternalError(absl::StrCat("create ", path, ": ", Errno(errno)));
  ::close(fd);
  return absl::OkStatus();
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

absl::Status CheckMode(const VolumeCapability& cap, const VolumeRecord& rec,
                       absl::string_view field) {
  RETURN_IF_ERROR(ValidateCapability(cap, field));
  const bool block = rec.access_type() == VolumeRecord::BLOCK;
  if (cap.has_block() != block) {
    return absl::InvalidArgumentError(absl::StrCat(field, " asks for ",
                                                   cap.has_block() ? "block" : "mount",
                                                   " access; volume ", rec.volume_id(), " is a ",
                                                   block ? "block" : "mount", " volume"));
  }
  return absl::OkStatus();
}

}  // namespace

ExportSpec VolumeManager::SpecFor(const VolumeRecord& rec) const {
  ExportSpec spec;
  spec.volume_id = rec.volume_id();
  spec.backing_file = store_->Abs(rec.backing_file());
  spec.size_bytes = rec.capacity_bytes();
  auto bs = rec.parameters().find("blockSize");
  spec.logical_block_size = bs != rec.parameters().end() && bs->second == "4096" ? 4096 : 512;
  spec.preferred_dev_id = rec.has_dev_id() ? rec.dev_id() : -1;
  return spec;
}

absl::StatusOr<ExportInfo> VolumeManager::EnsureExport(VolumeRecord* rec) {
  absl::StatusOr<ExportInfo> info = backend_->EnsureExport(SpecFor(*rec));
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
    const csi::v1::NodeStageVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  if (!req.has_volume_capability()) return absl::InvalidArgumentError("volume_capability is required");
  RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(req.volume_id()));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  RETURN_IF_ERROR(CheckMode(req.volume_capability(), rec, "volume_capability"));
  const std::string& staging = req.staging_target_path();
  if (!rec.staged_path().empty() && rec.staged_path() != staging) {
    ASSIGN_OR_RETURN(bool still, mounter_->IsMountPoint(rec.staged_path()));
    if (still || rec.access_type() == VolumeRecord::BLOCK) {
      return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(),
                                                        " is already staged at ", rec.staged_path()));
    }
  }
  ASSIGN_OR_RETURN(ExportInfo dev, EnsureExport(&rec));

  if (rec.access_type() == VolumeRecord::MOUNT) {
    const auto& m = req.volume_capability().mount();
    std::string fs_type = m.fs_type().empty() ? rec.fs_type() : m.fs_type();
    if (fs_type.empty()) fs_type = "ext4";
    std::vector<std::string> flags(m.mount_flags().begin(), m.mount_flags().end());
    RETURN_IF_ERROR(MkdirAll(staging));
    ASSIGN_OR_RETURN(std::optional<MountInfo> mounted, mounter_->GetMountInfo(staging));
    if (mounted) {
      if (mounted->source != dev.device_path) {
        return absl::AlreadyExistsError(absl::StrCat("staging_target_path ", staging,
                                                     " already has ", mounted->source,
                                                     " mounted, not volume ", rec.volume_id(),
                                                     " (", dev.device_path, ")"));
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
          return absl::DataLossError(absl::StrCat(
              "volume ", rec.volume_id(), ": its record says a ", rec.fs_type(),
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
  } else {
    RETURN_IF_ERROR(MkdirAll(staging));
  }
  rec.set_staged_path(staging);
  RETURN_IF_ERROR(SaveVolume(rec));
  LOG(INFO) << "volume " << rec.volume_id() << " staged at " << staging << " (" << dev.device_path
            << ")";
  return csi::v1::NodeStageVolumeResponse();
}

absl::StatusOr<csi::v1::NodeUnstageVolumeResponse> VolumeManager::NodeUnstageVolume(
    const csi::v1::NodeUnstageVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& staging = req.staging_target_path();
  if (!rec.staged_path().empty() && rec.staged_path() != staging) {
    return absl::InvalidArgumentError(absl::StrCat("volume ", rec.volume_id(), " is staged at ",
                                                   rec.staged_path(), ", not ", staging));
  }
  // Publications whose mount is gone (e.g. after a reboot) no longer count.
  std::vector<std::string> live;
  for (const std::string& p : rec.published_paths()) {
    ASSIGN_OR_RETURN(bool m, mounter_->IsMountPoint(p));
    if (m) live.push_back(p);
  }
  if (!live.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(),
                                                      " is still published at ",
                                                      absl::StrJoin(live, ", ")));
  }
  for (;;) {  // a stacked mount would hide the device below it
    ASSIGN_OR_RETURN(bool m, mounter_->IsMountPoint(staging));
    if (!m) break;
    RETURN_IF_ERROR(mounter_->Unmount(staging));
  }
  RETURN_IF_ERROR(backend_->RemoveExport(rec.volume_id()));
  if (!rec.staged_path().empty() || rec.published_paths_size() > 0) {
    rec.clear_staged_path();
    rec.clear_published_paths();
    RETURN_IF_ERROR(SaveVolume(rec));
    LOG(INFO) << "volume " << rec.volume_id() << " unstaged from " << staging;
  }
  return csi::v1::NodeUnstageVolumeResponse();
}

absl::StatusOr<csi::v1::NodePublishVolumeResponse> VolumeManager::NodePublishVolume(
    const csi::v1::NodePublishVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.staging_target_path(), "staging_target_path"));
  RETURN_IF_ERROR(ValidatePath(req.target_path(), "target_path"));
  if (!req.has_volume_capability()) return absl::InvalidArgumentError("volume_capability is required");
  RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  if (VolumeGate* gate = gate_.load()) RETURN_IF_ERROR(gate->CheckServing(req.volume_id()));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  RETURN_IF_ERROR(CheckMode(req.volume_capability(), rec, "volume_capability"));
  if (rec.staged_path() != req.staging_target_path()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(), " is not staged at ", req.staging_target_path(),
        rec.staged_path().empty() ? " (not staged)" : " (staged at " + rec.staged_path() + ")"));
  }
  const std::string& target = req.target_path();
  const bool readonly = req.readonly() || req.volume_capability().access_mode().mode() ==
                                              VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY;
  MountOptions opts;
  opts.bind = true;
  opts.readonly = readonly;
  std::string source;
  if (rec.access_type() == VolumeRecord::BLOCK) {
    ExportStatus st = backend_->GetExportStatus(rec.volume_id());
    if (st.state == ExportState::kAbsent || st.device_path.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(),
                                                        " has no device; stage it again"));
    }
    source = st.device_path;
    RETURN_IF_ERROR(TouchFile(target));
  } else {
    ASSIGN_OR_RETURN(bool staged, mounter_->IsMountPoint(req.staging_target_path()));
    if (!staged) {
      return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(), ": staging path ",
                                                        req.staging_target_path(),
                                                        " is not mounted; stage it again"));
    }
    source = req.staging_target_path();
    for (const std::string& f : req.volume_capability().mount().mount_flags()) opts.flags.push_back(f);
    RETURN_IF_ERROR(MkdirAll(target));
  }
  ASSIGN_OR_RETURN(std::optional<MountInfo> mounted, mounter_->GetMountInfo(target));
  const bool recorded = std::find(rec.published_paths().begin(), rec.published_paths().end(),
                                  target) != rec.published_paths().end();
  if (mounted) {
    if (!recorded) {
      return absl::AlreadyExistsError(absl::StrCat("target_path ", target,
                                                   " is already a mount point of something else"));
    }
    if (mounted->readonly != readonly) {
      return absl::AlreadyExistsError(absl::StrCat("volume ", rec.volume_id(), " is published at ",
                                                   target, mounted->readonly ? " read-only" : " read-write",
                                                   "; asked for the other"));
    }
    return csi::v1::NodePublishVolumeResponse();
  }
  RETURN_IF_ERROR(mounter_->Mount(source, target, "", opts));
  if (!recorded) {
    rec.add_published_paths(target);
    absl::Status saved = SaveVolume(rec);
    if (!saved.ok()) {
      mounter_->Unmount(target).IgnoreError();
      return saved;
    }
  }
  LOG(INFO) << "volume " << rec.volume_id() << " published at " << target
            << (readonly ? " (read-only)" : "");
  return csi::v1::NodePublishVolumeResponse();
}

absl::StatusOr<csi::v1::NodeUnpublishVolumeResponse> VolumeManager::NodeUnpublishVolume(
    const csi::v1::NodeUnpublishVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.target_path(), "target_path"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& target = req.target_path();
  for (;;) {
    ASSIGN_OR_RETURN(bool m, mounter_->IsMountPoint(target));
    if (!m) break;
    RETURN_IF_ERROR(mounter_->Unmount(target));
  }
  // The SP removes what it created at target_path.
  if (::rmdir(target.c_str()) != 0 && errno == ENOTDIR) ::unlink(target.c_str());
  auto* paths = rec.mutable_published_paths();
  auto it = std::find(paths->begin(), paths->end(), target);
  if (it != paths->end()) {
    paths->erase(it);
    RETURN_IF_ERROR(SaveVolume(rec));
    LOG(INFO) << "volume " << rec.volume_id() << " unpublished from " << target;
  }
  return csi::v1::NodeUnpublishVolumeResponse();
}

absl::StatusOr<csi::v1::NodeGetVolumeStatsResponse> VolumeManager::NodeGetVolumeStats(
    const csi::v1::NodeGetVolumeStatsRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.volume_path(), "volume_path"));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& path = req.volume_path();
  const bool known = path == rec.staged_path() ||
                     std::find(rec.published_paths().begin(), rec.published_paths().end(), path) !=
                         rec.published_paths().end();
  if (!known || !Exists(path)) {
    return absl::NotFoundError(absl::StrCat("volume ", rec.volume_id(), " is not staged or published at ", path));
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
      cond->set_message(absl::StrCat(path, " is not mounted (node rebooted or mount lost); "
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
    const csi::v1::NodeExpandVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  RETURN_IF_ERROR(ValidatePath(req.volume_path(), "volume_path"));
  if (req.has_volume_capability()) {
    RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  }
  if (req.capacity_range().required_bytes() < 0 || req.capacity_range().limit_bytes() < 0) {
    return absl::InvalidArgumentError("capacity_range must not be negative");
  }
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  const std::string& path = req.volume_path();
  if (!Exists(path)) return absl::NotFoundError(absl::StrCat("volume_path ", path, " does not exist"));
  if (rec.staged_path().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(), " is not staged"));
  }
  const int64_t size = rec.capacity_bytes();
  if (req.capacity_range().required_bytes() > size) {
    return absl::OutOfRangeError(absl::StrCat("volume ", rec.volume_id(), " is ", size,
                                              " bytes; expand it with ControllerExpandVolume first"));
  }
  ExportStatus es = backend_->GetExportStatus(rec.volume_id());
  if (es.state == ExportState::kAbsent) {
    return absl::FailedPreconditionError(absl::StrCat("volume ", rec.volume_id(),
                                                      " has no export; stage it again"));
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

csi::v1::NodeGetInfoResponse VolumeManager::NodeGetInfo() {
  csi::v1::NodeGetInfoResponse resp;
  resp.set_node_id(options_.node_id);
  resp.set_max_volumes_per_node(options_.max_volumes_override > 0 ? options_.max_volumes_override
                                                                  : backend_->MaxVolumes());
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
