// RBD volumes through the VolumeManager, over the fake cluster (csi/
// fake_rbd_admin.h), the fake backend and the fake mounter: controller
// calls (create/delete/snapshot/restore/clone/expand/capacity), node
// stage/unstage with the multi-attach lock and the kept credentials,
// recovery after a restart without NodeStage, and the secret never showing
// up in logs, records, files or errors.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "csi/fake_rbd_admin.h"
#include "csi/rpc_logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/manager_test_fixture.h"
#include "tests/testing/log_capture.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kMons[] = "10.0.0.1:6789,10.0.0.2:6789";
constexpr char kUser[] = "kubernetes";
// Looks like a cephx key; distinctive so a leak anywhere is found.
constexpr char kKey[] = "AQBsEcReTkEyXyZ0123456789abcdefghijkLMN==";

ParamMap RbdParams() {
  ParamMap p;
  p["backend"] = "rbd";
  p["clusterID"] = "ceph-a";
  p["monitors"] = kMons;
  p["pool"] = "kube";
  return p;
}

template <typename Req>
void AddSecrets(Req* r, const std::string& key = kKey) {
  (*r->mutable_secrets())["userID"] = kUser;
  (*r->mutable_secrets())["userKey"] = key;
}

class RbdVolumeTest : public ManagerTest {
 protected:
  void SetUp() override {
    cluster_.AddUser(kUser, kKey);
    admin_ = std::make_unique<FakeRbdAdmin>(&cluster_);
    options_.rbd_admin = admin_.get();
    ManagerTest::SetUp();
  }

  // A plugin restart: a new process is a new rados client.
  void RestartPlugin() {
    manager_.reset();
    admin_ = std::make_unique<FakeRbdAdmin>(&cluster_);
    options_.rbd_admin = admin_.get();
    backend_ = std::make_unique<FakeVolumeBackend>(dev_, 64);  // exports live in the process
    Restart();
  }

  csi::v1::CreateVolumeRequest RbdCreate(const std::string& name, int64_t bytes,
                                         csi::v1::VolumeCapability cap = MountCap()) {
    csi::v1::CreateVolumeRequest r = CreateReq(name, bytes, cap);
    *r.mutable_parameters() = RbdParams();
    AddSecrets(&r);
    return r;
  }

  absl::StatusOr<csi::v1::Volume> CreateRbd(const std::string& name, int64_t bytes) {
    auto r = manager_->CreateVolume(RbdCreate(name, bytes));
    if (!r.ok()) return r.status();
    return r->volume();
  }

  absl::Status StageRbd(VolumeManager* m, const csi::v1::Volume& vol, const std::string& staging,
                        const std::string& key = kKey) {
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id(vol.volume_id());
    r.set_staging_target_path(staging);
    *r.mutable_volume_capability() = MountCap();
    *r.mutable_volume_context() = vol.volume_context();
    AddSecrets(&r, key);
    return m->NodeStageVolume(r).status();
  }

  absl::Status Unstage(VolumeManager* m, const std::string& id, const std::string& staging) {
    csi::v1::NodeUnstageVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    return m->NodeUnstageVolume(r).status();
  }

  std::string CredFile() { return data_ + "/credentials/ceph-a.cred"; }

  static csi::v1::CreateSnapshotRequest SnapshotReq(const std::string& name,
                                                    const std::string& volume_id) {
    csi::v1::CreateSnapshotRequest r;
    r.set_name(name);
    r.set_source_volume_id(volume_id);
    AddSecrets(&r);
    return r;
  }
  static csi::v1::ControllerExpandVolumeRequest ExpandReq(const std::string& volume_id,
                                                          int64_t bytes) {
    csi::v1::ControllerExpandVolumeRequest r;
    r.set_volume_id(volume_id);
    r.mutable_capacity_range()->set_required_bytes(bytes);
    AddSecrets(&r);
    return r;
  }

  FakeRbdCluster cluster_{kMons, {"kube", "kube-ec"}};
  std::unique_ptr<FakeRbdAdmin> admin_;
};

