// The CSI Node service: a thin gRPC face over VolumeManager. Kubelet calls it
// to stage (export + mkfs + mount), publish (bind mount), unpublish, unstage,
// read stats and grow volumes. One instance per endpoint: as the face of the
// rbd.ublk.csi.io driver it refuses volumes that are not RBD (driver.h) and
// reports no topology. Thread-safe.
#pragma once

#include "csi.grpc.pb.h"
#include "csi/driver.h"
#include "csi/volume_manager.h"

namespace ublk_csi {

class NodeService final : public csi::v1::Node::Service {
 public:
  explicit NodeService(VolumeManager* manager, Driver driver = Driver::kNodeLocal)
      : manager_(manager), driver_(driver) {}

  grpc::Status NodeStageVolume(grpc::ServerContext*, const csi::v1::NodeStageVolumeRequest*,
                               csi::v1::NodeStageVolumeResponse*) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext*, const csi::v1::NodeUnstageVolumeRequest*,
                                 csi::v1::NodeUnstageVolumeResponse*) override;
  grpc::Status NodePublishVolume(grpc::ServerContext*, const csi::v1::NodePublishVolumeRequest*,
                                 csi::v1::NodePublishVolumeResponse*) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext*, const csi::v1::NodeUnpublishVolumeRequest*,
                                   csi::v1::NodeUnpublishVolumeResponse*) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext*, const csi::v1::NodeGetVolumeStatsRequest*,
                                  csi::v1::NodeGetVolumeStatsResponse*) override;
  grpc::Status NodeExpandVolume(grpc::ServerContext*, const csi::v1::NodeExpandVolumeRequest*,
                                csi::v1::NodeExpandVolumeResponse*) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext*, const csi::v1::NodeGetCapabilitiesRequest*,
                                   csi::v1::NodeGetCapabilitiesResponse*) override;
  grpc::Status NodeGetInfo(grpc::ServerContext*, const csi::v1::NodeGetInfoRequest*,
                           csi::v1::NodeGetInfoResponse*) override;

 private:
  VolumeManager* const manager_;
  const Driver driver_;
};

}  // namespace ublk_csi
