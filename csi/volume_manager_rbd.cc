// VolumeManager: Ceph RBD volumes (StorageClass parameter backend: rbd).
//
// Controller: the image name derives from the CSI name (ImageNameFor) and
// the volume ID names cluster, pool and image (RbdVolumeId), so a repeated
// CreateVolume finds the image even if this process lost its record (a
// crash between creating the image and writing the record), and a node
// can stage the volume from ID + volume_context alone. A snapshot ID names
// the RBD snapshot too (RbdSnapshotId). So the controller's records are a
// cache, not the truth: one that lost them (a replaced pod, an emptyDir
// data dir) restores and clones from the IDs and the StorageClass's
// monitors, and snapshots, expands and deletes through the monitors
// --rbd-clusters-file gives (ControllerRecord). Records of RBD volumes say
// where the image is, never with which key.
//
// Node: NodeStage takes the node's advisory lock on the image (multi-attach
// safety, see RbdAdmin), keeps the cluster's credentials in
// <data-dir>/credentials/<clusterID>.cred (0600, apart from the records) and
// exports the image through the engine. Why a credentials file: after a
// plugin restart the volume must come back without a new NodeStage (kubelet
// does not repeat it for a volume it thinks is staged), and NodeStage is the
// only call that carries the secret. The alternatives were worse: a Secret
// mounted into the DaemonSet by the chart must name every cluster's secret
// up front and duplicates what the StorageClass already says, and asking
// the API server needs RBAC to read Secrets on every node. The file holds
// only what this node staged, lives as long as one of the cluster's volumes
// is staged here, and is readable by root only (the data dir is 0700).
#include <algorithm>
#include <ctime>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "csi/log_escape.h"
#include "csi/rbd_params.h"
#include "csi/volume_manager.h"
#include "glog/logging.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

using records::SnapshotRecord;
using records::VolumeRecord;

namespace {

records::RbdImage ImageOf(const RbdLocation& loc, const std::string& image) {
  records::RbdImage out;
  out.set_cluster_id(loc.cluster_id);
  out.set_monitors(loc.monitors);
  out.set_pool(loc.pool);
  out.set_data_pool(loc.data_pool);
  out.set_image(image);
  out.set_features(loc.features);
  return out;
}

std::string NewRbdSnapshotId() {
  static ublk::Mutex* mu = new ublk::Mutex;
  static absl::BitGen* gen = new absl::BitGen;
  ublk::MutexLock lock(&*mu);
  return absl::StrFormat("snap-%016x", absl::Uniform<uint64_t>(*gen));
}

absl::Status Context(absl::Status s, absl::string_view what) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

}  // namespace

RbdAccess AccessOf(const records::RbdImage& img, const RbdCredentials& creds) {
  return RbdAccess{img.monitors(), creds};
}

absl::StatusOr<RbdAdmin*> VolumeManager::Rbd() const {
  if (options_.rbd_admin == nullptr) {
    return absl::FailedPreconditionError(
        "this plugin serves no RBD volumes (started without --rbd): parameters.backend rbd");
  }
  return options_.rbd_admin;
}