// A second node: its own data dir, devices, mounter and rados client.
struct OtherNode {
  OtherNode(const std::string& root, FakeRbdCluster* cluster, const std::string& node_id,
            std::map<std::string, std::string> clusters = {})
      : admin(cluster) {
    ::mkdir(root.c_str(), 0700);
    ::mkdir((root + "/dev").c_str(), 0700);
    backend = std::make_unique<FakeVolumeBackend>(root + "/dev", 64);
    store = *RecordStore::Open(root + "/data", nullptr);
    VolumeManagerOptions o;
    o.node_id = node_id;
    o.free_bytes = []() -> absl::StatusOr<int64_t> { return int64_t{1} << 40; };
    o.rbd_admin = &admin;
    o.rbd_cluster_monitors = std::move(clusters);
    manager = std::make_unique<VolumeManager>(o, store.get(), backend.get(), &mounter);
    EXPECT_TRUE(manager->Load().ok());
  }
  FakeRbdAdmin admin;
  FakeMounter mounter;
  std::unique_ptr<FakeVolumeBackend> backend;
  std::unique_ptr<RecordStore> store;
  std::unique_ptr<VolumeManager> manager;
};

TEST_F(RbdVolumeTest, CreateMakesTheImageAndNoTopology) {
  csi::v1::CreateVolumeRequest req = RbdCreate("pvc-1", 3 * kGiB);
  (*req.mutable_parameters())["dataPool"] = "kube-ec";
  (*req.mutable_parameters())["imageFeatures"] = "layering,exclusive-lock";
  auto resp = manager_->CreateVolume(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  const csi::v1::Volume& v = resp->volume();
  const std::string image = ImageNameFor("pvc-1");
  EXPECT_EQ(v.volume_id(), "rbd.ceph-a.kube." + image);
  EXPECT_EQ(v.capacity_bytes(), 3 * kGiB);
  EXPECT_EQ(v.accessible_topology_size(), 0);
  EXPECT_EQ(v.volume_context().at("monitors"), kMons);
  EXPECT_EQ(v.volume_context().at("imageName"), image);
  EXPECT_EQ(v.volume_context().at("dataPool"), "kube-ec");
  std::optional<FakeRbdCluster::Image> img = cluster_.GetImage("kube", image);
  ASSERT_TRUE(img.has_value());
  EXPECT_EQ(img->size, 3 * kGiB);
  EXPECT_EQ(img->features, kRbdLayering | kRbdExclusiveLock);
  EXPECT_EQ(img->data_pool, "kube-ec");
  auto rec = manager_->GetRecord(v.volume_id());
  ASSERT_TRUE(rec.ok());
  EXPECT_TRUE(rec->backing_file().empty());
  EXPECT_EQ(rec->rbd().image(), image);
  // A topology requirement naming another node does not matter to RBD.
  csi::v1::CreateVolumeRequest other = RbdCreate("pvc-2", kGiB);
  (*other.mutable_accessibility_requirements()->add_requisite()->mutable_segments())[kTopologyKey] =
      "node-z";
  EXPECT_TRUE(manager_->CreateVolume(other).ok());
}

TEST_F(RbdVolumeTest, CreateIsIdempotentEvenWithoutTheRecord) {
  auto a = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->volume_id(), b->volume_id());
  // The process died after making the image, before writing the record.
  ASSERT_TRUE(store_->DeleteVolume(a->volume_id()).ok());
  Restart();
  auto c = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->volume_id(), a->volume_id());
  // A different size for the same name is not the same volume.
  EXPECT_EQ(CreateRbd("pvc-1", 2 * kGiB).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(RbdVolumeTest, BadRequestsNameTheProblem) {
  csi::v1::CreateVolumeRequest r = RbdCreate("pvc-1", kGiB);
  r.mutable_secrets()->erase("userKey");
  auto s = manager_->CreateVolume(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("secrets.userKey"));
  r = RbdCreate("pvc-1", kGiB);
  (*r.mutable_parameters())["imageFeatures"] = "layering,journaling";
  s = manager_->CreateVolume(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("parameters.imageFeatures"));
  r = RbdCreate("pvc-1", kGiB);
  (*r.mutable_parameters())["overcommitRatio"] = "2";
  s = manager_->CreateVolume(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("overcommitRatio"));
  r = RbdCreate("pvc-1", kGiB);
  (*r.mutable_parameters())["pool"] = "nosuchpool";
  EXPECT_EQ(manager_->CreateVolume(r).status().code(), absl::StatusCode::kNotFound);
  cluster_.SetReachable(false);
  s = CreateRbd("pvc-1", kGiB).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("monitors unreachable"));
  cluster_.SetReachable(true);
  // A plugin started without --rbd.
  options_.rbd_admin = nullptr;
  Restart();
  s = CreateRbd("pvc-1", kGiB).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("--rbd"));
}

