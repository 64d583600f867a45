// The state and rules behind the CSI Controller and Node services: owns the
// volume and snapshot records (through RecordStore), the backing files, and
// drives the VolumeBackend (exports) and the Mounter. Every method takes a
// CSI request, validates it (INVALID_ARGUMENT naming the field), and returns
// the CSI response or an absl::Status whose code is the CSI error code.
//
// Thread-safe. Calls on different volumes run concurrently; a call that finds
// another call on the same volume (or snapshot, or create-name) in progress
// fails at once with ABORTED instead of waiting (per-object try-locks; the
// map mutex is held only to look things up, never across I/O).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "csi.pb.h"
#include "csi/driver.h"
#include "csi/mounter.h"
#include "csi/rbd_admin.h"
#include "csi/record_store.h"
#include "csi/volume_backend.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "records.pb.h"
#include "ublk/mutex.h"

namespace ublk_csi {

inline constexpr char kTopologyKey[] = "topology.ublk.csi.io/node";
// RecoverExport's refusal of a volume that is no longer staged or published.
inline constexpr char kNotStagedNow[] = "is no longer staged or published";

struct VolumeManagerOptions {
  std::string node_id;
  // Size of a volume whose CreateVolume gives no capacity.
  int64_t default_volume_bytes = int64_t{1} << 30;
  // Reported as max_volumes_per_node when > 0; else the backend's MaxVolumes().
  int max_volumes_override = 0;
  // The same for the RBD driver's node endpoint (rbd.ublk.csi.io). Both
  // drivers' volumes take devices of one ublk_drv (ublks_max): Kubernetes
  // counts each driver apart, so an operator splits the devices with the
  // two (e.g. 48 + 16 of 64).
  int rbd_max_volumes_override = 0;
  // Free bytes for new volumes (GetCapacity, out-of-space checks); default:
  // statvfs of the data dir. A seam so tests can run out of space.
  std::function<absl::StatusOr<int64_t>()> free_bytes;
  // Thin provisioning. Backing files are sparse, so the sum of volume sizes
  // (provisioned) may exceed the space they can ever fill. The pool's
  // capacity is the data dir's free space plus what its backing and snapshot
  // files already use; CreateVolume and ControllerExpandVolume admit a size
  // only while provisioned <= capacity x ratio. 1.0 = never promise more
  // than the disk holds; a StorageClass parameter "overcommitRatio"
  // overrides it for that class's volumes. Checked by Load().
  double overcommit_ratio = 1.0;
  // False when a live device cannot grow (ublk UPDATE_SIZE missing, i.e.
  // OFFLINE expansion): ControllerExpandVolume of a staged volume is then
  // FAILED_PRECONDITION, as the CSI spec asks.
  bool online_expansion = true;
  // Gets the ublk_csi_pool_* gauges and counter (may be null).
  prometheus::Registry* registry = nullptr;
  // Ceph RBD volumes (StorageClass parameter backend: rbd); null: such a
  // class is refused with FAILED_PRECONDITION. Must outlive the manager.
  RbdAdmin* rbd_admin = nullptr;
  // clusterID -> monitors (--rbd-clusters-file): DeleteVolume of an RBD
  // volume this manager has no record of removes its image through them
  // (a replaced controller pod); without an entry such a delete is a no-op.
  std::map<std::string, std::string> rbd_cluster_monitors;
};

// Asked by NodeStage/NodePublish (and NodeGetVolumeStats) before they use a
// volume's export. After a restart the RecoveryManager answers UNAVAILABLE
// for a volume it has not re-attached yet, so kubelet retries instead of
// racing the recovery. Implementations are thread-safe and never block.
class VolumeGate {
 public:
  virtual ~VolumeGate() = default;
  virtual absl::Status CheckServing(const std::string& volume_id) = 0;
};

// One export's state for `ublk-csi-ctl status` and metrics.
struct VolumeStatus {
  std::string volume_id;
  std::string name;
  int64_t capacity_bytes = 0;
  std::string staged_path;
  int published = 0;
  ExportStatus export_status;
};

class VolumeManager {
 public:
  VolumeManager(VolumeManagerOptions options, RecordStore* store, VolumeBackend* backend,
                Mounter* mounter);

