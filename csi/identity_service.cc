#include "csi/identity_service.h"

#include "absl/strings/str_cat.h"
#include "csi/grpc_status.h"
#include "csi/version.h"
#include "glog/logging.h"

namespace ublk_csi {

grpc::Status IdentityService::GetPluginInfo(grpc::ServerContext*,
                                            const csi::v1::GetPluginInfoRequest*,
                                            csi::v1::GetPluginInfoResponse* resp) {
  resp->set_name(DriverName(driver_));
  resp->set_vendor_version(kVersion);
  return grpc::Status::OK;
}

grpc::Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                                    const csi::v1::GetPluginCapabilitiesRequest*,
                                                    csi::v1::GetPluginCapabilitiesResponse* resp) {
  using Svc = csi::v1::PluginCapability::Service;
  auto add_service = [resp](Svc::Type type) {
    resp->add_capabilities()->mutable_service()->set_type(type);
  };
  if (caps_.controller_service) add_service(Svc::CONTROLLER_SERVICE);
  if (caps_.volume_accessibility_constraints) add_service(Svc::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  if (caps_.online_expansion) {
    resp->add_capabilities()->mutable_volume_expansion()->set_type(
        csi::v1::PluginCapability::VolumeExpansion::ONLINE);
  } else if (caps_.offline_expansion) {
    resp->add_capabilities()->mutable_volume_expansion()->set_type(
        csi::v1::PluginCapability::VolumeExpansion::OFFLINE);
  }
  return grpc::Status::OK;
}

grpc::Status IdentityService::Probe(grpc::ServerContext*, const csi::v1::ProbeRequest*,
                                    csi::v1::ProbeResponse* resp) {
  if (liveness_) {
    absl::Status live = liveness_();
    if (!live.ok()) return ToGrpcStatus(live);
  }
  // An unusable backend is an error (the livenessprobe sidecar reports it with
  // the reason); recovery still running is a plain "not ready yet".
  absl::Status backend = health_->Backend();
  if (!backend.ok()) {
    return ToGrpcStatus(
        absl::FailedPreconditionError(absl::StrCat("backend unusable: ", backend.message())));
  }
  absl::Status ready = health_->Ready();
  resp->mutable_ready()->set_value(ready.ok());
  if (!ready.ok()) VLOG(1) << "Probe: not ready: " << ready.message();
  return grpc::Status::OK;
}

}  // namespace ublk_csi