absl::StatusOr<csi::v1::CreateVolumeResponse> VolumeManager::CreateRbdVolume(
    CreatePlan plan, const csi::v1::CreateVolumeRequest& req) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  ASSIGN_OR_RETURN(const RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  const RbdLocation& loc = *plan.rbd;
  const std::string image = ImageNameFor(plan.name);
  ASSIGN_OR_RETURN(const std::string volume_id, RbdVolumeId(loc, image));
  const std::string name = EscapeForLog(plan.name);
  const std::string what = absl::StrCat("volume '", name, "' (RBD ", loc.pool, "/", image, ")");
  const RbdAccess access{loc.monitors, creds};
  ASSIGN_OR_RETURN(KeyLock vol_lock, TryLock(volume_id, "volume " + volume_id));

  // The content source: an RBD snapshot (restore) or an RBD volume (clone)
  // of the same cluster.
  std::optional<KeyLock> src_lock;
  std::optional<SnapshotRecord> snap;
  std::optional<VolumeRecord> src_vol;
  auto compatible = [&plan](const VolumeRecord& src, absl::string_view w) -> absl::Status {
    if (plan.access == VolumeRecord::MOUNT && !plan.fs_explicit && src.filesystem_created() &&
        !src.fs_type().empty()) {
      plan.fs_type = src.fs_type();
    }
    if (plan.access == VolumeRecord::MOUNT && src.access_type() == VolumeRecord::BLOCK) {
      return absl::InvalidArgumentError(
          absl::StrCat(w, " holds a raw block volume; it can only be restored as a block volume"));
    }
    if (plan.access == VolumeRecord::MOUNT && src.filesystem_created() &&
        src.fs_type() != plan.fs_type) {
      return absl::InvalidArgumentError(
          absl::StrCat(w, " holds a ", src.fs_type(), " filesystem, not ", plan.fs_type));
    }
    return absl::OkStatus();
  };
  auto same_cluster = [&](const std::string& cluster_id, const std::string& monitors,
                          absl::string_view w) -> absl::Status {
    if (monitors != loc.monitors || cluster_id != loc.cluster_id) {
      return absl::InvalidArgumentError(absl::StrCat(w, " is in cluster ", cluster_id, ", not ",
                                                     loc.cluster_id,
                                                     " (RBD clones stay within one cluster)"));
    }
    return absl::OkStatus();
  };
  if (!plan.src_snapshot.empty()) {
    const std::string w = absl::StrCat("snapshot ", plan.src_snapshot);
    snap = FindSnapshot(plan.src_snapshot);
    if (!snap) {
      // No record here (a controller whose data dir went with its pod):
      // the ID names the RBD snapshot, and the cluster says whether it
      // exists and how large it is.
      std::optional<ParsedRbdSnapshotId> id = ParseRbdSnapshotId(plan.src_snapshot);
      if (!id) return absl::NotFoundError(absl::StrCat(w, " does not exist"));
      // Looked up only in this StorageClass's cluster.
      RETURN_IF_ERROR(same_cluster(id->volume.cluster_id, loc.monitors, w));
      absl::StatusOr<int64_t> snap_size =
          admin->SnapshotSize(access, id->volume.pool, id->volume.image, id->snap);
      if (absl::IsNotFound(snap_size.status())) {
        return absl::NotFoundError(absl::StrCat(w, " does not exist (no RBD snapshot ",
                                                id->volume.pool, "/", id->volume.image, "@",
                                                id->snap, ")"));
      }
      RETURN_IF_ERROR(Context(snap_size.status(), w));
      SnapshotRecord found;
      found.set_snapshot_id(plan.src_snapshot);
      found.set_source_volume_id(id->volume_id);
      found.set_size_bytes(*snap_size);
      found.set_ready_to_use(true);
      *found.mutable_rbd() = ImageOf(loc, id->volume.image);
      found.mutable_rbd()->set_pool(id->volume.pool);
      found.set_rbd_snap(id->snap);
      snap = std::move(found);
      LOG(INFO) << w << ": no record here; restoring from the RBD snapshot its ID names ("
                << id->volume.pool << "/" << id->volume.image << "@" << id->snap << ", "
                << *snap_size << " bytes)";
    }
    if (!snap->has_rbd()) {
      return absl::InvalidArgumentError(
          absl::StrCat(w, " is of a node-local file volume; it cannot be restored into RBD"));
    }
    RETURN_IF_ERROR(same_cluster(snap->rbd().cluster_id(), snap->rbd().monitors(), w));
    if (plan.size < snap->size_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", plan.size, " is smaller than ", w,
                                                " (", snap->size_bytes(), " bytes)"));
    }
    if (std::optional<VolumeRecord> v = FindVolume(snap->source_volume_id())) {
      RETURN_IF_ERROR(compatible(*v, w));
    }
  } else if (!plan.src_volume.empty()) {
    ASSIGN_OR_RETURN(KeyLock l, TryLock(plan.src_volume, "source volume " + plan.src_volume));
    src_lock.emplace(std::move(l));
    const std::string w = absl::StrCat("source volume ", plan.src_volume);
    src_vol = FindVolume(plan.src_volume);
    if (!src_vol) {
      // No record here: an RBD volume ID names its image, which the cluster
      // of this StorageClass holds if the ID says it is of that cluster.
      std::optional<ParsedRbdVolumeId> id = ParseRbdVolumeId(plan.src_volume);
      if (!id) return absl::NotFoundError(absl::StrCat(w, " does not exist"));
      RETURN_IF_ERROR(same_cluster(id->cluster_id, loc.monitors, w));
      ASSIGN_OR_RETURN(VolumeRecord found,
                       RbdRecordFromCluster(*id, plan.src_volume, loc.monitors, creds));
      src_vol = std::move(found);
    }
    if (!src_vol->has_rbd()) {
      return absl::InvalidArgumentError(
          absl::StrCat(w, " is a node-local file volume; it cannot be cloned into RBD"));
    }
    RETURN_IF_ERROR(same_cluster(src_vol->rbd().cluster_id(), src_vol->rbd().monitors(), w));
    if (plan.size < src_vol->capacity_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", plan.size, " is smaller than ", w,
                                                " (", src_vol->capacity_bytes(), " bytes)"));
    }
    RETURN_IF_ERROR(compatible(*src_vol, w));
  }

  // The image may exist already: an earlier attempt that created it and
  // then died (or timed out) before its record was written. It is ours by
  // its name; an interrupted flatten is finished.
  int64_t size = plan.size;
  absl::StatusOr<RbdImageInfo> found = admin->Stat(access, loc.pool, image);
  if (found.ok()) {
    if (found->size_bytes < plan.size || (req.capacity_range().limit_bytes() != 0 &&
                                          found->size_bytes > req.capacity_range().limit_bytes())) {
      return absl::AlreadyExistsError(absl::StrCat(what, " exists with ", found->size_bytes,
                                                   " bytes, which does not fit capacity_range"));
    }
    if (found->has_parent) {
      LOG(INFO) << what << ": finishing the flatten an earlier attempt began";
      RETURN_IF_ERROR(Context(admin->Flatten(access, loc.pool, image), what));
    }
    size = found->size_bytes;
    LOG(INFO) << what << ": image exists (an earlier attempt made it); adopting it";
  } else if (!absl::IsNotFound(found.status())) {
    return Context(found.status(), what);
  } else if (snap) {
    RETURN_IF_ERROR(Context(admin->CloneFlattened(access, snap->rbd().pool(), snap->rbd().image(),
                                                  snap->rbd_snap(), loc, image, plan.size),
                            what));
  } else if (src_vol) {
    // A clone is a restore from a snapshot made for it, removed once the
    // clone is flattened (nothing depends on it then).
    const std::string tmp = absl::StrCat("csi-clone-", image);
    const records::RbdImage& src = src_vol->rbd();
    RETURN_IF_ERROR(Context(admin->CreateSnapshot(access, src.pool(), src.image(), tmp), what));
    absl::Status cloned =
        admin->CloneFlattened(access, src.pool(), src.image(), tmp, loc, image, plan.size);
    absl::Status removed = admin->RemoveSnapshot(access, src.pool(), src.image(), tmp);
    if (!removed.ok()) {
      LOG(WARNING) << what << ": removing the temporary snapshot " << src.pool() << "/"
                   << src.image() << "@" << tmp << ": " << removed;
    }
    RETURN_IF_ERROR(Context(cloned, what));
  } else {
    RETURN_IF_ERROR(Context(admin->Create(access, loc, image, plan.size), what));
  }

  VolumeRecord rec;
  rec.set_volume_id(volume_id);
  rec.set_name(plan.name);
  rec.set_state(VolumeRecord::READY);
  rec.set_created_at(::time(nullptr));
  rec.set_capacity_bytes(size);
  for (const auto& [k, v] : plan.params) (*rec.mutable_parameters())[k] = v;
  rec.set_access_type(plan.access);
  rec.set_fs_type(plan.fs_type);
  if (!plan.src_snapshot.empty()) rec.set_source_snapshot_id(plan.src_snapshot);
  if (!plan.src_volume.empty()) rec.set_source_volume_id(plan.src_volume);
  rec.set_dev_id(-1);
  *rec.mutable_rbd() = ImageOf(loc, image);
  RETURN_IF_ERROR(SaveVolume(rec));
  LOG(INFO) << "created volume " << volume_id << " ('" << name << "', " << size << " bytes, RBD "
            << loc.pool << "/" << image << " features " << ImageFeaturesString(loc.features)
            << (loc.data_pool.empty() ? "" : ", data pool " + loc.data_pool)
            << (snap ? ", restored from snapshot " + snap->snapshot_id() : "")
            << (src_vol ? ", cloned from volume " + src_vol->volume_id() : "") << ")";
  csi::v1::CreateVolumeResponse resp;
  FillVolume(rec, resp.mutable_volume());
  return resp;
}