TEST_F(RbdVolumeTest, DeleteTrashesTheImageAndIsIdempotent) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  csi::v1::DeleteVolumeRequest d;
  d.set_volume_id(v->volume_id());
  auto s = manager_->DeleteVolume(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("secrets.userID"));
  AddSecrets(&d);
  cluster_.FailNext("remove", absl::UnavailableError("osd timeout"));
  EXPECT_EQ(manager_->DeleteVolume(d).status().code(), absl::StatusCode::kUnavailable);
  // The interrupted delete survives a restart and the retry finishes it.
  Restart();
  EXPECT_TRUE(manager_->DeleteVolume(d).ok());
  EXPECT_FALSE(cluster_.HasImage("kube", ImageNameFor("pvc-1")));
  EXPECT_FALSE(manager_->GetRecord(v->volume_id()).ok());
  EXPECT_TRUE(manager_->DeleteVolume(d).ok());
  d.set_volume_id("rbd.ceph-a.kube.csi-vol-0000000000000000");
  EXPECT_TRUE(manager_->DeleteVolume(d).ok());
}

// A controller pod replaced (its data dir an emptyDir): it has no record of
// the volume. With --rbd-clusters-file naming the cluster, DeleteVolume still
// trashes the image (with the request's secrets); without, it is a logged
// no-op and the image stays (what happened before the file existed).
TEST_F(RbdVolumeTest, DeleteWithoutARecordUsesTheClustersFile) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  csi::v1::DeleteVolumeRequest d;
  d.set_volume_id(v->volume_id());
  AddSecrets(&d);
  OtherNode blind(Path("ctl-a"), &cluster_, "ctl-a");
  EXPECT_TRUE(blind.manager->DeleteVolume(d).ok());
  EXPECT_TRUE(cluster_.HasImage("kube", ImageNameFor("pvc-1")));
  OtherNode ctl(Path("ctl-b"), &cluster_, "ctl-b", {{"ceph-a", kMons}});
  csi::v1::DeleteVolumeRequest no_secrets;
  no_secrets.set_volume_id(v->volume_id());
  EXPECT_EQ(ctl.manager->DeleteVolume(no_secrets).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ctl.manager->DeleteVolume(d).ok());
  EXPECT_FALSE(cluster_.HasImage("kube", ImageNameFor("pvc-1")));
  EXPECT_TRUE(ctl.manager->DeleteVolume(d).ok());               // gone: still success
  d.set_volume_id("rbd.ceph-b.kube.csi-vol-0000000000000000");  // a cluster not in the file
  EXPECT_TRUE(ctl.manager->DeleteVolume(d).ok());
}

TEST_F(RbdVolumeTest, SnapshotRestoreAndCloneAreFlattenedClones) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  csi::v1::CreateSnapshotRequest sr;
  sr.set_name("snap-1");
  sr.set_source_volume_id(v->volume_id());
  EXPECT_EQ(manager_->CreateSnapshot(sr).status().code(), absl::StatusCode::kInvalidArgument);
  AddSecrets(&sr);
  auto snap = manager_->CreateSnapshot(sr);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_TRUE(snap->snapshot().ready_to_use());
  auto img = cluster_.GetImage("kube", ImageNameFor("pvc-1"));
  ASSERT_TRUE(img && img->snaps.count(SnapNameFor("snap-1")));
  EXPECT_TRUE(img->snaps.at(SnapNameFor("snap-1")).is_protected);
  auto again = manager_->CreateSnapshot(sr);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->snapshot().snapshot_id(), snap->snapshot().snapshot_id());

  // Restore; the first attempt dies in the middle of the flatten.
  csi::v1::CreateVolumeRequest restore = RbdCreate("pvc-2", 2 * kGiB);
  restore.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      snap->snapshot().snapshot_id());
  admin_->CrashInNextFlatten();
  EXPECT_FALSE(manager_->CreateVolume(restore).ok());
  ASSERT_FALSE(cluster_.GetImage("kube", ImageNameFor("pvc-2"))->parent.empty());
  auto restored = manager_->CreateVolume(restore);
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto rimg = cluster_.GetImage("kube", ImageNameFor("pvc-2"));
  EXPECT_TRUE(rimg->parent.empty()) << "restores are flattened";
  EXPECT_EQ(rimg->size, 2 * kGiB);
  EXPECT_EQ(restored->volume().content_source().snapshot().snapshot_id(),
            snap->snapshot().snapshot_id());

  // Clone a volume: a temporary snapshot, gone once the clone is flat.
  csi::v1::CreateVolumeRequest clone = RbdCreate("pvc-3", kGiB);
  clone.mutable_volume_content_source()->mutable_volume()->set_volume_id(v->volume_id());
  auto cloned = manager_->CreateVolume(clone);
  ASSERT_TRUE(cloned.ok()) << cloned.status();
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-3"))->parent.empty());
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->snaps.size(), 1u);

  // Snapshots stay deletable whatever was restored from them.
  csi::v1::DeleteSnapshotRequest ds;
  ds.set_snapshot_id(snap->snapshot().snapshot_id());
  AddSecrets(&ds);
  ASSERT_TRUE(manager_->DeleteSnapshot(ds).ok());
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->snaps.empty());
  EXPECT_TRUE(manager_->DeleteSnapshot(ds).ok());
}

