// The CSI Controller service: a thin gRPC face over VolumeManager (which
// validates and does the work). As ublk.csi.io (node-local) it runs in the
// node plugin, reached by csi-provisioner in distributed mode, csi-resizer
// and csi-snapshotter. As rbd.ublk.csi.io it runs in the controller
// Deployment (--mode=controller): it refuses volumes and StorageClasses that
// are not RBD (driver.h) and advertises only what a central controller
// serves. Thread-safe (gRPC calls it from many threads).
#pragma once

#include "csi.grpc.pb.h"
#include "csi/driver.h"
#include "csi/volume_manager.h"

namespace ublk_csi {

class ControllerService final : public csi::v1::Controller::Service {
 public:
  explicit ControllerService(VolumeManager* manager, Driver driver = Driver::kNodeLocal)
      : manager_(manager), driver_(driver) {}

  grpc::Status CreateVolume(grpc::ServerContext*, const csi::v1::CreateVolumeRequest*,
                            csi::v1::CreateVolumeResponse*) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const csi::v1::DeleteVolumeRequest*,
                            csi::v1::DeleteVolumeResponse*) override;
  grpc::Status ValidateVolumeCapabilities(grpc::ServerContext*,
                                          const csi::v1::ValidateVolumeCapabilitiesRequest*,
                                          csi::v1::ValidateVolumeCapabilitiesResponse*) override;
  grpc::Status ListVolumes(grpc::ServerContext*, const csi::v1::ListVolumesRequest*,
                           csi::v1::ListVolumesResponse*) override;
  grpc::Status GetCapacity(grpc::ServerContext*, const csi::v1::GetCapacityRequest*,
                           csi::v1::GetCapacityResponse*) override;
  grpc::Status ControllerGetCapabilities(grpc::ServerContext*,
                                         const csi::v1::ControllerGetCapabilitiesRequest*,
                                         csi::v1::ControllerGetCapabilitiesResponse*) override;
  grpc::Status CreateSnapshot(grpc::ServerContext*, const csi::v1::CreateSnapshotRequest*,
                              csi::v1::CreateSnapshotResponse*) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext*, const csi::v1::DeleteSnapshotRequest*,
                              csi::v1::DeleteSnapshotResponse*) override;
  grpc::Status ListSnapshots(grpc::ServerContext*, const csi::v1::ListSnapshotsRequest*,
                             csi::v1::ListSnapshotsResponse*) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext*,
                                      const csi::v1::ControllerExpandVolumeRequest*,
                                      csi::v1::ControllerExpandVolumeResponse*) override;

 private:
  absl::Status Serves(const std::string& volume_id, absl::string_view field) const {
    return CheckDriverVolume(driver_, volume_id, field);
  }

  VolumeManager* const manager_;
  const Driver driver_;
};

}  // namespace ublk_csi
