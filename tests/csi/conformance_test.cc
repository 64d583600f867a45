// CSI conformance over the real gRPC socket, in the spirit of csi-sanity:
// per RPC, required fields (INVALID_ARGUMENT), unknown objects (NOT_FOUND or
// success where the spec says so), idempotent repeats, capability
// consistency (advertised calls work, others are UNIMPLEMENTED), pagination,
// and a whole volume life cycle. Fake backend + fake mounter: no device.
#include <sys/stat.h>

#include <functional>
#include <set>

#include "csi.grpc.pb.h"
#include "csi/controller_service.h"
#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/identity_service.h"
#include "csi/node_service.h"
#include "csi/plugin_server.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using csi::v1::VolumeCapability;
using grpc::StatusCode;
constexpr int64_t kMiB = int64_t{1} << 20;

VolumeCapability MountCap() {
  VolumeCapability cap;
  cap.mutable_mount();
  cap.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  return cap;
}

class ConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir((dir_.path() + "/dev").c_str(), 0700), 0);
    backend_ = std::make_unique<FakeVolumeBackend>(dir_.path() + "/dev", 16);
    backend_->SetUsable(absl::OkStatus());
    auto store = RecordStore::Open(dir_.path() + "/data", nullptr);
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
    VolumeManagerOptions opts;
    opts.node_id = "conformance-node";
    opts.default_volume_bytes = 4 * kMiB;
    manager_ = std::make_unique<VolumeManager>(opts, store_.get(), backend_.get(), &mounter_);
    ASSERT_TRUE(manager_->Load().ok());
    health_.SetBackend(absl::OkStatus());
    health_.SetRecoveryDone();
    identity_ = std::make_unique<IdentityService>(
        PluginCapabilities{.controller_service = true,
                           .volume_accessibility_constraints = true,
                           .online_expansion = true},
        &health_);
    controller_ = std::make_unique<ControllerService>(manager_.get());
    node_ = std::make_unique<NodeService>(manager_.get());
    auto ep = ParseEndpoint("unix://" + dir_.path() + "/csi.sock");
    ASSERT_TRUE(ep.ok());
    server_ = std::make_unique<PluginServer>(
        *ep, std::vector<grpc::Service*>{identity_.get(), controller_.get(), node_.get()});
    ASSERT_TRUE(server_->Start().ok());
    auto channel = grpc::CreateChannel(ep->GrpcTarget(), grpc::InsecureChannelCredentials());
    ids_ = csi::v1::Identity::NewStub(channel);
    ctl_ = csi::v1::Controller::NewStub(channel);
    node_stub_ = csi::v1::Node::NewStub(channel);
  }
  void TearDown() override { server_->Shutdown(); }

  template <typename Stub, typename Req, typename Resp>
  grpc::Status Do(Stub* stub, grpc::Status (Stub::*m)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req, Resp* resp = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    Resp local;
    return (stub->*m)(&ctx, req, resp != nullptr ? resp : &local);
  }
#define CTL(method, req, ...) Do(ctl_.get(), &csi::v1::Controller::Stub::method, req, ##__VA_ARGS__)
#define NODE(method, req, ...) \
  Do(node_stub_.get(), &csi::v1::Node::Stub::method, req, ##__VA_ARGS__)

  std::string CreateVolume(const std::string& name) {
    csi::v1::CreateVolumeRequest req;
    req.set_name(name);
    *req.add_volume_capabilities() = MountCap();
    csi::v1::CreateVolumeResponse resp;
    EXPECT_TRUE(CTL(CreateVolume, req, &resp).ok());
    return resp.volume().volume_id();
  }
  std::string P(const std::string& rel) { return dir_.path() + "/" + rel; }

  ublk_test::TempDir dir_;
  std::unique_ptr<FakeVolumeBackend> backend_;
  FakeMounter mounter_;
  std::unique_ptr<RecordStore> store_;
  std::unique_ptr<VolumeManager> manager_;
  Health health_;
  std::unique_ptr<IdentityService> identity_;
  std::unique_ptr<ControllerService> controller_;
  std::unique_ptr<NodeService> node_;
  std::unique_ptr<PluginServer> server_;
  std::unique_ptr<csi::v1::Identity::Stub> ids_;
  std::unique_ptr<csi::v1::Controller::Stub> ctl_;
  std::unique_ptr<csi::v1::Node::Stub> node_stub_;
};