absl::Status VolumeManager::DeleteRbdImage(const VolumeRecord& rec, const RbdCredentials& creds) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  return Context(admin->Remove(AccessOf(rec.rbd(), creds), rec.rbd().pool(), rec.rbd().image()),
                 absl::StrCat("volume ", rec.volume_id(), ": remove RBD image ", rec.rbd().pool(),
                              "/", rec.rbd().image()));
}

absl::StatusOr<csi::v1::DeleteVolumeResponse> VolumeManager::DeleteRbdVolumeWithoutRecord(
    const csi::v1::DeleteVolumeRequest& req, const ParsedRbdVolumeId& id) {
  std::optional<std::string> mons =
      ClusterMonitorsFor(id.cluster_id, "volume " + req.volume_id(),
                         "if its image still exists, remove it with `rbd trash mv`");
  if (!mons) return csi::v1::DeleteVolumeResponse();
  ASSIGN_OR_RETURN(RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  VolumeRecord rec;
  rec.set_volume_id(req.volume_id());
  rec.mutable_rbd()->set_cluster_id(id.cluster_id);
  rec.mutable_rbd()->set_monitors(*mons);
  rec.mutable_rbd()->set_pool(id.pool);
  rec.mutable_rbd()->set_image(id.image);
  absl::Status s = DeleteRbdImage(rec, creds);
  if (absl::IsNotFound(s)) return csi::v1::DeleteVolumeResponse();  // already gone
  RETURN_IF_ERROR(s);
  LOG(INFO) << "deleted volume " << req.volume_id() << " without a record (cluster "
            << id.cluster_id << " from --rbd-clusters-file): RBD image " << id.pool << "/"
            << id.image << " trashed";
  return csi::v1::DeleteVolumeResponse();
}

absl::StatusOr<VolumeRecord> VolumeManager::RbdRecordFromCluster(const ParsedRbdVolumeId& id,
                                                                 const std::string& volume_id,
                                                                 const std::string& monitors,
                                                                 const RbdCredentials& creds) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  absl::StatusOr<RbdImageInfo> info = admin->Stat(RbdAccess{monitors, creds}, id.pool, id.image);
  if (absl::IsNotFound(info.status())) {
    return absl::NotFoundError(absl::StrCat("volume ", volume_id, " does not exist (no RBD image ",
                                            id.pool, "/", id.image, ")"));
  }
  RETURN_IF_ERROR(Context(info.status(), absl::StrCat("volume ", volume_id)));
  VolumeRecord rec;
  rec.set_volume_id(volume_id);
  rec.set_state(VolumeRecord::READY);
  rec.set_capacity_bytes(info->size_bytes);
  rec.set_dev_id(-1);
  records::RbdImage* img = rec.mutable_rbd();
  img->set_cluster_id(id.cluster_id);
  img->set_monitors(monitors);
  img->set_pool(id.pool);
  img->set_image(id.image);
  img->set_features(info->features);
  LOG(INFO) << "volume " << volume_id << ": no record here; RBD image " << id.pool << "/"
            << id.image << " (" << info->size_bytes << " bytes) as the cluster has it";
  return rec;
}