  // Loads the records: finishes or rolls back what a crash interrupted
  // (CREATING -> removed, DELETING -> finished). Call once before serving.
  absl::Status Load();

  // Controller. `driver` is the endpoint's (driver.h): after the request's
  // own fields are checked (INVALID_ARGUMENT comes first, as CSI orders it),
  // a volume ID it does not serve is NOT_FOUND.
  absl::StatusOr<csi::v1::CreateVolumeResponse> CreateVolume(
      const csi::v1::CreateVolumeRequest& req);
  absl::StatusOr<csi::v1::DeleteVolumeResponse> DeleteVolume(
      const csi::v1::DeleteVolumeRequest& req);
  absl::StatusOr<csi::v1::ValidateVolumeCapabilitiesResponse> ValidateVolumeCapabilities(
      const csi::v1::ValidateVolumeCapabilitiesRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::ListVolumesResponse> ListVolumes(const csi::v1::ListVolumesRequest& req);
  absl::StatusOr<csi::v1::GetCapacityResponse> GetCapacity(const csi::v1::GetCapacityRequest& req);
  absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> ControllerExpandVolume(
      const csi::v1::ControllerExpandVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::CreateSnapshotResponse> CreateSnapshot(
      const csi::v1::CreateSnapshotRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::DeleteSnapshotResponse> DeleteSnapshot(
      const csi::v1::DeleteSnapshotRequest& req);
  absl::StatusOr<csi::v1::ListSnapshotsResponse> ListSnapshots(
      const csi::v1::ListSnapshotsRequest& req);

  // Node.
  absl::StatusOr<csi::v1::NodeStageVolumeResponse> NodeStageVolume(
      const csi::v1::NodeStageVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::NodeUnstageVolumeResponse> NodeUnstageVolume(
      const csi::v1::NodeUnstageVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::NodePublishVolumeResponse> NodePublishVolume(
      const csi::v1::NodePublishVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::NodeUnpublishVolumeResponse> NodeUnpublishVolume(
      const csi::v1::NodeUnpublishVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::NodeGetVolumeStatsResponse> NodeGetVolumeStats(
      const csi::v1::NodeGetVolumeStatsRequest& req, Driver driver = Driver::kNodeLocal);
  absl::StatusOr<csi::v1::NodeExpandVolumeResponse> NodeExpandVolume(
      const csi::v1::NodeExpandVolumeRequest& req, Driver driver = Driver::kNodeLocal);
  csi::v1::NodeGetInfoResponse NodeGetInfo(Driver driver = Driver::kNodeLocal);

  std::vector<VolumeStatus> Status();
  // Recomputes the ublk_csi_pool_* gauges (provisioned, used, capacity);
  // called before each /metrics scrape, since "used" grows with writes.
  void RefreshPoolMetrics();
  // Recovery after a restart: ensures the export of a staged or published
  // volume (re-attach a QUIESCED device, or re-create it after a reboot) and
  // persists the device id it got. Takes the volume's lock like an RPC
  // (ABORTED while a call on it runs); does not consult the gate. A volume
  // no longer staged nor published (unstaged while it waited) is
  // FAILED_PRECONDITION with kNotStagedNow in the message: nothing to serve.
  absl::StatusOr<ExportInfo> RecoverExport(const std::string& volume_id);
  // Set once before serving (null: every volume serves).
  void SetGate(VolumeGate* gate) { gate_.store(gate); }
  // The record as it is now (tests, status); NOT_FOUND if unknown.
  absl::StatusOr<records::VolumeRecord> GetRecord(const std::string& volume_id);
  csi::v1::Topology NodeTopology() const;

 private:
  // Holds one busy key (volume id, snapshot id, "name:<n>") for a call.
  class KeyLock {
   public:
    KeyLock(VolumeManager* m, std::string key) : m_(m), key_(std::move(key)) {}
    KeyLock(KeyLock&& o) noexcept : m_(std::exchange(o.m_, nullptr)), key_(std::move(o.key_)) {}
    KeyLock(const KeyLock&) = delete;
    KeyLock& operator=(const KeyLock&) = delete;
    KeyLock& operator=(KeyLock&&) = delete;
    ~KeyLock();

   private:
    VolumeManager* m_;
    std::string key_;
  };
  absl::StatusOr<KeyLock> TryLock(const std::string& key, absl::string_view what);

  std::optional<records::VolumeRecord> FindVolume(const std::string& id);
  std::optional<records::SnapshotRecord> FindSnapshot(const std::string& id);
  // Writes the record and, on success, updates the in-memory copy.
  absl::Status SaveVolume(const records::VolumeRecord& rec);
  absl::Status SaveSnapshot(const records::SnapshotRecord& rec);
  absl::Status ForgetVolume(const std::string& id);
  absl::Status ForgetSnapshot(const std::string& id);
  absl::StatusOr<int64_t> FreeBytes();

  // CreateVolume, step by step: parse and validate the request; answer a
  // repeat of an earlier create (idempotency); find and lock the content
  // source; admit the size into the pool; write record and backing file.
  struct CreatePlan {
    std::string name;
    records::VolumeRecord::AccessType access = records::VolumeRecord::MOUNT;
    std::string fs_type;       // of a mount volume
    bool fs_explicit = false;  // asked for by parameters or capability
    int64_t size = 0;
    std::map<std::string, std::string> params;  // user parameters, kept in the record
    double ratio = 1.0;
    std::string src_snapshot, src_volume;
    std::optional<RbdLocation> rbd;  // parameters select the RBD backend
  };
  struct ContentSource;
  absl::StatusOr<CreatePlan> ParseCreateRequest(const csi::v1::CreateVolumeRequest& req) const;
  // The response for an existing volume of the same name, ALREADY_EXISTS if
  // it does not match, nullopt if there is none.
  absl::StatusOr<std::optional<csi::v1::CreateVolumeResponse>> FindCreated(
      const CreatePlan& plan, const csi::v1::CreateVolumeRequest& req);
  // May set plan.fs_type: a volume restored or cloned without an explicit
  // filesystem type takes its source's.
  absl::StatusOr<ContentSource> ResolveContentSource(CreatePlan& plan);
  absl::StatusOr<records::VolumeRecord> MaterializeVolume(const CreatePlan& plan,
                                                          ContentSource& source);

  // Thin pool accounting. `Usage` is measured outside mu_ (statvfs, stat);
  // Reserve then checks and books `bytes` under mu_ so that two concurrent
  // creates cannot both take the last room. The reservation is released
  // when the caller has saved the grown record (or failed).
  struct PoolUsage {
    int64_t provisioned = 0;   // sum of volume sizes, incl. reservations
    int64_t used = 0;          // bytes allocated by backing + snapshot files
    int64_t free = 0;          // free bytes in the data dir
    int64_t capacity() const;  // free + used, saturating
  };
  class Reservation {
   public:
    Reservation(VolumeManager* m, int64_t bytes) : m_(m), bytes_(bytes) {}
    Reservation(Reservation&& o) noexcept : m_(std::exchange(o.m_, nullptr)), bytes_(o.bytes_) {}
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    Reservation& operator=(Reservation&&) = delete;
    ~Reservation();

   private:
    VolumeManager* m_;
    int64_t bytes_;
  };
  absl::StatusOr<PoolUsage> MeasurePool();
  // RESOURCE_EXHAUSTED naming requested, provisioned, capacity and ratio
  // when `bytes` more would exceed capacity x ratio.
  absl::StatusOr<Reservation> Reserve(int64_t bytes, double ratio, absl::string_view what);
  // Ratio for a volume with these (user) parameters.
  double RatioFor(const google::protobuf::Map<std::string, std::string>& params) const;
  absl::Status CheckTopology(const csi::v1::TopologyRequirement& req) const;
  void FillVolume(const records::VolumeRecord& rec, csi::v1::Volume* out) const;
  ExportSpec SpecFor(const records::VolumeRecord& rec) const;
  // `creds` (RBD volumes): from the NodeStage secrets; null = the ones the
  // node keeps for the volume's cluster (recovery after a restart).
  absl::StatusOr<ExportInfo> EnsureExport(records::VolumeRecord* rec,
                                          const RbdCredentials* creds = nullptr);
  // Before copying a volume's backing file (snapshot, clone): if the volume's
  // filesystem is mounted at its staging path on this node, freezes it so the
  // copy is one point in time, and returns that path; "" when nothing was
  // frozen (not staged, or a block volume: copied live, with a warning).
  absl::StatusOr<std::string> FreezeForCopy(const records::VolumeRecord& vol,
                                            absl::string_view why);
  // Thaws what FreezeForCopy froze (a failure is logged: nothing else to do).
  void ThawAfterCopy(const std::string& volume_id, const std::string& mount_path);

  // Ceph RBD volumes (volume_manager_rbd.cc). The controller calls take the
  // cephx credentials from the request's secrets; none of them reaches a
  // log line, a record or an error message.
  absl::StatusOr<RbdAdmin*> Rbd() const;
  absl::StatusOr<csi::v1::CreateVolumeResponse> CreateRbdVolume(
      CreatePlan plan, const csi::v1::CreateVolumeRequest& req);
  absl::Status DeleteRbdImage(const records::VolumeRecord& rec, const RbdCredentials& creds);
  // DeleteVolume of an RBD volume ID with no record here: through
  // rbd_cluster_monitors, or a logged no-op.
  absl::StatusOr<csi::v1::DeleteVolumeResponse> DeleteRbdVolumeWithoutRecord(
      const csi::v1::DeleteVolumeRequest& req, const ParsedRbdVolumeId& id);
  absl::StatusOr<csi::v1::CreateSnapshotResponse> CreateRbdSnapshot(
      const records::VolumeRecord& vol, const csi::v1::CreateSnapshotRequest& req);
  absl::Status DeleteRbdSnapshot(const records::SnapshotRecord& snap,
                                 const csi::v1::DeleteSnapshotRequest& req);
  // The controller's view of a volume: its record, or, for an RBD volume
  // this process has no record of (a controller whose data dir went with
  // its pod), what the cluster says of the image its ID names, reached
  // through rbd_cluster_monitors with `secrets`. Such a record is not
  // persisted (access and fs type are unknown: ACCESS_TYPE_UNSPECIFIED).
  absl::StatusOr<records::VolumeRecord> ControllerRecord(const std::string& volume_id,
                                                         const ParamMap& secrets);
  absl::StatusOr<records::VolumeRecord> RbdRecordFromCluster(const ParsedRbdVolumeId& id,
                                                             const std::string& volume_id,
                                                             const std::string& monitors,
                                                             const RbdCredentials& creds);
  // DeleteSnapshot of an RBD snapshot ID with no record here: as
  // DeleteRbdVolumeWithoutRecord.
  absl::StatusOr<csi::v1::DeleteSnapshotResponse> DeleteRbdSnapshotWithoutRecord(
      const csi::v1::DeleteSnapshotRequest& req, const ParsedRbdSnapshotId& id);
  // The monitors --rbd-clusters-file gives `cluster_id`; nullopt (and a
  // warning naming `what` and what to do by hand) when it names none.
  std::optional<std::string> ClusterMonitorsFor(const std::string& cluster_id,
                                                absl::string_view what,
                                                absl::string_view by_hand) const;
  absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> ExpandRbdVolume(
      records::VolumeRecord rec, int64_t size, const csi::v1::ControllerExpandVolumeRequest& req);
  // NodeStage of an RBD volume this node has no record of (the controller
  // Deployment created it): a record made from the ID and volume_context.
  absl::StatusOr<records::VolumeRecord> AttachOnlyRecord(const csi::v1::NodeStageVolumeRequest& req,
                                                         const RbdCredentials& creds);
  // The node's multi-attach lock (see RbdAdmin's Policies).
  std::string LockCookie() const;
  absl::Status TakeRbdLock(const records::VolumeRecord& rec, const RbdAccess& access);
  // Unlock (with the kept credentials, or the given ones) and break what an
  // earlier process of this node still holds with the node's cookie.
  void ReleaseRbdLock(const records::VolumeRecord& rec);
  void ReleaseRbdLockWith(const records::VolumeRecord& rec, const RbdCredentials& creds);
  // The credentials this node keeps for the volume's cluster.
  absl::StatusOr<RbdCredentials> KeptCredentials(const records::VolumeRecord& rec);
  // Drops the cluster's kept credentials when no staged volume needs them.
  void DropCredentialsIfUnused(const std::string& cluster_id);
  // One cephx user per cluster on a node (the kept credentials bring every
  // staged volume of the cluster back after a restart): FAILED_PRECONDITION
  // when other volumes of rec's cluster are staged here as another user.
  absl::Status CheckKeptUser(const records::VolumeRecord& rec, const RbdCredentials& creds);

  const VolumeManagerOptions options_;
  RecordStore* const store_;
  VolumeBackend* const backend_;
  Mounter* const mounter_;

  ublk::Mutex mu_;
  std::map<std::string, records::VolumeRecord> volumes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, records::SnapshotRecord> snapshots_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> busy_ ABSL_GUARDED_BY(mu_);
  int64_t reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Degraded-mode state: set while the last admission was refused (one log
  // line per transition, not one per refused call).
  std::atomic<bool> pool_full_{false};
  prometheus::Gauge* provisioned_gauge_ = nullptr;
  prometheus::Gauge* used_gauge_ = nullptr;
  prometheus::Gauge* capacity_gauge_ = nullptr;
  prometheus::Counter* refused_counter_ = nullptr;
  std::atomic<VolumeGate*> gate_{nullptr};
};

// Helpers shared by the manager's controller and node halves (and tests).
// A path CSI hands us: absolute, no empty/"."/".." components, no trailing '/'.
absl::Status ValidatePath(absl::string_view path, absl::string_view field);
// Access mode/type rules: single-node modes only; exactly one access type;
// mount fs_type empty, ext4 or xfs.
absl::Status ValidateCapability(const csi::v1::VolumeCapability& cap, absl::string_view field);
// Parses "1Gi", "512Mi", "4096", "10G" into bytes; INVALID_ARGUMENT for a
// malformed or negative size or one that overflows int64.
absl::StatusOr<int64_t> ParseSize(absl::string_view text);
// A CO-chosen name (CreateVolume, CreateSnapshot): required, at most 128
// bytes, UTF-8, none of the control characters the CSI spec bans
// (U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, U+007F-U+009F).
absl::Status ValidateName(absl::string_view name, absl::string_view field);
// A parameters/volume_context map: at most 4 KiB of keys and values (CSI).
absl::Status ValidateMapSize(const google::protobuf::Map<std::string, std::string>& map,
                             absl::string_view field);
// How to reach an RBD volume's cluster with these credentials.
RbdAccess AccessOf(const records::RbdImage& img, const RbdCredentials& creds);
// The StorageClass parameter key of the overcommit ratio.
inline constexpr char kParamOvercommitRatio[] = "overcommitRatio";
// Parses an overcommit ratio: a finite number in (0, 1000].
absl::StatusOr<double> ParseOvercommitRatio(absl::string_view text, absl::string_view field);

}  // namespace ublk_csi