TEST_F(ConformanceTest, IdentityAdvertisesWhatIsServed) {
  csi::v1::GetPluginCapabilitiesResponse caps;
  ASSERT_TRUE(Do(ids_.get(), &csi::v1::Identity::Stub::GetPluginCapabilities,
                 csi::v1::GetPluginCapabilitiesRequest(), &caps)
                  .ok());
  bool controller = false;
  for (const auto& c : caps.capabilities()) {
    controller |= c.service().type() == csi::v1::PluginCapability::Service::CONTROLLER_SERVICE;
  }
  EXPECT_TRUE(controller);
  csi::v1::ControllerGetCapabilitiesResponse cc;
  ASSERT_TRUE(
      CTL(ControllerGetCapabilities, csi::v1::ControllerGetCapabilitiesRequest(), &cc).ok());
  EXPECT_TRUE(Do(ids_.get(), &csi::v1::Identity::Stub::Probe, csi::v1::ProbeRequest()).ok());
}

TEST_F(ConformanceTest, ControllerCapabilitiesMatchImplementedCalls) {
  using Rpc = csi::v1::ControllerServiceCapability::RPC;
  csi::v1::ControllerGetCapabilitiesResponse cc;
  ASSERT_TRUE(
      CTL(ControllerGetCapabilities, csi::v1::ControllerGetCapabilitiesRequest(), &cc).ok());
  std::set<int> caps;
  for (const auto& c : cc.capabilities()) caps.insert(c.rpc().type());
  // Each advertised call answers something other than UNIMPLEMENTED.
  std::map<int, std::function<grpc::Status()>> probes = {
      {Rpc::CREATE_DELETE_VOLUME,
       [&] {
         return CTL(DeleteVolume, [] {
           csi::v1::DeleteVolumeRequest r;
           r.set_volume_id("x");
           return r;
         }());
       }},
      {Rpc::LIST_VOLUMES, [&] { return CTL(ListVolumes, csi::v1::ListVolumesRequest()); }},
      {Rpc::GET_CAPACITY, [&] { return CTL(GetCapacity, csi::v1::GetCapacityRequest()); }},
      {Rpc::LIST_SNAPSHOTS, [&] { return CTL(ListSnapshots, csi::v1::ListSnapshotsRequest()); }},
      {Rpc::CREATE_DELETE_SNAPSHOT,
       [&] {
         return CTL(DeleteSnapshot, [] {
           csi::v1::DeleteSnapshotRequest r;
           r.set_snapshot_id("x");
           return r;
         }());
       }},
      {Rpc::EXPAND_VOLUME,
       [&] { return CTL(ControllerExpandVolume, csi::v1::ControllerExpandVolumeRequest()); }},
  };
  for (const auto& [cap, probe] : probes) {
    EXPECT_TRUE(caps.count(cap)) << Rpc::Type_Name(static_cast<Rpc::Type>(cap));
    EXPECT_NE(probe().error_code(), StatusCode::UNIMPLEMENTED)
        << Rpc::Type_Name(static_cast<Rpc::Type>(cap));
  }
  // Not advertised, not served.
  EXPECT_FALSE(caps.count(Rpc::PUBLISH_UNPUBLISH_VOLUME));
  EXPECT_EQ(CTL(ControllerPublishVolume, csi::v1::ControllerPublishVolumeRequest()).error_code(),
            StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(caps.count(Rpc::GET_VOLUME));
  EXPECT_EQ(CTL(ControllerGetVolume, csi::v1::ControllerGetVolumeRequest()).error_code(),
            StatusCode::UNIMPLEMENTED);
}

TEST_F(ConformanceTest, NodeCapabilitiesAndInfo) {
  using Rpc = csi::v1::NodeServiceCapability::RPC;
  csi::v1::NodeGetCapabilitiesResponse nc;
  ASSERT_TRUE(NODE(NodeGetCapabilities, csi::v1::NodeGetCapabilitiesRequest(), &nc).ok());
  std::set<int> caps;
  for (const auto& c : nc.capabilities()) caps.insert(c.rpc().type());
  EXPECT_EQ(caps,
            (std::set<int>{Rpc::STAGE_UNSTAGE_VOLUME, Rpc::GET_VOLUME_STATS, Rpc::EXPAND_VOLUME,
                           Rpc::VOLUME_CONDITION, Rpc::SINGLE_NODE_MULTI_WRITER}));
  csi::v1::NodeGetInfoResponse info;
  ASSERT_TRUE(NODE(NodeGetInfo, csi::v1::NodeGetInfoRequest(), &info).ok());
  EXPECT_EQ(info.node_id(), "conformance-node");
  EXPECT_EQ(info.max_volumes_per_node(), 16);
  EXPECT_EQ(info.accessible_topology().segments().at("topology.ublk.csi.io/node"),
            "conformance-node");
}

TEST_F(ConformanceTest, MissingRequiredFieldsAreInvalidArgument) {
  const std::string vol = CreateVolume("existing");
  auto cap = MountCap();
  struct Case {
    const char* what;
    std::function<grpc::Status()> call;
  };
  std::vector<Case> cases = {
      {"CreateVolume without name",
       [&] {
         csi::v1::CreateVolumeRequest r;
         *r.add_volume_capabilities() = cap;
         return CTL(CreateVolume, r);
       }},
      {"CreateVolume without capabilities",
       [&] {
         csi::v1::CreateVolumeRequest r;
         r.set_name("n");
         return CTL(CreateVolume, r);
       }},
      {"DeleteVolume without id",
       [&] { return CTL(DeleteVolume, csi::v1::DeleteVolumeRequest()); }},
      {"ValidateVolumeCapabilities without id",
       [&] {
         csi::v1::ValidateVolumeCapabilitiesRequest r;
         *r.add_volume_capabilities() = cap;
         return CTL(ValidateVolumeCapabilities, r);
       }},
      {"ValidateVolumeCapabilities without capabilities",
       [&] {
         csi::v1::ValidateVolumeCapabilitiesRequest r;
         r.set_volume_id(vol);
         return CTL(ValidateVolumeCapabilities, r);
       }},
      {"CreateSnapshot without name",
       [&] {
         csi::v1::CreateSnapshotRequest r;
         r.set_source_volume_id(vol);
         return CTL(CreateSnapshot, r);
       }},
      {"CreateSnapshot without source",
       [&] {
         csi::v1::CreateSnapshotRequest r;
         r.set_name("s");
         return CTL(CreateSnapshot, r);
       }},
      {"DeleteSnapshot without id",
       [&] { return CTL(DeleteSnapshot, csi::v1::DeleteSnapshotRequest()); }},
      {"ControllerExpandVolume without id",
       [&] {
         csi::v1::ControllerExpandVolumeRequest r;
         r.mutable_capacity_range()->set_required_bytes(kMiB);
         return CTL(ControllerExpandVolume, r);
       }},
      {"ControllerExpandVolume without capacity",
       [&] {
         csi::v1::ControllerExpandVolumeRequest r;
         r.set_volume_id(vol);
         return CTL(ControllerExpandVolume, r);
       }},
      {"NodeStageVolume without id",
       [&] {
         csi::v1::NodeStageVolumeRequest r;
         r.set_staging_target_path(P("s"));
         *r.mutable_volume_capability() = cap;
         return NODE(NodeStageVolume, r);
       }},
      {"NodeStageVolume without staging path",
       [&] {
         csi::v1::NodeStageVolumeRequest r;
         r.set_volume_id(vol);
         *r.mutable_volume_capability() = cap;
         return NODE(NodeStageVolume, r);
       }},
      {"NodeStageVolume without capability",
       [&] {
         csi::v1::NodeStageVolumeRequest r;
         r.set_volume_id(vol);
         r.set_staging_target_path(P("s"));
         return NODE(NodeStageVolume, r);
       }},
      {"NodeUnstageVolume without id",
       [&] {
         csi::v1::NodeUnstageVolumeRequest r;
         r.set_staging_target_path(P("s"));
         return NODE(NodeUnstageVolume, r);
       }},
      {"NodeUnstageVolume without staging path",
       [&] {
         csi::v1::NodeUnstageVolumeRequest r;
         r.set_volume_id(vol);
         return NODE(NodeUnstageVolume, r);
       }},
      {"NodePublishVolume without id",
       [&] {
         csi::v1::NodePublishVolumeRequest r;
         r.set_staging_target_path(P("s"));
         r.set_target_path(P("t"));
         *r.mutable_volume_capability() = cap;
         return NODE(NodePublishVolume, r);
       }},
      {"NodePublishVolume without target",
       [&] {
         csi::v1::NodePublishVolumeRequest r;
         r.set_volume_id(vol);
         r.set_staging_target_path(P("s"));
         *r.mutable_volume_capability() = cap;
         return NODE(NodePublishVolume, r);
       }},
      {"NodePublishVolume without capability",
       [&] {
         csi::v1::NodePublishVolumeRequest r;
         r.set_volume_id(vol);
         r.set_staging_target_path(P("s"));
         r.set_target_path(P("t"));
         return NODE(NodePublishVolume, r);
       }},
      {"NodeUnpublishVolume without id",
       [&] {
         csi::v1::NodeUnpublishVolumeRequest r;
         r.set_target_path(P("t"));
         return NODE(NodeUnpublishVolume, r);
       }},
      {"NodeUnpublishVolume without target",
       [&] {
         csi::v1::NodeUnpublishVolumeRequest r;
         r.set_volume_id(vol);
         return NODE(NodeUnpublishVolume, r);
       }},
      {"NodeGetVolumeStats without id",
       [&] {
         csi::v1::NodeGetVolumeStatsRequest r;
         r.set_volume_path(P("t"));
         return NODE(NodeGetVolumeStats, r);
       }},
      {"NodeGetVolumeStats without path",
       [&] {
         csi::v1::NodeGetVolumeStatsRequest r;
         r.set_volume_id(vol);
         return NODE(NodeGetVolumeStats, r);
       }},
      {"NodeExpandVolume without id",
       [&] {
         csi::v1::NodeExpandVolumeRequest r;
         r.set_volume_path(P("t"));
         return NODE(NodeExpandVolume, r);
       }},
      {"NodeExpandVolume without path",
       [&] {
         csi::v1::NodeExpandVolumeRequest r;
         r.set_volume_id(vol);
         return NODE(NodeExpandVolume, r);
       }},
  };
  for (const Case& c : cases) {
    grpc::Status st = c.call();
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT)
        << c.what << ": " << st.error_message();
    EXPECT_FALSE(st.error_message().empty()) << c.what;
    EXPECT_TRUE(st.error_details().empty()) << c.what;
  }
}