absl::StatusOr<VolumeRecord> VolumeManager::ControllerRecord(const std::string& volume_id,
                                                             const ParamMap& secrets) {
  if (std::optional<VolumeRecord> rec = FindVolume(volume_id)) return *rec;
  std::optional<ParsedRbdVolumeId> id = ParseRbdVolumeId(volume_id);
  if (!id || options_.rbd_admin == nullptr) return GetRecord(volume_id);  // NOT_FOUND
  auto mons = options_.rbd_cluster_monitors.find(id->cluster_id);
  if (mons == options_.rbd_cluster_monitors.end()) {
    return absl::NotFoundError(absl::StrCat(
        "volume ", volume_id, ": no record of it here and cluster ", id->cluster_id,
        " is not in --rbd-clusters-file (chart: rbd.clusters), so its monitors are unknown"));
  }
  ASSIGN_OR_RETURN(const RbdCredentials creds, ParseRbdSecrets(secrets, "secrets"));
  return RbdRecordFromCluster(*id, volume_id, mons->second, creds);
}

std::optional<std::string> VolumeManager::ClusterMonitorsFor(const std::string& cluster_id,
                                                             absl::string_view what,
                                                             absl::string_view by_hand) const {
  auto mons = options_.rbd_cluster_monitors.find(cluster_id);
  if (mons != options_.rbd_cluster_monitors.end()) return mons->second;
  // Without the record or a --rbd-clusters-file entry the cluster's
  // monitors are unknown here.
  LOG(WARNING) << what << ": no record of it here and cluster " << cluster_id
               << " is not in --rbd-clusters-file; nothing deleted (" << by_hand << ")";
  return std::nullopt;
}

