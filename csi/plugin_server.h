// The gRPC server on the CSI endpoint: single-instance check, bind, serve the
// registered services, and on Shutdown() stop and remove the unix socket.
// Start/Shutdown are called from main's thread; gRPC owns the serving threads.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "csi/endpoint.h"
#include "grpcpp/grpcpp.h"

namespace ublk_csi {

class PluginServer {
 public:
  PluginServer(Endpoint endpoint, std::vector<grpc::Service*> services)
      : endpoint_(std::move(endpoint)), services_(std::move(services)) {}
  ~PluginServer() { Shutdown(); }

  absl::Status Start();
  // Stops accepting calls, lets running ones finish within `grace`, removes
  // the socket. Safe to call twice.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  const Endpoint& endpoint() const { return endpoint_; }
  // For tcp endpoints with port 0: the port actually bound.
  int bound_port() const { return bound_port_; }

 private:
  Endpoint endpoint_;
  std::vector<grpc::Service*> services_;
  std::unique_ptr<grpc::Server> server_;
  int bound_port_ = 0;
};

}  // namespace ublk_csi