TEST_F(ConformanceTest, UnknownObjects) {
  const std::string ghost = "vol-0000000000000000";
  auto cap = MountCap();
  csi::v1::DeleteVolumeRequest dv;
  dv.set_volume_id(ghost);
  EXPECT_TRUE(CTL(DeleteVolume, dv).ok()) << "DeleteVolume of an unknown volume succeeds";
  csi::v1::DeleteSnapshotRequest ds;
  ds.set_snapshot_id("snap-0000000000000000");
  EXPECT_TRUE(CTL(DeleteSnapshot, ds).ok());
  csi::v1::ValidateVolumeCapabilitiesRequest vv;
  vv.set_volume_id(ghost);
  *vv.add_volume_capabilities() = cap;
  EXPECT_EQ(CTL(ValidateVolumeCapabilities, vv).error_code(), StatusCode::NOT_FOUND);
  csi::v1::ControllerExpandVolumeRequest ce;
  ce.set_volume_id(ghost);
  ce.mutable_capacity_range()->set_required_bytes(kMiB);
  EXPECT_EQ(CTL(ControllerExpandVolume, ce).error_code(), StatusCode::NOT_FOUND);
  csi::v1::CreateSnapshotRequest cs;
  cs.set_name("s");
  cs.set_source_volume_id(ghost);
  EXPECT_EQ(CTL(CreateSnapshot, cs).error_code(), StatusCode::NOT_FOUND);
  csi::v1::ListSnapshotsRequest ls;
  ls.set_snapshot_id("snap-0000000000000000");
  csi::v1::ListSnapshotsResponse lsr;
  ASSERT_TRUE(CTL(ListSnapshots, ls, &lsr).ok());
  EXPECT_EQ(lsr.entries_size(), 0);
  csi::v1::NodeStageVolumeRequest st;
  st.set_volume_id(ghost);
  st.set_staging_target_path(P("s"));
  *st.mutable_volume_capability() = cap;
  EXPECT_EQ(NODE(NodeStageVolume, st).error_code(), StatusCode::NOT_FOUND);
  csi::v1::NodePublishVolumeRequest pb;
  pb.set_volume_id(ghost);
  pb.set_staging_target_path(P("s"));
  pb.set_target_path(P("t"));
  *pb.mutable_volume_capability() = cap;
  EXPECT_EQ(NODE(NodePublishVolume, pb).error_code(), StatusCode::NOT_FOUND);
  csi::v1::NodeUnpublishVolumeRequest up;
  up.set_volume_id(ghost);
  up.set_target_path(P("t"));
  EXPECT_EQ(NODE(NodeUnpublishVolume, up).error_code(), StatusCode::NOT_FOUND);
  csi::v1::NodeGetVolumeStatsRequest gs;
  gs.set_volume_id(ghost);
  gs.set_volume_path(P("t"));
  EXPECT_EQ(NODE(NodeGetVolumeStats, gs).error_code(), StatusCode::NOT_FOUND);
  csi::v1::NodeExpandVolumeRequest ne;
  ne.set_volume_id(ghost);
  ne.set_volume_path(P("t"));
  EXPECT_EQ(NODE(NodeExpandVolume, ne).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ConformanceTest, CreateVolumeIdempotencyAndConflicts) {
  csi::v1::CreateVolumeRequest req;
  req.set_name("idem");
  req.mutable_capacity_range()->set_required_bytes(10 * kMiB);
  *req.add_volume_capabilities() = MountCap();
  csi::v1::CreateVolumeResponse a, b;
  ASSERT_TRUE(CTL(CreateVolume, req, &a).ok());
  ASSERT_TRUE(CTL(CreateVolume, req, &b).ok());
  EXPECT_EQ(a.volume().volume_id(), b.volume().volume_id());
  EXPECT_GE(a.volume().capacity_bytes(), 10 * kMiB);
  req.mutable_capacity_range()->set_required_bytes(20 * kMiB);
  EXPECT_EQ(CTL(CreateVolume, req).error_code(), StatusCode::ALREADY_EXISTS);
  req.set_name("multi");
  req.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
  grpc::Status st = CTL(CreateVolume, req);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("MULTI_NODE_MULTI_WRITER"));
}

