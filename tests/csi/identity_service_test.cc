// Identity over a real unix socket with a real gRPC client.
#include "csi/identity_service.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "csi/plugin_server.h"
#include "csi/version.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

class IdentityTest : public ::testing::Test {
 protected:
  void Start(PluginCapabilities caps) {
    identity_ = std::make_unique<IdentityService>(caps, &health_);
    auto ep = ParseEndpoint("unix://" + dir_.path() + "/csi.sock");
    ASSERT_TRUE(ep.ok());
    server_ = std::make_unique<PluginServer>(*ep, std::vector<grpc::Service*>{identity_.get()});
    ASSERT_TRUE(server_->Start().ok());
    stub_ = csi::v1::Identity::NewStub(
        grpc::CreateChannel(ep->GrpcTarget(), grpc::InsecureChannelCredentials()));
  }

  ublk_test::TempDir dir_;
  Health health_;
  std::unique_ptr<IdentityService> identity_;
  std::unique_ptr<PluginServer> server_;
  std::unique_ptr<csi::v1::Identity::Stub> stub_;
};

TEST_F(IdentityTest, PluginInfoNamesDriverAndVersion) {
  Start({});
  grpc::ClientContext ctx;
  csi::v1::GetPluginInfoResponse resp;
  ASSERT_TRUE(stub_->GetPluginInfo(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.name(), "ublk.csi.io");
  EXPECT_EQ(resp.vendor_version(), kVersion);
}

TEST_F(IdentityTest, CapabilitiesFollowConfiguration) {
  Start({.controller_service = true,
         .volume_accessibility_constraints = true,
         .online_expansion = true});
  grpc::ClientContext ctx;
  csi::v1::GetPluginCapabilitiesResponse resp;
  ASSERT_TRUE(stub_->GetPluginCapabilities(&ctx, {}, &resp).ok());
  ASSERT_EQ(resp.capabilities_size(), 3);
  EXPECT_EQ(resp.capabilities(0).service().type(),
            csi::v1::PluginCapability::Service::CONTROLLER_SERVICE);
  EXPECT_EQ(resp.capabilities(1).service().type(),
            csi::v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  EXPECT_EQ(resp.capabilities(2).volume_expansion().type(),
            csi::v1::PluginCapability::VolumeExpansion::ONLINE);
}

TEST_F(IdentityTest, OfflineExpansionWhenTheKernelCannotResizeLiveDevices) {
  Start({.controller_service = true, .offline_expansion = true});
  grpc::ClientContext ctx;
  csi::v1::GetPluginCapabilitiesResponse resp;
  ASSERT_TRUE(stub_->GetPluginCapabilities(&ctx, {}, &resp).ok());
  ASSERT_EQ(resp.capabilities_size(), 2);
  EXPECT_EQ(resp.capabilities(1).volume_expansion().type(),
            csi::v1::PluginCapability::VolumeExpansion::OFFLINE);
}

TEST_F(IdentityTest, NoCapabilitiesAdvertisedThatAreNotServed) {
  Start({});
  grpc::ClientContext ctx;
  csi::v1::GetPluginCapabilitiesResponse resp;
  ASSERT_TRUE(stub_->GetPluginCapabilities(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.capabilities_size(), 0);
}

TEST_F(IdentityTest, ProbeReflectsBackendAndRecovery) {
  Start({});
  {
    // Backend not checked yet / unusable: an error naming the reason.
    health_.SetBackend(absl::FailedPreconditionError("load the ublk_drv kernel module"));
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    grpc::Status st = stub_->Probe(&ctx, {}, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(st.error_message().find("ublk_drv"), std::string::npos);
  }
  health_.SetBackend(absl::OkStatus());
  health_.SetRecoveryPending("3 of 66 volumes recovered");
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(stub_->Probe(&ctx, {}, &resp).ok());
    ASSERT_TRUE(resp.has_ready());
    EXPECT_FALSE(resp.ready().value());
  }
  health_.SetRecoveryDone();
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(stub_->Probe(&ctx, {}, &resp).ok());
    EXPECT_TRUE(resp.ready().value());
  }
  // Recovery done but volumes not served: Probe says not ready (issue 17:
  // it said ready while 64 of 66 volumes were failed).
  std::atomic<int> not_serving{2};
  health_.SetServingCheck([&not_serving]() -> absl::Status {
    if (not_serving.load() == 0) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat(not_serving.load(), " of 66 volumes not serving"));
  });
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(stub_->Probe(&ctx, {}, &resp).ok());
    EXPECT_FALSE(resp.ready().value());
    EXPECT_EQ(health_.Ready().message(), "2 of 66 volumes not serving");
  }
  not_serving = 0;
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(stub_->Probe(&ctx, {}, &resp).ok());
    EXPECT_TRUE(resp.ready().value());
  }
}

TEST_F(IdentityTest, ShutdownRemovesSocket) {
  Start({});
  std::string path = dir_.path() + "/csi.sock";
  EXPECT_TRUE(ublk_test::WaitForPath(path, 0));
  server_->Shutdown();
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace ublk_csi
