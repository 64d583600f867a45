// The CSI Identity service: plugin name and version, which other services this
// plugin offers, and Probe (readiness from Health). Thread-safe.
#pragma once

#include "csi.grpc.pb.h"
#include "csi/health.h"

namespace ublk_csi {

inline constexpr char kPluginName[] = "ublk.csi.io";

struct PluginCapabilities {
  bool controller_service = false;
  bool volume_accessibility_constraints = false;
  bool online_expansion = false;
  bool offline_expansion = false;  // advertised when online is not possible
};

class IdentityService final : public csi::v1::Identity::Service {
 public:
  IdentityService(PluginCapabilities caps, const Health* health)
      : caps_(caps), health_(health) {}

  grpc::Status GetPluginInfo(grpc::ServerContext*, const csi::v1::GetPluginInfoRequest*,
                             csi::v1::GetPluginInfoResponse*) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const csi::v1::GetPluginCapabilitiesRequest*,
                                     csi::v1::GetPluginCapabilitiesResponse*) override;
  grpc::Status Probe(grpc::ServerContext*, const csi::v1::ProbeRequest*,
                     csi::v1::ProbeResponse*) override;

 private:
  const PluginCapabilities caps_;
  const Health* health_;
};

}  // namespace ublk_csi