// A controller pod replaced, its data dir (an emptyDir) gone with it: the
// volume and snapshot IDs name their images, so snapshot, restore, clone,
// expand and delete still work from the IDs, the request's secrets and (for
// the calls that carry no StorageClass) --rbd-clusters-file.
TEST_F(RbdVolumeTest, AControllerWithoutRecordsWorksFromTheIds) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  csi::v1::CreateSnapshotRequest sr = SnapshotReq("snap-1", v->volume_id());
  auto snap = manager_->CreateSnapshot(sr);
  ASSERT_TRUE(snap.ok()) << snap.status();
  const std::string snap_id = snap->snapshot().snapshot_id();
  EXPECT_EQ(snap_id, v->volume_id() + "." + SnapNameFor("snap-1"));
  // The volume grows after its snapshot: a restore still gets the
  // snapshot's size, not the image's.
  csi::v1::ControllerExpandVolumeRequest ex = ExpandReq(v->volume_id(), 2 * kGiB);
  ASSERT_TRUE(manager_->ControllerExpandVolume(ex).ok());

  OtherNode ctl(Path("ctl-b"), &cluster_, "ctl-b", {{"ceph-a", kMons}});
  // Restore: the StorageClass names the cluster; the snapshot is looked up
  // in it, with its own size.
  csi::v1::CreateVolumeRequest small = RbdCreate("pvc-small", kGiB / 2);
  small.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap_id);
  EXPECT_EQ(ctl.manager->CreateVolume(small).status().code(), absl::StatusCode::kOutOfRange);
  csi::v1::CreateVolumeRequest restore = RbdCreate("pvc-2", kGiB);
  restore.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap_id);
  auto restored = ctl.manager->CreateVolume(restore);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-2"))->size, kGiB);
  EXPECT_EQ(restored->volume().content_source().snapshot().snapshot_id(), snap_id);
  // Gone from the cluster, or of another cluster: said so.
  csi::v1::CreateVolumeRequest missing = RbdCreate("pvc-3", kGiB);
  missing.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      v->volume_id() + "." + SnapNameFor("never-taken"));
  absl::Status s = ctl.manager->CreateVolume(missing).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr(SnapNameFor("never-taken")));
  csi::v1::CreateVolumeRequest elsewhere = RbdCreate("pvc-4", kGiB);
  elsewhere.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      "rbd.ceph-b.kube." + ImageNameFor("pvc-1") + "." + SnapNameFor("snap-1"));
  s = ctl.manager->CreateVolume(elsewhere).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("cluster ceph-b"));
  // A file-volume StorageClass is told what the snapshot is.
  csi::v1::CreateVolumeRequest as_file = CreateReq("file-1", kGiB);
  as_file.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap_id);
  s = ctl.manager->CreateVolume(as_file).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("RBD volume"));

  // Clone, snapshot and expand a volume this controller has no record of.
  csi::v1::CreateVolumeRequest clone = RbdCreate("pvc-5", 2 * kGiB);
  clone.mutable_volume_content_source()->mutable_volume()->set_volume_id(v->volume_id());
  auto cloned = ctl.manager->CreateVolume(clone);
  ASSERT_TRUE(cloned.ok()) << cloned.status();
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-5"))->size, 2 * kGiB);
  csi::v1::CreateSnapshotRequest sr2 = sr;
  sr2.set_name("snap-2");
  auto snap2 = ctl.manager->CreateSnapshot(sr2);
  ASSERT_TRUE(snap2.ok()) << snap2.status();
  EXPECT_EQ(snap2->snapshot().size_bytes(), 2 * kGiB);
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->snaps.count(SnapNameFor("snap-2")));
  ex.mutable_capacity_range()->set_required_bytes(3 * kGiB);
  auto grown = ctl.manager->ControllerExpandVolume(ex);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->capacity_bytes(), 3 * kGiB);
  EXPECT_TRUE(grown->node_expansion_required());
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->size, 3 * kGiB);
  csi::v1::ControllerExpandVolumeRequest ex_gone = ex;
  ex_gone.set_volume_id("rbd.ceph-a.kube." + ImageNameFor("pvc-never"));
  EXPECT_EQ(ctl.manager->ControllerExpandVolume(ex_gone).status().code(),
            absl::StatusCode::kNotFound);

  // Delete the snapshots, idempotently, each from a controller that never
  // saw it.
  int n = 0;
  for (const std::string& id : {snap_id, snap2->snapshot().snapshot_id()}) {
    csi::v1::DeleteSnapshotRequest ds;
    ds.set_snapshot_id(id);
    AddSecrets(&ds);
    OtherNode fresh(Path("ctl-fresh-" + std::to_string(n++)), &cluster_, "ctl-c",
                    {{"ceph-a", kMons}});
    ASSERT_TRUE(fresh.manager->DeleteSnapshot(ds).ok());
    EXPECT_TRUE(fresh.manager->DeleteSnapshot(ds).ok());
  }
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->snaps.empty());
}