absl::StatusOr<csi::v1::DeleteSnapshotResponse> VolumeManager::DeleteRbdSnapshotWithoutRecord(
    const csi::v1::DeleteSnapshotRequest& req, const ParsedRbdSnapshotId& id) {
  const std::string spec = absl::StrCat(id.volume.pool, "/", id.volume.image, "@", id.snap);
  std::optional<std::string> mons =
      ClusterMonitorsFor(id.volume.cluster_id, "snapshot " + req.snapshot_id(),
                         absl::StrCat("if it still exists, remove it with `rbd snap unprotect ",
                                      spec, "` and `rbd snap rm ", spec, "`"));
  if (!mons) return csi::v1::DeleteSnapshotResponse();
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  ASSIGN_OR_RETURN(RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  RETURN_IF_ERROR(Context(
      admin->RemoveSnapshot(RbdAccess{*mons, creds}, id.volume.pool, id.volume.image, id.snap),
      absl::StrCat("snapshot ", req.snapshot_id())));
  LOG(INFO) << "deleted snapshot " << req.snapshot_id() << " without a record (cluster "
            << id.volume.cluster_id << " from --rbd-clusters-file): RBD " << spec;
  return csi::v1::DeleteSnapshotResponse();
}

absl::StatusOr<csi::v1::CreateSnapshotResponse> VolumeManager::CreateRbdSnapshot(
    const VolumeRecord& vol, const csi::v1::CreateSnapshotRequest& req) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  ASSIGN_OR_RETURN(const RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  SnapshotRecord snap;
  snap.set_rbd_snap(SnapNameFor(req.name()));
  // An ID that names the RBD snapshot, so that restore and delete need no
  // record; a record-only ID where that would exceed 128 bytes.
  std::optional<std::string> id = RbdSnapshotId(vol.volume_id(), snap.rbd_snap());
  if (!id) {
    id = NewRbdSnapshotId();
    LOG(WARNING) << "snapshot '" << EscapeForLog(req.name()) << "' of volume " << vol.volume_id()
                 << ": an ID naming its RBD snapshot would exceed 128 bytes; " << *id
                 << " is known by its record only (restore and delete need this controller's "
                 << "data dir)";
  }
  snap.set_snapshot_id(*id);
  snap.set_name(req.name());
  snap.set_source_volume_id(vol.volume_id());
  snap.set_size_bytes(vol.capacity_bytes());
  snap.set_created_at(::time(nullptr));
  snap.set_ready_to_use(false);
  *snap.mutable_rbd() = vol.rbd();
  const std::string what = absl::StrCat("snapshot ", snap.snapshot_id(), " (RBD ", vol.rbd().pool(),
                                        "/", vol.rbd().image(), "@", snap.rbd_snap(), ")");
  // Record first (not ready): a crash before the snapshot is answered leaves
  // a record Load() drops; the CO's retry adopts the RBD snapshot by name.
  RETURN_IF_ERROR(store_->PutSnapshot(snap));
  // Crash-consistent, like a power cut: RBD snapshots the image as the
  // cluster has it. (A filesystem staged on some node is not frozen: the
  // controller does not know where it is.)
  absl::Status made = Context(admin->CreateSnapshot(AccessOf(vol.rbd(), creds), vol.rbd().pool(),
                                                    vol.rbd().image(), snap.rbd_snap()),
                              what);
  if (made.ok()) {
    snap.set_ready_to_use(true);
    made = SaveSnapshot(snap);
  }
  if (!made.ok()) {
    if (absl::Status s = store_->DeleteSnapshot(snap.snapshot_id()); !s.ok()) {
      LOG(WARNING) << what << ": rolling back its record: " << s;
    }
    return made;
  }
  LOG(INFO) << what << " of volume " << vol.volume_id() << " ('" << EscapeForLog(req.name())
            << "')";
  csi::v1::CreateSnapshotResponse resp;
  auto* out = resp.mutable_snapshot();
  out->set_snapshot_id(snap.snapshot_id());
  out->set_source_volume_id(snap.source_volume_id());
  out->set_size_bytes(snap.size_bytes());
  out->mutable_creation_time()->set_seconds(snap.created_at());
  out->set_ready_to_use(true);
  return resp;
}

absl::Status VolumeManager::DeleteRbdSnapshot(const SnapshotRecord& snap,
                                              const csi::v1::DeleteSnapshotRequest& req) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  ASSIGN_OR_RETURN(const RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  return Context(admin->RemoveSnapshot(AccessOf(snap.rbd(), creds), snap.rbd().pool(),
                                       snap.rbd().image(), snap.rbd_snap()),
                 absl::StrCat("snapshot ", snap.snapshot_id()));
}

absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> VolumeManager::ExpandRbdVolume(
    VolumeRecord rec, int64_t size, const csi::v1::ControllerExpandVolumeRequest& req) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  ASSIGN_OR_RETURN(const RbdCredentials creds, ParseRbdSecrets(req.secrets(), "secrets"));
  if (!options_.online_expansion &&
      (!rec.staged_path().empty() || rec.published_paths_size() > 0)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(),
        " is in use on this node, whose ublk driver cannot grow a live device; unstage it first"));
  }
  RETURN_IF_ERROR(
      Context(admin->Resize(AccessOf(rec.rbd(), creds), rec.rbd().pool(), rec.rbd().image(), size),
              absl::StrCat("volume ", rec.volume_id(), ": resize RBD image")));
  rec.set_capacity_bytes(size);
  // A volume known from the cluster only (ControllerRecord) stays so.
  if (FindVolume(rec.volume_id())) RETURN_IF_ERROR(SaveVolume(rec));
  LOG(INFO) << "volume " << rec.volume_id() << ": RBD image " << rec.rbd().pool() << "/"
            << rec.rbd().image() << " grown to " << size << " bytes";
  csi::v1::ControllerExpandVolumeResponse resp;
  resp.set_capacity_bytes(size);
  // The node grows the device (UPDATE_SIZE) and the filesystem, as for a
  // file volume.
  resp.set_node_expansion_required(true);
  return resp;
}

