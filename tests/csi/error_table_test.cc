// Every error table of the CSI spec (v1, "<RPC> Errors"), one row per listed
// condition, against VolumeManager: the condition is set up, the RPC called,
// and the code must be the one the spec names. Where a request is wrong in
// two ways the spec's order is kept: an unknown volume is NOT_FOUND even
// when its path is malformed (NodeGetVolumeStats, NodeExpandVolume).
// Not covered here: ABORTED for a pending operation (per-volume locking has
// its own tests in volume_manager_test), the group-snapshot rows (no such
// service) and ControllerPublish (not offered).
#include <fcntl.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "tests/csi/manager_test_fixture.h"

namespace ublk_csi {
namespace {

using Code = absl::StatusCode;

struct Row {
  const char* rpc;
  const char* condition;
  Code want;
  std::function<absl::Status()> call;
};

class ErrorTable : public ManagerTest {
 protected:
  void SetUp() override {
    options_.online_expansion = false;  // for the "volume in use" rows
    ManagerTest::SetUp();
    mount_ = *Create("mount-vol", 8 * kMiB, MountCap("ext4"));
    block_ = *Create("block-vol", 8 * kMiB, BlockCap());
    staged_ = *Create("staged-vol", 8 * kMiB, MountCap("ext4"));
    ASSERT_TRUE(Stage(staged_, Path("stage")).ok());
    ASSERT_TRUE(Publish(staged_, Path("stage"), Path("pod")).ok());
    csi::v1::CreateSnapshotRequest sr;
    sr.set_name("snap-of-mount");
    sr.set_source_volume_id(mount_);
    snap_ = manager_->CreateSnapshot(sr)->snapshot().snapshot_id();
  }

  csi::v1::CreateVolumeRequest FromSnapshot(const std::string& name, const std::string& snap,
                                            int64_t bytes) {
    csi::v1::CreateVolumeRequest r = CreateReq(name, bytes, MountCap("ext4"));
    r.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
    return r;
  }
  csi::v1::CreateVolumeRequest FromVolume(const std::string& name, const std::string& vol,
                                          csi::v1::VolumeCapability cap) {
    csi::v1::CreateVolumeRequest r = CreateReq(name, 8 * kMiB, cap);
    r.mutable_volume_content_source()->mutable_volume()->set_volume_id(vol);
    return r;
  }
  csi::v1::ControllerExpandVolumeRequest Expand(const std::string& id, int64_t req,
                                                int64_t lim = 0) {
    csi::v1::ControllerExpandVolumeRequest r;
    r.set_volume_id(id);
    r.mutable_capacity_range()->set_required_bytes(req);
    r.mutable_capacity_range()->set_limit_bytes(lim);
    return r;
  }
  csi::v1::NodeExpandVolumeRequest NodeExpand(const std::string& id, const std::string& path,
                                              int64_t req = 0, int64_t lim = 0) {
    csi::v1::NodeExpandVolumeRequest r;
    r.set_volume_id(id);
    r.set_volume_path(path);
    r.mutable_capacity_range()->set_required_bytes(req);
    r.mutable_capacity_range()->set_limit_bytes(lim);
    return r;
  }
  csi::v1::NodeGetVolumeStatsRequest Stats(const std::string& id, const std::string& path) {
    csi::v1::NodeGetVolumeStatsRequest r;
    r.set_volume_id(id);
    r.set_volume_path(path);
    return r;
  }

