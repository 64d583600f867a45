// The second CSI driver, rbd.ublk.csi.io, as the chart deploys it: the
// central controller (--mode=controller: Identity + Controller over a
// VolumeManager whose backend serves no devices) and the node side (the
// node plugin's --rbd-endpoint: Identity + Node), each over its own real
// gRPC socket, with the fake cluster, the fake backend and the fake mounter.
// Which volumes each endpoint takes is driver.h's rule.
#include <sys/stat.h>

#include <set>

#include "csi.grpc.pb.h"
#include "csi/controller_service.h"
#include "csi/driver.h"
#include "csi/fake_rbd_admin.h"
#include "csi/grpc_status.h"
#include "csi/identity_service.h"
#include "csi/no_export_backend.h"
#include "csi/node_service.h"
#include "csi/plugin_server.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/csi/manager_test_fixture.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using Rpc = csi::v1::ControllerServiceCapability::RPC;

constexpr char kMons[] = "10.0.0.1:6789";
constexpr char kUser[] = "kubernetes";
constexpr char kKey[] = "AQBsEcReTkEyXyZ0123456789abcdefghijkLMN==";

template <typename Req>
void AddSecrets(Req* r) {
  (*r->mutable_secrets())["userID"] = kUser;
  (*r->mutable_secrets())["userKey"] = kKey;
}

csi::v1::CreateVolumeRequest RbdCreate(const std::string& name) {
  csi::v1::CreateVolumeRequest r = CreateReq(name, kGiB);
  auto& p = *r.mutable_parameters();
  p["backend"] = "rbd";
  p["clusterID"] = "ceph-a";
  p["monitors"] = kMons;
  p["pool"] = "kube";
  AddSecrets(&r);
  return r;
}

// One unary call of `rpc` on `stub`, its result as an absl::Status.
template <typename Stub, typename Req, typename Resp>
absl::Status Call(Stub* stub, grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req) {
  grpc::ClientContext ctx;
  Resp resp;
  return FromGrpcStatus((stub->*rpc)(&ctx, req, &resp));
}

// One endpoint: Identity for `driver` plus the given services.
struct TestEndpoint {
  TestEndpoint(const std::string& path, Driver driver, PluginCapabilities caps,
               std::vector<grpc::Service*> services, const Health* health)
      : identity(caps, health, nullptr, driver) {
    services.insert(services.begin(), &identity);
    absl::StatusOr<Endpoint> ep = ParseEndpoint("unix://" + path);
    EXPECT_TRUE(ep.ok());
    server = std::make_unique<PluginServer>(*ep, services);
    absl::Status s = server->Start();
    EXPECT_TRUE(s.ok()) << s;
    channel = grpc::CreateChannel(ep->GrpcTarget(), grpc::InsecureChannelCredentials());
  }
  IdentityService identity;
  std::unique_ptr<PluginServer> server;
  std::shared_ptr<grpc::Channel> channel;
};

// The node is ManagerTest's manager (fake backend and mounter, node-a); the
// controller is a manager of its own over a NoExportBackend, as in the
// Deployment: its own data dir and rados client, the same cluster.
class RbdDriverTest : public ManagerTest {
 protected:
  void SetUp() override {
    cluster_.AddUser(kUser, kKey);
    node_admin_ = std::make_unique<FakeRbdAdmin>(&cluster_);
    options_.rbd_admin = node_admin_.get();
    ManagerTest::SetUp();
    health_.SetBackend(absl::OkStatus());
    health_.SetRecoveryDone();

    auto store = RecordStore::Open(Path("controller"), nullptr);
    ASSERT_TRUE(store.ok()) << store.status();
    ctl_store_ = std::move(*store);
    VolumeManagerOptions o;
    o.rbd_admin = &ctl_admin_;
    ctl_manager_ =
        std::make_unique<VolumeManager>(o, ctl_store_.get(), &no_export_, mounter_.get());
    ASSERT_TRUE(ctl_manager_->Load().ok());
    ctl_service_ = std::make_unique<ControllerService>(ctl_manager_.get(), Driver::kRbd);
    controller_ = std::make_unique<TestEndpoint>(
        Path("controller.sock"), Driver::kRbd,
        PluginCapabilities{.controller_service = true, .online_expansion = true},
        std::vector<grpc::Service*>{ctl_service_.get()}, &health_);

    node_local_ctl_ = std::make_unique<ControllerService>(manager_.get());
    node_local_node_ = std::make_unique<NodeService>(manager_.get());
    node_rbd_ = std::make_unique<NodeService>(manager_.get(), Driver::kRbd);
    node_local_ = std::make_unique<TestEndpoint>(
        Path("csi.sock"), Driver::kNodeLocal,
        PluginCapabilities{.controller_service = true, .volume_accessibility_constraints = true},
        std::vector<grpc::Service*>{node_local_ctl_.get(), node_local_node_.get()}, &health_);
    rbd_node_ =
        std::make_unique<TestEndpoint>(Path("rbd.sock"), Driver::kRbd, PluginCapabilities{},
                                       std::vector<grpc::Service*>{node_rbd_.get()}, &health_);
  }