TEST_F(ConformanceTest, ListVolumesPaginationAndInvalidToken) {
  std::set<std::string> created;
  for (int i = 0; i < 7; ++i) created.insert(CreateVolume("page-" + std::to_string(i)));
  std::set<std::string> seen;
  csi::v1::ListVolumesRequest req;
  req.set_max_entries(3);
  do {
    csi::v1::ListVolumesResponse resp;
    ASSERT_TRUE(CTL(ListVolumes, req, &resp).ok());
    ASSERT_LE(resp.entries_size(), 3);
    for (const auto& e : resp.entries()) seen.insert(e.volume().volume_id());
    req.set_starting_token(resp.next_token());
  } while (!req.starting_token().empty());
  EXPECT_EQ(seen, created);
  req.set_starting_token("invalid-token");
  EXPECT_EQ(CTL(ListVolumes, req).error_code(), StatusCode::ABORTED);
  // A deleted volume disappears from the list.
  csi::v1::DeleteVolumeRequest del;
  del.set_volume_id(*created.begin());
  ASSERT_TRUE(CTL(DeleteVolume, del).ok());
  csi::v1::ListVolumesResponse all;
  ASSERT_TRUE(CTL(ListVolumes, csi::v1::ListVolumesRequest(), &all).ok());
  EXPECT_EQ(all.entries_size(), 6);
}