// ---- Node side ----

std::string VolumeManager::LockCookie() const {
  return absl::StrCat("ublk-csi:", options_.node_id);
}

absl::StatusOr<VolumeRecord> VolumeManager::AttachOnlyRecord(
    const csi::v1::NodeStageVolumeRequest& req, const RbdCredentials& creds) {
  std::optional<ParsedRbdVolumeId> id = ParseRbdVolumeId(req.volume_id());
  if (!id) return absl::NotFoundError(absl::StrCat("volume ", req.volume_id(), " does not exist"));
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  const auto& ctx = req.volume_context();
  ASSIGN_OR_RETURN(const bool rbd, SelectsRbd(ctx, "volume_context"));
  if (!rbd) {
    return absl::InvalidArgumentError(
        absl::StrCat("volume_context of RBD volume ", req.volume_id(),
                     " lacks backend=rbd (and the rest of what CreateVolume returned)"));
  }
  ASSIGN_OR_RETURN(RbdLocation loc, ParseRbdParams(ctx, "volume_context",
                                                   {"name", "fsType", "accessType", "blockSize"}));
  auto img = ctx.find(kContextImageName);
  if (loc.cluster_id != id->cluster_id || loc.pool != id->pool || img == ctx.end() ||
      img->second != id->image) {
    return absl::InvalidArgumentError(absl::StrCat(
        "volume_context (clusterID, pool, imageName) does not match volume_id ", req.volume_id()));
  }
  absl::StatusOr<RbdImageInfo> info =
      admin->Stat(RbdAccess{loc.monitors, creds}, loc.pool, id->image);
  if (!info.ok()) {
    return Context(info.status(), absl::StrCat("volume ", req.volume_id(), ": RBD image"));
  }
  VolumeRecord rec;
  rec.set_volume_id(req.volume_id());
  auto name = ctx.find("name");
  if (name != ctx.end()) rec.set_name(name->second);
  rec.set_state(VolumeRecord::READY);
  rec.set_created_at(::time(nullptr));
  rec.set_capacity_bytes(info->size_bytes);
  rec.set_access_type(req.volume_capability().has_block() ? VolumeRecord::BLOCK
                                                          : VolumeRecord::MOUNT);
  auto fs = ctx.find("fsType");
  if (rec.access_type() == VolumeRecord::MOUNT) {
    rec.set_fs_type(fs != ctx.end() && !fs->second.empty() ? fs->second : "ext4");
  }
  auto bs = ctx.find("blockSize");
  if (bs != ctx.end()) (*rec.mutable_parameters())["blockSize"] = bs->second;
  rec.set_dev_id(-1);
  *rec.mutable_rbd() = ImageOf(loc, id->image);
  rec.set_attach_only(true);
  return rec;
}