  std::string PluginName(TestEndpoint* ep) {
    grpc::ClientContext ctx;
    csi::v1::GetPluginInfoResponse resp;
    grpc::Status s = csi::v1::Identity::NewStub(ep->channel)->GetPluginInfo(&ctx, {}, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.name();
  }

  absl::StatusOr<csi::v1::Volume> CreateVolume(TestEndpoint* ep,
                                               const csi::v1::CreateVolumeRequest& req) {
    grpc::ClientContext ctx;
    csi::v1::CreateVolumeResponse resp;
    grpc::Status s = csi::v1::Controller::NewStub(ep->channel)->CreateVolume(&ctx, req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    return resp.volume();
  }

  absl::Status StageVia(TestEndpoint* ep, const csi::v1::Volume& vol, const std::string& staging) {
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id(vol.volume_id());
    r.set_staging_target_path(staging);
    *r.mutable_volume_capability() = MountCap();
    *r.mutable_volume_context() = vol.volume_context();
    AddSecrets(&r);
    grpc::ClientContext ctx;
    csi::v1::NodeStageVolumeResponse resp;
    return FromGrpcStatus(csi::v1::Node::NewStub(ep->channel)->NodeStageVolume(&ctx, r, &resp));
  }

  FakeRbdCluster cluster_{kMons, {"kube"}};
  std::unique_ptr<FakeRbdAdmin> node_admin_;
  FakeRbdAdmin ctl_admin_{&cluster_};
  Health health_;
  NoExportBackend no_export_;
  std::unique_ptr<RecordStore> ctl_store_;
  std::unique_ptr<VolumeManager> ctl_manager_;
  std::unique_ptr<ControllerService> ctl_service_;
  std::unique_ptr<ControllerService> node_local_ctl_;
  std::unique_ptr<NodeService> node_local_node_;
  std::unique_ptr<NodeService> node_rbd_;
  std::unique_ptr<TestEndpoint> controller_, node_local_, rbd_node_;
};

TEST_F(RbdDriverTest, EachEndpointNamesItsDriver) {
  EXPECT_EQ(PluginName(node_local_.get()), "ublk.csi.io");
  EXPECT_EQ(PluginName(rbd_node_.get()), "rbd.ublk.csi.io");
  EXPECT_EQ(PluginName(controller_.get()), "rbd.ublk.csi.io");
}

TEST_F(RbdDriverTest, TheRbdControllerRefusesNodeLocalVolumes) {
  absl::StatusOr<csi::v1::Volume> v = CreateVolume(controller_.get(), CreateReq("pvc-1", kGiB));
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("parameters.backend must be rbd"));
  EXPECT_THAT(v.status().message(), HasSubstr("provisioner ublk.csi.io"));
  csi::v1::CreateVolumeRequest file = CreateReq("pvc-2", kGiB);
  (*file.mutable_parameters())["backend"] = "file";
  EXPECT_EQ(CreateVolume(controller_.get(), file).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctl_manager_->Status().size(), 0u) << "nothing created";

  // A node-local volume's ID (or a made-up one) names no volume of this
  // driver: NOT_FOUND for every call that names a volume, as CSI answers a
  // volume that does not exist (csi-sanity checks it), and DeleteVolume
  // succeeds without touching anything.
  absl::StatusOr<std::string> local = Create("local", kGiB);
  ASSERT_TRUE(local.ok()) << local.status();
  auto stub = csi::v1::Controller::NewStub(controller_->channel);
  for (const std::string& id : {*local, std::string("fake-vol-id")}) {
    SCOPED_TRACE(id);
    csi::v1::DeleteVolumeRequest del;
    del.set_volume_id(id);
    EXPECT_TRUE(Call(stub.get(), &csi::v1::Controller::Stub::DeleteVolume, del).ok());
    csi::v1::CreateSnapshotRequest snap;
    snap.set_source_volume_id(id);
    EXPECT_EQ(Call(stub.get(), &csi::v1::Controller::Stub::CreateSnapshot, snap).code(),
              absl::StatusCode::kInvalidArgument)
        << "no name: INVALID_ARGUMENT before the volume is looked at";
    snap.set_name("snap");
    absl::Status s = Call(stub.get(), &csi::v1::Controller::Stub::CreateSnapshot, snap);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(s.message(), HasSubstr("source_volume_id"));
    EXPECT_THAT(s.message(), HasSubstr("is not an RBD volume"));
    csi::v1::ControllerExpandVolumeRequest expand;
    expand.set_volume_id(id);
    expand.mutable_capacity_range()->set_required_bytes(2 * kGiB);
    EXPECT_EQ(Call(stub.get(), &csi::v1::Controller::Stub::ControllerExpandVolume, expand).code(),
              absl::StatusCode::kNotFound);
    csi::v1::ValidateVolumeCapabilitiesRequest validate;
    validate.set_volume_id(id);
    *validate.add_volume_capabilities() = MountCap();
    EXPECT_EQ(
        Call(stub.get(), &csi::v1::Controller::Stub::ValidateVolumeCapabilities, validate).code(),
        absl::StatusCode::kNotFound);
  }
  // The rbd controller's OK deleted nothing: the node-local volume stages.
  EXPECT_TRUE(Stage(*local, Path("stage/local")).ok());
}

TEST_F(RbdDriverTest, TheRbdControllerAdvertisesWhatACentralControllerServes) {
  grpc::ClientContext ctx;
  csi::v1::ControllerGetCapabilitiesResponse resp;
  ASSERT_TRUE(csi::v1::Controller::NewStub(controller_->channel)
                  ->ControllerGetCapabilities(&ctx, {}, &resp)
                  .ok());
  std::set<int> caps;
  for (const auto& c : resp.capabilities()) caps.insert(c.rpc().type());
  EXPECT_EQ(caps, (std::set<int>{Rpc::CREATE_DELETE_VOLUME, Rpc::CREATE_DELETE_SNAPSHOT,
                                 Rpc::LIST_SNAPSHOTS, Rpc::CLONE_VOLUME, Rpc::EXPAND_VOLUME,
                                 Rpc::SINGLE_NODE_MULTI_WRITER}));
  grpc::ClientContext ctx2;
  csi::v1::GetPluginCapabilitiesResponse plugin;
  ASSERT_TRUE(csi::v1::Identity::NewStub(controller_->channel)
                  ->GetPluginCapabilities(&ctx2, {}, &plugin)
                  .ok());
  for (const auto& c : plugin.capabilities()) {
    EXPECT_NE(c.service().type(),
              csi::v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS)
        << "RBD volumes have no topology";
  }
}

TEST_F(RbdDriverTest, ControllerCreatesAndTheNodeStagesThroughTheRbdEndpoint) {
  absl::StatusOr<csi::v1::Volume> v = CreateVolume(controller_.get(), RbdCreate("pvc-1"));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->accessible_topology_size(), 0);
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1")).has_value());
  // The controller's backend serves no device; its manager never needs one.
  EXPECT_EQ(no_export_.Usable(), absl::OkStatus());