TEST_F(ConformanceTest, SnapshotLifeCycle) {
  const std::string vol = CreateVolume("snapsrc");
  csi::v1::CreateSnapshotRequest cs;
  cs.set_name("snap");
  cs.set_source_volume_id(vol);
  csi::v1::CreateSnapshotResponse a, b;
  ASSERT_TRUE(CTL(CreateSnapshot, cs, &a).ok());
  ASSERT_TRUE(CTL(CreateSnapshot, cs, &b).ok());
  EXPECT_EQ(a.snapshot().snapshot_id(), b.snapshot().snapshot_id());
  EXPECT_TRUE(a.snapshot().ready_to_use());
  EXPECT_GT(a.snapshot().creation_time().seconds(), 0);
  csi::v1::ListSnapshotsRequest ls;
  ls.set_snapshot_id(a.snapshot().snapshot_id());
  csi::v1::ListSnapshotsResponse lr;
  ASSERT_TRUE(CTL(ListSnapshots, ls, &lr).ok());
  ASSERT_EQ(lr.entries_size(), 1);
  ls.Clear();
  ls.set_starting_token("invalid-token");
  EXPECT_EQ(CTL(ListSnapshots, ls).error_code(), StatusCode::ABORTED);
  csi::v1::CreateVolumeRequest restore;
  restore.set_name("restored");
  *restore.add_volume_capabilities() = MountCap();
  restore.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      a.snapshot().snapshot_id());
  csi::v1::CreateVolumeResponse rv;
  ASSERT_TRUE(CTL(CreateVolume, restore, &rv).ok());
  EXPECT_EQ(rv.volume().content_source().snapshot().snapshot_id(), a.snapshot().snapshot_id());
  csi::v1::DeleteSnapshotRequest ds;
  ds.set_snapshot_id(a.snapshot().snapshot_id());
  EXPECT_TRUE(CTL(DeleteSnapshot, ds).ok());
  EXPECT_TRUE(CTL(DeleteSnapshot, ds).ok());
}