absl::Status VolumeManager::TakeRbdLock(const VolumeRecord& rec, const RbdAccess& access) {
  ASSIGN_OR_RETURN(RbdAdmin * admin, Rbd());
  const std::string& pool = rec.rbd().pool();
  const std::string& image = rec.rbd().image();
  const std::string cookie = LockCookie();
  absl::Status s = admin->Lock(access, pool, image, cookie);
  if (!absl::IsFailedPrecondition(s)) {
    return Context(s, absl::StrCat("volume ", rec.volume_id(), ": lock RBD image"));
  }
  // Held. By this node's earlier self (a plugin restart or a node reboot
  // since it was staged: the cookie is the node's), it is taken over;
  // by anyone else, the volume is in use elsewhere.
  ASSIGN_OR_RETURN(std::vector<RbdLockHolder> holders, admin->Lockers(access, pool, image));
  bool mine = !holders.empty();
  for (const RbdLockHolder& h : holders) mine = mine && h.cookie == cookie;
  if (!mine) {
    std::string who;
    for (const RbdLockHolder& h : holders) {
      absl::StrAppend(&who, who.empty() ? "" : ", ", h.cookie, " (", h.client, " at ", h.address,
                      ")");
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(), ": RBD image ", pool, "/", image,
        " is staged on another node (locked by ", who.empty() ? "another client" : who,
        "); unstage it there first. If that node is gone for good, remove its lock: `rados -p ",
        pool, " lock break rbd_header.<image id> ", kRbdStageLockName,
        " <client> --lock-cookie <cookie>`"));
  }
  for (const RbdLockHolder& h : holders) {
    LOG(WARNING) << "volume " << rec.volume_id() << ": taking over this node's lock on " << pool
                 << "/" << image << " from " << h.client << " (an earlier plugin process)";
    RETURN_IF_ERROR(Context(admin->BreakLock(access, pool, image, h),
                            absl::StrCat("volume ", rec.volume_id(), ": break stale lock")));
  }
  return Context(admin->Lock(access, pool, image, cookie),
                 absl::StrCat("volume ", rec.volume_id(), ": lock RBD image"));
}