  std::string mount_, block_, staged_, snap_;
};

TEST_F(ErrorTable, EveryRpcAnswersTheSpecsCodeForEachListedCondition) {
  auto& m = *manager_;
  std::vector<Row> rows = {
      // CreateVolume Errors
      {"CreateVolume", "missing name", Code::kInvalidArgument,
       [&] { return m.CreateVolume(CreateReq("", kMiB)).status(); }},
      {"CreateVolume", "source incompatible: mount volume from a raw block volume",
       Code::kInvalidArgument,
       [&] { return m.CreateVolume(FromVolume("c1", block_, MountCap())).status(); }},
      {"CreateVolume", "source incompatible: xfs from an ext4 filesystem", Code::kInvalidArgument,
       [&] { return m.CreateVolume(FromVolume("c2", staged_, MountCap("xfs"))).status(); }},
      {"CreateVolume", "source snapshot does not exist", Code::kNotFound,
       [&] { return m.CreateVolume(FromSnapshot("c3", "snap-none", 8 * kMiB)).status(); }},
      {"CreateVolume", "source volume does not exist", Code::kNotFound,
       [&] { return m.CreateVolume(FromVolume("c4", "vol-none", MountCap())).status(); }},
      {"CreateVolume", "name exists with another size", Code::kAlreadyExists,
       [&] {
         return m.CreateVolume(CreateReq("mount-vol", 64 * kMiB, MountCap("ext4"))).status();
       }},
      {"CreateVolume", "name exists, requisite topology without its node", Code::kAlreadyExists,
       [&] {
         auto r = CreateReq("mount-vol", 8 * kMiB, MountCap("ext4"));
         (*r.mutable_accessibility_requirements()
               ->add_requisite()
               ->mutable_segments())[kTopologyKey] = "node-b";
         return m.CreateVolume(r).status();
       }},
      {"CreateVolume", "unable to provision in accessible_topology", Code::kResourceExhausted,
       [&] {
         auto r = CreateReq("c5", 8 * kMiB);
         (*r.mutable_accessibility_requirements()
               ->add_requisite()
               ->mutable_segments())[kTopologyKey] = "node-b";
         return m.CreateVolume(r).status();
       }},
      {"CreateVolume", "capacity below the source snapshot", Code::kOutOfRange,
       [&] { return m.CreateVolume(FromSnapshot("c6", snap_, 4 * kMiB)).status(); }},
      {"CreateVolume", "capacity beyond int64 once aligned", Code::kOutOfRange,
       [&] { return m.CreateVolume(CreateReq("c7", INT64_MAX)).status(); }},
      // DeleteVolume Errors
      {"DeleteVolume", "volume in use", Code::kFailedPrecondition,
       [&] {
         csi::v1::DeleteVolumeRequest r;
         r.set_volume_id(staged_);
         return m.DeleteVolume(r).status();
       }},
      {"DeleteVolume", "does not exist: OK", Code::kOk,
       [&] {
         csi::v1::DeleteVolumeRequest r;
         r.set_volume_id("vol-none");
         return m.DeleteVolume(r).status();
       }},
      // ValidateVolumeCapabilities Errors
      {"ValidateVolumeCapabilities", "volume does not exist", Code::kNotFound,
       [&] {
         csi::v1::ValidateVolumeCapabilitiesRequest r;
         r.set_volume_id("vol-none");
         *r.add_volume_capabilities() = MountCap();
         return m.ValidateVolumeCapabilities(r).status();
       }},
      // ListVolumes / ListSnapshots Errors
      {"ListVolumes", "invalid starting_token", Code::kAborted,
       [&] {
         csi::v1::ListVolumesRequest r;
         r.set_starting_token("not-ours");
         return m.ListVolumes(r).status();
       }},
      {"ListSnapshots", "invalid starting_token", Code::kAborted,
       [&] {
         csi::v1::ListSnapshotsRequest r;
         r.set_starting_token("not-ours");
         return m.ListSnapshots(r).status();
       }},
      // CreateSnapshot Errors
      {"CreateSnapshot", "name exists for another volume", Code::kAlreadyExists,
       [&] {
         csi::v1::CreateSnapshotRequest r;
         r.set_name("snap-of-mount");
         r.set_source_volume_id(block_);
         return m.CreateSnapshot(r).status();
       }},
      {"CreateSnapshot", "not enough space", Code::kResourceExhausted,
       [&] {
         // Data in the backing file, no free space for its copy.
         auto rec = m.GetRecord(block_);
         int fd = ::open(store_->Abs(rec->backing_file()).c_str(), O_WRONLY);
         std::string data(64 * 1024, 'd');
         bool wrote = fd >= 0 && ::pwrite(fd, data.data(), data.size(), 0) ==
                                     static_cast<ssize_t>(data.size());
         if (fd >= 0) ::fsync(fd), ::close(fd);
         if (!wrote) return absl::InternalError("test setup: write");
         free_bytes_ = 4096;
         csi::v1::CreateSnapshotRequest r;
         r.set_name("snap-full");
         r.set_source_volume_id(block_);
         absl::Status s = m.CreateSnapshot(r).status();
         free_bytes_ = int64_t{1} << 40;
         return s;
       }},
      // DeleteSnapshot: unknown is success
      {"DeleteSnapshot", "does not exist: OK", Code::kOk,
       [&] {
         csi::v1::DeleteSnapshotRequest r;
         r.set_snapshot_id("snap-none");
         return m.DeleteSnapshot(r).status();
       }},
      // ControllerExpandVolume Errors
      {"ControllerExpandVolume", "exceeds capabilities (block access, mount volume)",
       Code::kInvalidArgument,
       [&] {
         auto r = Expand(mount_, 16 * kMiB);
         *r.mutable_volume_capability() = BlockCap();
         return m.ControllerExpandVolume(r).status();
       }},
      {"ControllerExpandVolume", "volume does not exist", Code::kNotFound,
       [&] { return m.ControllerExpandVolume(Expand("vol-none", 16 * kMiB)).status(); }},
      {"ControllerExpandVolume", "volume in use, OFFLINE expansion only", Code::kFailedPrecondition,
       [&] { return m.ControllerExpandVolume(Expand(staged_, 16 * kMiB)).status(); }},
      {"ControllerExpandVolume", "unsupported capacity_range (already above limit)",
       Code::kOutOfRange,
       [&] { return m.ControllerExpandVolume(Expand(mount_, 4 * kMiB, 4 * kMiB)).status(); }},
      {"ControllerExpandVolume", "unsupported capacity_range (beyond int64)", Code::kOutOfRange,
       [&] { return m.ControllerExpandVolume(Expand(mount_, INT64_MAX - 100)).status(); }},
      // NodeStageVolume Errors
      {"NodeStageVolume", "volume does not exist", Code::kNotFound,
       [&] { return Stage("vol-none", Path("s1")); }},
      {"NodeStageVolume", "staged there but incompatible", Code::kAlreadyExists,
       [&] { return Stage(staged_, Path("stage"), MountCap("xfs")); }},
      {"NodeStageVolume", "exceeds capabilities (block access, mount volume)",
       Code::kFailedPrecondition, [&] { return Stage(mount_, Path("s2"), BlockCap()); }},
      // NodeUnstageVolume Errors
      {"NodeUnstageVolume", "volume does not exist", Code::kNotFound,
       [&] {
         csi::v1::NodeUnstageVolumeRequest r;
         r.set_volume_id("vol-none");
         r.set_staging_target_path(Path("s1"));
         return m.NodeUnstageVolume(r).status();
       }},
      // NodePublishVolume Errors
      {"NodePublishVolume", "volume does not exist", Code::kNotFound,
       [&] { return Publish("vol-none", Path("stage"), Path("pod2")); }},
      {"NodePublishVolume", "published there but incompatible (readonly)", Code::kAlreadyExists,
       [&] { return Publish(staged_, Path("stage"), Path("pod"), /*readonly=*/true); }},
      {"NodePublishVolume", "exceeds capabilities (block access, mount volume)",
       Code::kFailedPrecondition,
       [&] { return Publish(staged_, Path("stage"), Path("pod3"), false, BlockCap()); }},
      {"NodePublishVolume", "staging target path not set (STAGE_UNSTAGE_VOLUME)",
       Code::kFailedPrecondition, [&] { return Publish(staged_, "", Path("pod4")); }},
      {"NodePublishVolume", "staging target path not set, volume not staged",
       Code::kFailedPrecondition, [&] { return Publish(mount_, "", Path("pod5")); }},
      // NodeUnpublishVolume Errors
      {"NodeUnpublishVolume", "volume does not exist", Code::kNotFound,
       [&] {
         csi::v1::NodeUnpublishVolumeRequest r;
         r.set_volume_id("vol-none");
         r.set_target_path(Path("pod"));
         return m.NodeUnpublishVolume(r).status();
       }},
      // NodeGetVolumeStats Errors
      {"NodeGetVolumeStats", "volume does not exist", Code::kNotFound,
       [&] { return m.NodeGetVolumeStats(Stats("vol-none", Path("pod"))).status(); }},
      {"NodeGetVolumeStats", "volume does not exist (relative volume_path)", Code::kNotFound,
       [&] { return m.NodeGetVolumeStats(Stats("vol-none", "relative/path")).status(); }},
      {"NodeGetVolumeStats", "volume does not exist on volume_path", Code::kNotFound,
       [&] { return m.NodeGetVolumeStats(Stats(staged_, Path("elsewhere"))).status(); }},
      // csi-sanity's "should fail when volume does not exist on the specified
      // path" asks with the relative path "some/path".
      {"NodeGetVolumeStats", "volume does not exist on a relative volume_path", Code::kNotFound,
       [&] { return m.NodeGetVolumeStats(Stats(staged_, "some/path")).status(); }},
      // NodeExpandVolume Errors
      {"NodeExpandVolume", "exceeds capabilities (block access, mount volume)",
       Code::kInvalidArgument,
       [&] {
         auto r = NodeExpand(staged_, Path("pod"));
         *r.mutable_volume_capability() = BlockCap();
         return m.NodeExpandVolume(r).status();
       }},
      {"NodeExpandVolume", "volume does not exist", Code::kNotFound,
       [&] { return m.NodeExpandVolume(NodeExpand("vol-none", Path("pod"))).status(); }},
      {"NodeExpandVolume", "volume does not exist (relative volume_path)", Code::kNotFound,
       [&] { return m.NodeExpandVolume(NodeExpand("vol-none", "relative/path")).status(); }},
      {"NodeExpandVolume", "unsupported capacity_range (beyond the volume)", Code::kOutOfRange,
       [&] { return m.NodeExpandVolume(NodeExpand(staged_, Path("pod"), 64 * kMiB)).status(); }},
      {"NodeExpandVolume", "unsupported capacity_range (volume above limit)", Code::kOutOfRange,
       [&] {
         return m.NodeExpandVolume(NodeExpand(staged_, Path("pod"), 4 * kMiB, 4 * kMiB)).status();
       }},
  };
  for (const Row& row : rows) {
    absl::Status s = row.call();
    EXPECT_EQ(s.code(), row.want) << row.rpc << ": " << row.condition << ": got " << s;
  }
}

// Missing required fields come before any lookup: INVALID_ARGUMENT names
// the field even when the volume is unknown.
TEST_F(ErrorTable, MissingFieldsAreInvalidArgumentFirst) {
  auto& m = *manager_;
  EXPECT_EQ(m.NodeGetVolumeStats(Stats("vol-none", "")).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(m.NodeGetVolumeStats(Stats("", Path("pod"))).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(m.NodeExpandVolume(NodeExpand("vol-none", "")).status().code(), Code::kInvalidArgument);
  // A malformed path of a volume that exists stays INVALID_ARGUMENT for
  // NodeExpandVolume; NodeGetVolumeStats answers NOT_FOUND for any path the
  // volume is not at (its table above; csi-sanity checks it).
  EXPECT_EQ(m.NodeExpandVolume(NodeExpand(staged_, "relative")).status().code(),
            Code::kInvalidArgument);
}

}  // namespace
}  // namespace ublk_csi