// Without --rbd-clusters-file a controller that lost its records cannot
// reach a volume's cluster for the calls that carry no StorageClass: it
// says so (and a delete stays a logged no-op); restores still work.
TEST_F(RbdVolumeTest, WithoutTheClustersFileALostRecordIsNamed) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  auto snap = manager_->CreateSnapshot(SnapshotReq("snap-1", v->volume_id()));
  ASSERT_TRUE(snap.ok()) << snap.status();
  OtherNode blind(Path("ctl-a"), &cluster_, "ctl-a");
  absl::Status s =
      blind.manager->ControllerExpandVolume(ExpandReq(v->volume_id(), 2 * kGiB)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("--rbd-clusters-file"));
  csi::v1::DeleteSnapshotRequest ds;
  ds.set_snapshot_id(snap->snapshot().snapshot_id());
  AddSecrets(&ds);
  EXPECT_TRUE(blind.manager->DeleteSnapshot(ds).ok());
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->snaps.count(SnapNameFor("snap-1")));
  csi::v1::CreateVolumeRequest restore = RbdCreate("pvc-2", kGiB);
  restore.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      snap->snapshot().snapshot_id());
  EXPECT_TRUE(blind.manager->CreateVolume(restore).ok());
}

TEST_F(RbdVolumeTest, FileAndRbdSourcesDoNotMix) {
  auto file_vol = Create("file-1", kGiB);
  ASSERT_TRUE(file_vol.ok());
  csi::v1::CreateVolumeRequest r = RbdCreate("pvc-x", kGiB);
  r.mutable_volume_content_source()->mutable_volume()->set_volume_id(*file_vol);
  auto s = manager_->CreateVolume(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("node-local file volume"));
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  csi::v1::CreateVolumeRequest f = CreateReq("file-2", kGiB);
  f.mutable_volume_content_source()->mutable_volume()->set_volume_id(v->volume_id());
  s = manager_->CreateVolume(f).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("RBD volume"));
}