void VolumeManager::ReleaseRbdLock(const VolumeRecord& rec) {
  absl::StatusOr<RbdCredentials> creds = KeptCredentials(rec);
  if (!creds.ok()) {
    LOG(WARNING) << "volume " << rec.volume_id() << ": cannot release this node's lock on "
                 << rec.rbd().pool() << "/" << rec.rbd().image() << " (" << creds.status()
                 << "); the next stage on this node takes it over, another node needs `rados lock "
                    "break` of lock "
                 << kRbdStageLockName << " on the image's header object";
    return;
  }
  ReleaseRbdLockWith(rec, *creds);
}

void VolumeManager::ReleaseRbdLockWith(const VolumeRecord& rec, const RbdCredentials& creds) {
  absl::StatusOr<RbdAdmin*> admin = Rbd();
  if (!admin.ok()) {
    LOG(WARNING) << "volume " << rec.volume_id() << ": " << admin.status();
    return;
  }
  const RbdAccess access = AccessOf(rec.rbd(), creds);
  const std::string cookie = LockCookie();
  absl::Status s = (*admin)->Unlock(access, rec.rbd().pool(), rec.rbd().image(), cookie);
  // Still held with our cookie: by an earlier process of this plugin
  // (unlock works only for the client that locked).
  absl::StatusOr<std::vector<RbdLockHolder>> holders =
      s.ok() ? (*admin)->Lockers(access, rec.rbd().pool(), rec.rbd().image())
             : absl::StatusOr<std::vector<RbdLockHolder>>(s);
  if (holders.ok()) {
    for (const RbdLockHolder& h : *holders) {
      if (h.cookie != cookie) continue;
      s = (*admin)->BreakLock(access, rec.rbd().pool(), rec.rbd().image(), h);
      if (!s.ok()) break;
    }
  } else if (!absl::IsNotFound(holders.status())) {
    s = holders.status();
  }
  if (!s.ok()) {
    LOG(WARNING) << "volume " << rec.volume_id() << ": releasing this node's lock on "
                 << rec.rbd().pool() << "/" << rec.rbd().image() << ": " << s;
  }
}

absl::StatusOr<RbdCredentials> VolumeManager::KeptCredentials(const VolumeRecord& rec) {
  absl::StatusOr<records::ClusterCredentials> kept = store_->GetCredentials(rec.rbd().cluster_id());
  if (!kept.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", rec.volume_id(), ": ", kept.status().message(),
                     " (the credentials come with NodeStageVolume: stage the volume again)"));
  }
  return RbdCredentials{kept->user(), kept->key()};
}

absl::Status VolumeManager::CheckKeptUser(const VolumeRecord& rec, const RbdCredentials& creds) {
  const std::string& cluster = rec.rbd().cluster_id();
  absl::StatusOr<records::ClusterCredentials> kept = store_->GetCredentials(cluster);
  if (!kept.ok() || kept->user() == creds.user) return absl::OkStatus();
  std::string other;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [id, v] : volumes_) {
      if (id != rec.volume_id() && v.has_rbd() && v.rbd().cluster_id() == cluster &&
          !v.staged_path().empty()) {
        other = id;
        break;
      }
    }
  }
  if (other.empty()) return absl::OkStatus();  // nothing staged needs the old user
  return absl::FailedPreconditionError(absl::StrCat(
      "volume ", rec.volume_id(), ": cluster ", cluster, "'s volumes on this node (", other,
      ", ...) are staged as cephx user ", kept->user(), ", this stage's secret is user ",
      creds.user,
      ": the plugin keeps one user per clusterID to bring the volumes back after a restart. Use "
      "one secret for every StorageClass of clusterID ",
      cluster, ", or give this StorageClass a clusterID of its own (same monitors)"));
}

void VolumeManager::DropCredentialsIfUnused(const std::string& cluster_id) {
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) {
      if (rec.has_rbd() && rec.rbd().cluster_id() == cluster_id && !rec.staged_path().empty()) {
        return;
      }
    }
  }
  if (absl::Status s = store_->DeleteCredentials(cluster_id); !s.ok()) {
    LOG(WARNING) << "cluster " << cluster_id << ": removing the kept credentials: " << s;
  } else {
    LOG(INFO) << "cluster " << cluster_id
              << ": no RBD volume of it is staged here any more; its credentials removed";
  }
}

}  // namespace ublk_csi