  const std::string staging = Path("stage/pvc-1");
  ASSERT_TRUE(StageVia(rbd_node_.get(), *v, staging).ok());
  absl::StatusOr<records::VolumeRecord> rec = manager_->GetRecord(v->volume_id());
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_TRUE(rec->attach_only()) << "staged from the ID and volume_context alone";
  EXPECT_EQ(backend_->export_count(), 1);

  auto node = csi::v1::Node::NewStub(rbd_node_->channel);
  {
    grpc::ClientContext ctx;
    csi::v1::NodePublishVolumeRequest req;
    req.set_volume_id(v->volume_id());
    req.set_staging_target_path(staging);
    req.set_target_path(Path("pod/pvc-1"));
    *req.mutable_volume_capability() = MountCap();
    csi::v1::NodePublishVolumeResponse resp;
    grpc::Status s = node->NodePublishVolume(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(v->volume_id());
    req.set_target_path(Path("pod/pvc-1"));
    csi::v1::NodeUnpublishVolumeResponse resp;
    EXPECT_TRUE(node->NodeUnpublishVolume(&ctx, req, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(v->volume_id());
    req.set_staging_target_path(staging);
    csi::v1::NodeUnstageVolumeResponse resp;
    EXPECT_TRUE(node->NodeUnstageVolume(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(backend_->export_count(), 0);
  EXPECT_TRUE(cluster_.GetImage("kube", ImageNameFor("pvc-1"))->lockers.empty());
}

TEST_F(RbdDriverTest, TheRbdNodeEndpointReportsNoTopologyAndRefusesNodeLocalVolumes) {
  auto node = csi::v1::Node::NewStub(rbd_node_->channel);
  {
    grpc::ClientContext ctx;
    csi::v1::NodeGetInfoResponse resp;
    ASSERT_TRUE(node->NodeGetInfo(&ctx, {}, &resp).ok());
    EXPECT_EQ(resp.node_id(), "node-a");
    EXPECT_FALSE(resp.has_accessible_topology());
  }
  absl::StatusOr<std::string> local = Create("local", kGiB);
  ASSERT_TRUE(local.ok()) << local.status();
  csi::v1::Volume vol;
  vol.set_volume_id(*local);
  absl::Status s = StageVia(rbd_node_.get(), vol, Path("stage/local"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("driver rbd.ublk.csi.io serves Ceph RBD volumes only"));
  EXPECT_EQ(backend_->export_count(), 0);
  // Made-up IDs, as csi-sanity sends: NOT_FOUND, CSI's code for a volume
  // that does not exist, once the request's own fields are valid; a missing
  // field is INVALID_ARGUMENT whatever the ID.
  {
    grpc::ClientContext ctx;
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id("fake-vol-id");
    *r.mutable_volume_capability() = MountCap();
    csi::v1::NodeStageVolumeResponse resp;
    EXPECT_EQ(node->NodeStageVolume(&ctx, r, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodePublishVolumeRequest r;
    r.set_volume_id("fake-vol-id");
    r.set_target_path(Path("pod/none"));
    csi::v1::NodePublishVolumeResponse resp;
    EXPECT_EQ(node->NodePublishVolume(&ctx, r, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << "no volume_capability";
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeUnpublishVolumeRequest r;
    r.set_volume_id("fake-vol-id");
    csi::v1::NodeUnpublishVolumeResponse resp;
    EXPECT_EQ(node->NodeUnpublishVolume(&ctx, r, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    grpc::ClientContext ctx2;
    r.set_target_path(Path("pod/none"));
    EXPECT_EQ(node->NodeUnpublishVolume(&ctx2, r, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeGetVolumeStatsRequest r;
    r.set_volume_id("fake-vol-id");
    csi::v1::NodeGetVolumeStatsResponse resp;
    EXPECT_EQ(node->NodeGetVolumeStats(&ctx, r, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << "no volume_path";
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeGetVolumeStatsRequest r;
    r.set_volume_id("fake-vol-id");
    r.set_volume_path(Path("stage/none"));
    csi::v1::NodeGetVolumeStatsResponse resp;
    EXPECT_EQ(node->NodeGetVolumeStats(&ctx, r, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    csi::v1::NodeExpandVolumeRequest r;
    r.set_volume_id("fake-vol-id");
    r.set_volume_path(Path("stage/none"));
    r.mutable_capacity_range()->set_required_bytes(2 * kGiB);
    csi::v1::NodeExpandVolumeResponse resp;
    EXPECT_EQ(node->NodeExpandVolume(&ctx, r, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The node-local endpoint still serves it, and still reports topology.
  EXPECT_TRUE(Stage(*local, Path("stage/local")).ok());
  grpc::ClientContext ctx;
  csi::v1::NodeGetInfoResponse info;
  ASSERT_TRUE(csi::v1::Node::NewStub(node_local_->channel)->NodeGetInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.accessible_topology().segments().at(kTopologyKey), "node-a");
}

// The node-local driver keeps serving RBD volumes a StorageClass of its own
// asks for (the single-driver setup from before rbd.ublk.csi.io).
TEST_F(RbdDriverTest, TheNodeLocalEndpointStillServesRbdVolumes) {
  absl::StatusOr<csi::v1::Volume> v = CreateVolume(node_local_.get(), RbdCreate("pvc-1"));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(StageVia(node_local_.get(), *v, Path("stage/pvc-1")).ok());
}

TEST(NoExportBackendTest, RefusesExportsAndIsUsable) {
  NoExportBackend b;
  EXPECT_TRUE(b.Usable().ok());
  ExportSpec spec;
  spec.volume_id = "v1";
  absl::StatusOr<ExportInfo> e = b.EnsureExport(spec);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(e.status().message(), HasSubstr("--mode=controller"));
  EXPECT_TRUE(b.RemoveExport("v1").ok());
  EXPECT_EQ(b.GetExportStatus("v1").state, ExportState::kAbsent);
}

}  // namespace
}  // namespace ublk_csi