TEST_F(RbdVolumeTest, ExpandGrowsTheImageThenTheNodeDevice) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  csi::v1::ControllerExpandVolumeRequest e;
  e.set_volume_id(v->volume_id());
  e.mutable_capacity_range()->set_required_bytes(2 * kGiB);
  EXPECT_EQ(manager_->ControllerExpandVolume(e).status().code(),
            absl::StatusCode::kInvalidArgument);  // no secrets
  AddSecrets(&e);
  auto er = manager_->ControllerExpandVolume(e);
  ASSERT_TRUE(er.ok()) << er.status();
  EXPECT_EQ(er->capacity_bytes(), 2 * kGiB);
  EXPECT_TRUE(er->node_expansion_required());
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->size, 2 * kGiB);
  csi::v1::NodeExpandVolumeRequest ne;
  ne.set_volume_id(v->volume_id());
  ne.set_volume_path(Path("stage/pvc-1"));
  ne.mutable_capacity_range()->set_required_bytes(2 * kGiB);
  auto nr = manager_->NodeExpandVolume(ne);
  ASSERT_TRUE(nr.ok()) << nr.status();
  EXPECT_EQ(nr->capacity_bytes(), 2 * kGiB);
}

TEST_F(RbdVolumeTest, NodeExpandLearnsTheSizeFromTheCluster) {
  // Controller elsewhere: this node only has its attach-only record.
  OtherNode ctl(Path("ctl"), &cluster_, "ctl-node");
  auto made = ctl.manager->CreateVolume(RbdCreate("pvc-1", kGiB));
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_TRUE(StageRbd(manager_.get(), made->volume(), Path("stage/pvc-1")).ok());
  csi::v1::ControllerExpandVolumeRequest e;
  e.set_volume_id(made->volume().volume_id());
  e.mutable_capacity_range()->set_required_bytes(3 * kGiB);
  AddSecrets(&e);
  ASSERT_TRUE(ctl.manager->ControllerExpandVolume(e).ok());
  csi::v1::NodeExpandVolumeRequest ne;
  ne.set_volume_id(made->volume().volume_id());
  ne.set_volume_path(Path("stage/pvc-1"));
  ne.mutable_capacity_range()->set_required_bytes(3 * kGiB);
  auto nr = manager_->NodeExpandVolume(ne);
  ASSERT_TRUE(nr.ok()) << nr.status();
  EXPECT_EQ(nr->capacity_bytes(), 3 * kGiB);
  EXPECT_EQ(manager_->GetRecord(made->volume().volume_id())->capacity_bytes(), 3 * kGiB);
}

TEST_F(RbdVolumeTest, GetCapacityIsNotTrackedForRbd) {
  csi::v1::GetCapacityRequest g;
  *g.mutable_parameters() = RbdParams();
  auto r = manager_->GetCapacity(g);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->available_capacity(), 0);
  EXPECT_FALSE(r->has_maximum_volume_size());
  (*g.mutable_parameters())["pool"] = "";
  EXPECT_EQ(manager_->GetCapacity(g).status().code(), absl::StatusCode::kInvalidArgument);
  // File classes still report the data dir's pool.
  csi::v1::GetCapacityRequest f;
  EXPECT_GT(manager_->GetCapacity(f)->available_capacity(), 0);
}

