#include "csi/controller_service.h"

#include "csi/grpc_status.h"
#include "glog/logging.h"

namespace ublk_csi {

grpc::Status ControllerService::CreateVolume(grpc::ServerContext*,
                                             const csi::v1::CreateVolumeRequest* req,
                                             csi::v1::CreateVolumeResponse* resp) {
  return ToGrpcReplyIf(
      CheckDriverParameters(driver_, req->parameters(), "parameters"),
      [&] { return manager_->CreateVolume(*req); }, resp);
}

grpc::Status ControllerService::DeleteVolume(grpc::ServerContext*,
                                             const csi::v1::DeleteVolumeRequest* req,
                                             csi::v1::DeleteVolumeResponse* resp) {
  absl::Status serves = Serves(req->volume_id(), "volume_id");
  if (absl::IsNotFound(serves)) {
    // CSI: deleting a volume that does not exist succeeds. No volume of this
    // driver has the ID, so there is nothing to delete (and a node-local
    // volume is not this driver's to delete).
    LOG(WARNING) << serves.message() << "; nothing deleted";
    return grpc::Status::OK;
  }
  return ToGrpcReplyIf(
      serves, [&] { return manager_->DeleteVolume(*req); }, resp);
}

grpc::Status ControllerService::ValidateVolumeCapabilities(
    grpc::ServerContext*, const csi::v1::ValidateVolumeCapabilitiesRequest* req,
    csi::v1::ValidateVolumeCapabilitiesResponse* resp) {
  return ToGrpcReply(manager_->ValidateVolumeCapabilities(*req, driver_), resp);
}

grpc::Status ControllerService::ListVolumes(grpc::ServerContext*,
                                            const csi::v1::ListVolumesRequest* req,
                                            csi::v1::ListVolumesResponse* resp) {
  return ToGrpcReply(manager_->ListVolumes(*req), resp);
}

grpc::Status ControllerService::GetCapacity(grpc::ServerContext*,
                                            const csi::v1::GetCapacityRequest* req,
                                            csi::v1::GetCapacityResponse* resp) {
  return ToGrpcReplyIf(
      CheckDriverParameters(driver_, req->parameters(), "parameters"),
      [&] { return manager_->GetCapacity(*req); }, resp);
}

grpc::Status ControllerService::ControllerGetCapabilities(
    grpc::ServerContext*, const csi::v1::ControllerGetCapabilitiesRequest*,
    csi::v1::ControllerGetCapabilitiesResponse* resp) {
  using Rpc = csi::v1::ControllerServiceCapability::RPC;
  // The central RBD controller tracks no capacity (the Ceph pool's is not
  // per node), lists no volumes and knows no volume's condition (the nodes
  // serve them); it attaches nothing (no PUBLISH_UNPUBLISH: the node stages
  // the image itself, under its lock).
  const std::initializer_list<Rpc::Type> rbd = {
      Rpc::CREATE_DELETE_VOLUME, Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS,
      Rpc::CLONE_VOLUME,         Rpc::EXPAND_VOLUME,          Rpc::SINGLE_NODE_MULTI_WRITER};
  const std::initializer_list<Rpc::Type> node_local = {
      Rpc::CREATE_DELETE_VOLUME,   Rpc::LIST_VOLUMES,     Rpc::GET_CAPACITY,
      Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS,   Rpc::CLONE_VOLUME,
      Rpc::EXPAND_VOLUME,          Rpc::VOLUME_CONDITION, Rpc::SINGLE_NODE_MULTI_WRITER};
  for (Rpc::Type t : driver_ == Driver::kRbd ? rbd : node_local) {
    resp->add_capabilities()->mutable_rpc()->set_type(t);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::CreateSnapshot(grpc::ServerContext*,
                                               const csi::v1::CreateSnapshotRequest* req,
                                               csi::v1::CreateSnapshotResponse* resp) {
  return ToGrpcReply(manager_->CreateSnapshot(*req, driver_), resp);
}

grpc::Status ControllerService::DeleteSnapshot(grpc::ServerContext*,
                                               const csi::v1::DeleteSnapshotRequest* req,
                                               csi::v1::DeleteSnapshotResponse* resp) {
  return ToGrpcReply(manager_->DeleteSnapshot(*req), resp);
}

grpc::Status ControllerService::ListSnapshots(grpc::ServerContext*,
                                              const csi::v1::ListSnapshotsRequest* req,
                                              csi::v1::ListSnapshotsResponse* resp) {
  return ToGrpcReply(manager_->ListSnapshots(*req), resp);
}

grpc::Status ControllerService::ControllerExpandVolume(
    grpc::ServerContext*, const csi::v1::ControllerExpandVolumeRequest* req,
    csi::v1::ControllerExpandVolumeResponse* resp) {
  return ToGrpcReply(manager_->ControllerExpandVolume(*req, driver_), resp);
}

}  // namespace ublk_csi
