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
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "csi.pb.h"
#include "csi/mounter.h"
#include "csi/record_store.h"
#include "csi/volume_backend.h"
#include "records.pb.h"
#include "ublk/mutex.h"

namespace ublk_csi {

inline constexpr char kTopologyKey[] = "topology.ublk.csi.io/node";

struct VolumeManagerOptions {
  std::string node_id;
  // Size of a volume whose CreateVolume gives no capacity.
  int64_t default_volume_bytes = int64_t{1} << 30;
  // Reported as max_volumes_per_node when > 0; else the backend's MaxVolumes().
  int max_volumes_override = 0;
  // Free bytes for new volumes (GetCapacity, out-of-space checks); default:
  // statvfs of the data dir. A seam so tests can run out of space.
  std::function<absl::StatusOr<int64_t>()> free_bytes;
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

  // Controller.
  absl::StatusOr<csi::v1::CreateVolumeResponse> CreateVolume(
      const csi::v1::CreateVolumeRequest& req);
  absl::StatusOr<csi::v1::DeleteVolumeResponse> DeleteVolume(
      const csi::v1::DeleteVolumeRequest& req);
  absl::StatusOr<csi::v1::ValidateVolumeCapabilitiesResponse> ValidateVolumeCapabilities(
      const csi::v1::ValidateVolumeCapabilitiesRequest& req);
  absl::StatusOr<csi::v1::ListVolumesResponse> ListVolumes(
      const csi::v1::ListVolumesRequest& req);
  absl::StatusOr<csi::v1::GetCapacityResponse> GetCapacity(
      const csi::v1::GetCapacityRequest& req);
  absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> ControllerExpandVolume(
      const csi::v1::ControllerExpandVolumeRequest& req);
  absl::StatusOr<csi::v1::CreateSnapshotResponse> CreateSnapshot(
      const csi::v1::CreateSnapshotRequest& req);
  absl::StatusOr<csi::v1::DeleteSnapshotResponse> DeleteSnapshot(
      const csi::v1::DeleteSnapshotRequest& req);
  absl::StatusOr<csi::v1::ListSnapshotsResponse> ListSnapshots(
      const csi::v1::ListSnapshotsRequest& req);

  // Node.
  absl::StatusOr<csi::v1::NodeStageVolumeResponse> NodeStageVolume(
      const csi::v1::NodeStageVolumeRequest& req);
  absl::StatusOr<csi::v1::NodeUnstageVolumeResponse> NodeUnstageVolume(
      const csi::v1::NodeUnstageVolumeRequest& req);
  absl::StatusOr<csi::v1::NodePublishVolumeResponse> NodePublishVolume(
      const csi::v1::NodePublishVolumeRequest& req);
  absl::StatusOr<csi::v1::NodeUnpublishVolumeResponse> NodeUnpublishVolume(
      const csi::v1::NodeUnpublishVolumeRequest& req);
  absl::StatusOr<csi::v1::NodeGetVolumeStatsResponse> NodeGetVolumeStats(
      const csi::v1::NodeGetVolumeStatsRequest& req);
  absl::StatusOr<csi::v1::NodeExpandVolumeResponse> NodeExpandVolume(
      const csi::v1::NodeExpandVolumeRequest& req);
  csi::v1::NodeGetInfoResponse NodeGetInfo();

  std::vector<VolumeStatus> Status();
  // Recovery after a restart: ensures the export of a staged or published
  // volume (re-attach a QUIESCED device, or re-create it after a reboot) and
  // persists the device id it got. Takes the volume's lock like an RPC
  // (ABORTED while a call on it runs); does not consult the gate.
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
  absl::Status CheckTopology(const csi::v1::TopologyRequirement& req) const;
  void FillVolume(const records::VolumeRecord& rec, csi::v1::Volume* out) const;
  ExportSpec SpecFor(const records::VolumeRecord& rec) const;
  absl::StatusOr<ExportInfo> EnsureExport(records::VolumeRecord* rec);
  // Before copying a volume's backing file (snapshot, clone): if the volume's
  // filesystem is mounted at its staging path on this node, freezes it so the
  // copy is one point in time, and returns that path; "" when nothing was
  // frozen (not staged, or a block volume: copied live, with a warning).
  absl::StatusOr<std::string> FreezeForCopy(const records::VolumeRecord& vol, absl::string_view why);
  // Thaws what FreezeForCopy froze (a failure is logged: nothing else to do).
  void ThawAfterCopy(const std::string& volume_id, const std::string& mount_path);

  const VolumeManagerOptions options_;
  RecordStore* const store_;
  VolumeBackend* const backend_;
  Mounter* const mounter_;

  ublk::Mutex mu_;
  std::map<std::string, records::VolumeRecord> volumes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, records::SnapshotRecord> snapshots_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> busy_ ABSL_GUARDED_BY(mu_);
  std::atomic<VolumeGate*> gate_{nullptr};
};

// Helpers shared by the manager's controller and node halves (and tests).
// A path CSI hands us: absolute, no empty/"."/".." components, no trailing '/'.
absl::Status ValidatePath(absl::string_view path, absl::string_view field);
// Access mode/type rules: single-node modes only; exactly one access type;
// mount fs_type empty, ext4 or xfs.
absl::Status ValidateCapability(const csi::v1::VolumeCapability& cap, absl::string_view field);
// Parses "1Gi", "512Mi", "4096", "10G" into bytes.
absl::StatusOr<int64_t> ParseSize(absl::string_view text);

}  // namespace ublk_csi