TEST_F(RbdVolumeTest, StageLocksKeepsCredentialsApartAndUnstageUndoesBoth) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  const std::string staging = Path("stage/pvc-1");
  csi::v1::NodeStageVolumeRequest no_secret;
  no_secret.set_volume_id(v->volume_id());
  no_secret.set_staging_target_path(staging);
  *no_secret.mutable_volume_capability() = MountCap();
  EXPECT_EQ(manager_->NodeStageVolume(no_secret).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(StageRbd(manager_.get(), *v, staging).ok());
  auto img = cluster_.GetImage("kube", ImageNameFor("pvc-1"));
  ASSERT_EQ(img->lockers.size(), 1u);
  EXPECT_EQ(img->lockers[0].cookie, "ublk-csi:node-a");
  struct stat st;
  ASSERT_EQ(::stat(CredFile().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(backend_->LastSpec(v->volume_id()).rbd->key, kKey);
  EXPECT_EQ(backend_->LastSpec(v->volume_id()).rbd->image, ImageNameFor("pvc-1"));
  // Staging again (kubelet repeats it) is fine.
  EXPECT_TRUE(StageRbd(manager_.get(), *v, staging).ok());
  ASSERT_TRUE(Unstage(manager_.get(), v->volume_id(), staging).ok());
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers.empty());
  EXPECT_NE(::stat(CredFile().c_str(), &st), 0) << "credentials outlive the last staged volume";
}

// The kept credentials bring every staged volume of a cluster back after a
// restart, so a node serves a cluster as one cephx user: a stage as another
// user while the first has volumes staged is refused, naming both users and
// the way out; once they are unstaged the new user takes over.
TEST_F(RbdVolumeTest, ASecondCephxUserOfAClusterIsRefusedWhileTheFirstHasVolumesStaged) {
  cluster_.AddUser("tenant-b", "AQBtenantBkey000000000000000000000000000==");
  auto v1 = CreateRbd("pvc-1", kGiB);
  auto v2 = CreateRbd("pvc-2", kGiB);
  ASSERT_TRUE(v1.ok() && v2.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v1, Path("stage/pvc-1")).ok());
  csi::v1::NodeStageVolumeRequest r;
  r.set_volume_id(v2->volume_id());
  r.set_staging_target_path(Path("stage/pvc-2"));
  *r.mutable_volume_capability() = MountCap();
  *r.mutable_volume_context() = v2->volume_context();
  (*r.mutable_secrets())["userID"] = "tenant-b";
  (*r.mutable_secrets())["userKey"] = "AQBtenantBkey000000000000000000000000000==";
  absl::Status s = manager_->NodeStageVolume(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("staged as cephx user kubernetes"));
  EXPECT_THAT(s.message(), HasSubstr("user tenant-b"));
  EXPECT_THAT(s.message(), HasSubstr("clusterID of its own"));
  EXPECT_THAT(s.message(), Not(HasSubstr("tenantBkey")));
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-2"))->lockers.empty());
  // The refused stage left the kept user alone: pvc-1 still comes back.
  RestartPlugin();
  auto back = manager_->RecoverExport(v1->volume_id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(backend_->LastSpec(v1->volume_id()).rbd->key, kKey);
  ASSERT_TRUE(Unstage(manager_.get(), v1->volume_id(), Path("stage/pvc-1")).ok());
  auto staged = manager_->NodeStageVolume(r);
  EXPECT_TRUE(staged.ok()) << staged.status();
}

TEST_F(RbdVolumeTest, StageTakesTheContextKubeletPasses) {
  // kubelet's volume_context is the PV's volumeAttributes: the volume's
  // context plus csi-provisioner's identity.
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  (*v->mutable_volume_context())["storage.kubernetes.io/csiProvisionerIdentity"] =
      "1764892612345-8081-rbd.ublk.csi.io";
  EXPECT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
}

TEST_F(RbdVolumeTest, ASecondNodeCannotStageWhatOneHolds) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  OtherNode b(Path("node-b"), &cluster_, "node-b");
  absl::Status s = StageRbd(b.manager.get(), *v, Path("node-b/stage"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("staged on another node"));
  EXPECT_THAT(s.message(), HasSubstr("ublk-csi:node-a"));
  EXPECT_EQ(b.backend->export_count(), 0);
  EXPECT_FALSE(b.manager->GetRecord(v->volume_id()).ok()) << "failed stage leaves no record";
  ASSERT_TRUE(Unstage(manager_.get(), v->volume_id(), Path("stage/pvc-1")).ok());
  ASSERT_TRUE(StageRbd(b.manager.get(), *v, Path("node-b/stage")).ok());
  auto rec = b.manager->GetRecord(v->volume_id());
  ASSERT_TRUE(rec.ok());
  EXPECT_TRUE(rec->attach_only());
  ASSERT_TRUE(Unstage(b.manager.get(), v->volume_id(), Path("node-b/stage")).ok());
  EXPECT_FALSE(b.manager->GetRecord(v->volume_id()).ok()) << "attach-only record forgotten";
}

TEST_F(RbdVolumeTest, RestartRecoversWithoutNodeStageAndUnstageReleasesTheOldLock) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  const std::string old_client = admin_->client();
  RestartPlugin();
  EXPECT_EQ(backend_->export_count(), 0);
  auto info = manager_->RecoverExport(v->volume_id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(backend_->LastSpec(v->volume_id()).rbd->key, kKey) << "from the kept credentials";
  // The recovery took over this node's stage lock from the earlier
  // process's client (the real admin blocklists that client as it breaks
  // the lock, so librbd's exclusive lock passes on at once).
  ASSERT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers.size(), 1u);
  EXPECT_NE(old_client, admin_->client());
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers[0].client, admin_->client());
  // A repeated NodeStage after the restart keeps it.
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  EXPECT_EQ(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers[0].client, admin_->client());
  RestartPlugin();
  ASSERT_TRUE(manager_->RecoverExport(v->volume_id()).ok());
  ASSERT_TRUE(Unstage(manager_.get(), v->volume_id(), Path("stage/pvc-1")).ok());
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers.empty());
  OtherNode b(Path("node-b"), &cluster_, "node-b");
  EXPECT_TRUE(StageRbd(b.manager.get(), *v, Path("node-b/stage")).ok());
}

