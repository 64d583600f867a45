// The CSI Identity service: plugin name and version, which other services this
// plugin offers, and Probe (liveness from a self-dial, readiness from Health).
// Thread-safe.
#pragma once

#include <functional>

#include "absl/status/status.h"
#include "csi.grpc.pb.h"
#include "csi/driver.h"
#include "csi/health.h"

namespace ublk_csi {

struct PluginCapabilities {
  bool controller_service = false;
  bool volume_accessibility_constraints = false;
  bool online_expansion = false;
  bool offline_expansion = false;  // advertised when online is not possible
};

class IdentityService final : public csi::v1::Identity::Service {
 public:
  // `liveness`, if set, is asked first by Probe: when it fails, Probe fails
  // (UNAVAILABLE), so the livenessprobe sidecar reports the plugin dead even
  // over its own long-lived connection. `driver` names the plugin in
  // GetPluginInfo (each endpoint answers for one driver, see driver.h).
  IdentityService(PluginCapabilities caps, const Health* health,
                  std::function<absl::Status()> liveness = nullptr,
                  Driver driver = Driver::kNodeLocal)
      : caps_(caps), health_(health), liveness_(std::move(liveness)), driver_(driver) {}

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
  const std::function<absl::Status()> liveness_;
  const Driver driver_;
};

}  // namespace ublk_csi
