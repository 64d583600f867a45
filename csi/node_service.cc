#include "csi/node_service.h"

#include "csi/grpc_status.h"

namespace ublk_csi {

grpc::Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                          const csi::v1::NodeStageVolumeRequest* req,
                                          csi::v1::NodeStageVolumeResponse* resp) {
  return ToGrpcReply(manager_->NodeStageVolume(*req, driver_), resp);
}

grpc::Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                            const csi::v1::NodeUnstageVolumeRequest* req,
                                            csi::v1::NodeUnstageVolumeResponse* resp) {
  return ToGrpcReply(manager_->NodeUnstageVolume(*req, driver_), resp);
}

grpc::Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                            const csi::v1::NodePublishVolumeRequest* req,
                                            csi::v1::NodePublishVolumeResponse* resp) {
  return ToGrpcReply(manager_->NodePublishVolume(*req, driver_), resp);
}

grpc::Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                              const csi::v1::NodeUnpublishVolumeRequest* req,
                                              csi::v1::NodeUnpublishVolumeResponse* resp) {
  return ToGrpcReply(manager_->NodeUnpublishVolume(*req, driver_), resp);
}

grpc::Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                             const csi::v1::NodeGetVolumeStatsRequest* req,
                                             csi::v1::NodeGetVolumeStatsResponse* resp) {
  return ToGrpcReply(manager_->NodeGetVolumeStats(*req, driver_), resp);
}

grpc::Status NodeService::NodeExpandVolume(grpc::ServerContext*,
                                           const csi::v1::NodeExpandVolumeRequest* req,
                                           csi::v1::NodeExpandVolumeResponse* resp) {
  return ToGrpcReply(manager_->NodeExpandVolume(*req, driver_), resp);
}

grpc::Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                              const csi::v1::NodeGetCapabilitiesRequest*,
                                              csi::v1::NodeGetCapabilitiesResponse* resp) {
  using Rpc = csi::v1::NodeServiceCapability::RPC;
  for (Rpc::Type t : {Rpc::STAGE_UNSTAGE_VOLUME, Rpc::GET_VOLUME_STATS, Rpc::EXPAND_VOLUME,
                      Rpc::VOLUME_CONDITION, Rpc::SINGLE_NODE_MULTI_WRITER}) {
    resp->add_capabilities()->mutable_rpc()->set_type(t);
  }
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeGetInfo(grpc::ServerContext*, const csi::v1::NodeGetInfoRequest*,
                                      csi::v1::NodeGetInfoResponse* resp) {
  *resp = manager_->NodeGetInfo(driver_);
  // RBD volumes are reachable from every node: no topology constraint.
  if (driver_ == Driver::kRbd) resp->clear_accessible_topology();
  return grpc::Status::OK;
}

}  // namespace ublk_csi