TEST_F(RbdVolumeTest, RecoveryWithoutKeptCredentialsSaysWhatToDo) {
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  ASSERT_EQ(::unlink(CredFile().c_str()), 0);
  RestartPlugin();
  auto info = manager_->RecoverExport(v->volume_id());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(info.status().message(), HasSubstr("stage the volume again"));
  EXPECT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
}

TEST_F(RbdVolumeTest, TheKeyNeverShowsInLogsRecordsFilesOrErrors) {
  FLAGS_v = 2;  // VLOG lines too
  ublk_test::LogCapture logs;
  std::vector<std::string> errors;
  auto note = [&](const absl::Status& s) {
    if (!s.ok()) errors.emplace_back(s.ToString());
  };
  auto v = CreateRbd("pvc-1", kGiB);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(StageRbd(manager_.get(), *v, Path("stage/pvc-1")).ok());
  csi::v1::CreateSnapshotRequest sr;
  sr.set_name("snap-1");
  sr.set_source_volume_id(v->volume_id());
  AddSecrets(&sr);
  auto snap = manager_->CreateSnapshot(sr);
  ASSERT_TRUE(snap.ok());
  // Failures with the key in the request: a wrong key, a malformed one, a
  // second node, an unreachable cluster.
  note(CreateRbd("pvc-2", kGiB).status());
  csi::v1::CreateVolumeRequest wrong = RbdCreate("pvc-3", kGiB);
  (*wrong.mutable_secrets())["userKey"] = std::string(kKey).substr(0, 20) + "WRONGWRONGWRONG==";
  note(manager_->CreateVolume(wrong).status());
  EXPECT_EQ(manager_->CreateVolume(wrong).status().code(), absl::StatusCode::kPermissionDenied);
  csi::v1::CreateVolumeRequest bad = RbdCreate("pvc-4", kGiB);
  (*bad.mutable_secrets())["userKey"] = std::string(kKey) + " !";
  note(manager_->CreateVolume(bad).status());
  OtherNode b(Path("node-b"), &cluster_, "node-b");
  note(StageRbd(b.manager.get(), *v, Path("node-b/stage")));
  cluster_.SetReachable(false);
  note(CreateRbd("pvc-5", kGiB).status());
  cluster_.SetReachable(true);
  RestartPlugin();
  ASSERT_TRUE(manager_->RecoverExport(v->volume_id()).ok());
  ASSERT_TRUE(Unstage(manager_.get(), v->volume_id(), Path("stage/pvc-1")).ok());
  csi::v1::DeleteVolumeRequest d;
  d.set_volume_id(v->volume_id());
  AddSecrets(&d);
  note(manager_->DeleteVolume(d).status());
  EXPECT_GE(errors.size(), 4u);

  // The RPC log line names ids only, whatever the request carries.
  csi::v1::CreateVolumeRequest req = RbdCreate("pvc-1", kGiB);
  csi::v1::NodeStageVolumeRequest stage;
  stage.set_volume_id(v->volume_id());
  AddSecrets(&stage);
  const std::string key = kKey;
  EXPECT_THAT(DescribeRequestIds(req), Not(HasSubstr(key)));
  EXPECT_THAT(DescribeRequestIds(stage), Not(HasSubstr(key)));
  EXPECT_THAT(DescribeRequestIds(stage), HasSubstr(v->volume_id()));

  const std::string key_start = key.substr(0, 16);  // a partial leak counts
  for (const std::string& line : logs.AtLeast(google::INFO)) {
    EXPECT_THAT(line, Not(HasSubstr(key_start)));
  }
  for (const std::string& e : errors) EXPECT_THAT(e, Not(HasSubstr(key_start)));
  int records = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data_)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (absl::StrContains(entry.path().string(), "/records/")) {
      ++records;
      EXPECT_THAT(ss.str(), Not(HasSubstr(key_start))) << entry.path();
    }
  }
  EXPECT_GT(records, 0);
  FLAGS_v = 0;
}

}  // namespace
}  // namespace ublk_csi