TEST_F(ConformanceTest, FullNodeLifeCycleIsIdempotentAtEveryStep) {
  const std::string vol = CreateVolume("life");
  auto cap = MountCap();
  csi::v1::NodePublishVolumeRequest pub;
  pub.set_volume_id(vol);
  pub.set_staging_target_path(P("staging"));
  pub.set_target_path(P("pods/p1/mount"));
  *pub.mutable_volume_capability() = cap;
  // STAGE_UNSTAGE_VOLUME is advertised: publish before stage must fail.
  EXPECT_EQ(NODE(NodePublishVolume, pub).error_code(), StatusCode::FAILED_PRECONDITION);

  csi::v1::NodeStageVolumeRequest stage;
  stage.set_volume_id(vol);
  stage.set_staging_target_path(P("staging"));
  *stage.mutable_volume_capability() = cap;
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(NODE(NodeStageVolume, stage).ok()) << i;
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(NODE(NodePublishVolume, pub).ok()) << i;

  csi::v1::NodeGetVolumeStatsRequest stats;
  stats.set_volume_id(vol);
  stats.set_volume_path(P("pods/p1/mount"));
  csi::v1::NodeGetVolumeStatsResponse sr;
  ASSERT_TRUE(NODE(NodeGetVolumeStats, stats, &sr).ok());
  EXPECT_GT(sr.usage(0).total(), 0);
  EXPECT_FALSE(sr.volume_condition().abnormal());
  stats.set_volume_path(P("nowhere"));
  EXPECT_EQ(NODE(NodeGetVolumeStats, stats).error_code(), StatusCode::NOT_FOUND);

  csi::v1::ControllerExpandVolumeRequest ce;
  ce.set_volume_id(vol);
  ce.mutable_capacity_range()->set_required_bytes(8 * kMiB);
  csi::v1::ControllerExpandVolumeResponse cer;
  ASSERT_TRUE(CTL(ControllerExpandVolume, ce, &cer).ok());
  EXPECT_TRUE(cer.node_expansion_required());
  csi::v1::NodeExpandVolumeRequest ne;
  ne.set_volume_id(vol);
  ne.set_volume_path(P("pods/p1/mount"));
  ne.mutable_capacity_range()->set_required_bytes(8 * kMiB);
  csi::v1::NodeExpandVolumeResponse ner;
  ASSERT_TRUE(NODE(NodeExpandVolume, ne, &ner).ok());
  EXPECT_EQ(ner.capacity_bytes(), 8 * kMiB);

  csi::v1::DeleteVolumeRequest del;
  del.set_volume_id(vol);
  EXPECT_EQ(CTL(DeleteVolume, del).error_code(), StatusCode::FAILED_PRECONDITION) << "in use";

  csi::v1::NodeUnpublishVolumeRequest unpub;
  unpub.set_volume_id(vol);
  unpub.set_target_path(P("pods/p1/mount"));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(NODE(NodeUnpublishVolume, unpub).ok()) << i;
  csi::v1::NodeUnstageVolumeRequest unstage;
  unstage.set_volume_id(vol);
  unstage.set_staging_target_path(P("staging"));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(NODE(NodeUnstageVolume, unstage).ok()) << i;
  EXPECT_TRUE(mounter_.mounts().empty());
  EXPECT_EQ(backend_->export_count(), 0);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(CTL(DeleteVolume, del).ok()) << i;
}

TEST_F(ConformanceTest, TopologyAndCapacity) {
  csi::v1::CreateVolumeRequest req;
  req.set_name("topo");
  *req.add_volume_capabilities() = MountCap();
  auto* t = req.mutable_accessibility_requirements()->add_requisite();
  (*t->mutable_segments())["topology.ublk.csi.io/node"] = "other-node";
  EXPECT_EQ(CTL(CreateVolume, req).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  (*t->mutable_segments())["topology.ublk.csi.io/node"] = "conformance-node";
  csi::v1::CreateVolumeResponse resp;
  ASSERT_TRUE(CTL(CreateVolume, req, &resp).ok());
  ASSERT_EQ(resp.volume().accessible_topology_size(), 1);
  csi::v1::GetCapacityResponse cap;
  ASSERT_TRUE(CTL(GetCapacity, csi::v1::GetCapacityRequest(), &cap).ok());
  EXPECT_GT(cap.available_capacity(), 0);
}

}  // namespace
}  // namespace ublk_csi
