// The gRPC server on the CSI endpoint: single-instance check, bind (the
// plugin's own Listener and accept loop, see listener.h), serve the
// registered services with bounded resources, log every call (rpc_logging.h),
// and on Shutdown() stop and remove the unix socket.
// Start/Shutdown are called from main's thread; gRPC owns the serving threads,
// the Listener its accept thread.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "csi/endpoint.h"
#include "csi/listener.h"
#include "grpcpp/grpcpp.h"

namespace prometheus {
class Registry;
}

namespace ublk_csi {

struct PluginServerOptions {
  // Threads serving calls (grpc::ResourceQuota). A call that finds none free
  // fails with RESOURCE_EXHAUSTED instead of starting one more thread.
  int max_threads = 64;
  // Calls in flight on one connection; more wait on the client side.
  int max_concurrent_streams = 32;
  // Largest request and response message.
  int max_message_bytes = 4 << 20;
  // The server pings every connection (with or without calls) after this
  // much silence and closes it if the ping is not answered within the
  // timeout: dead peers and raw connections that never speak HTTP/2 go away,
  // live gRPC clients (which answer pings) keep their connections.
  absl::Duration keepalive_time = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Closes connections without calls for this long; zero = never. Off by
  // default: the CSI sidecars (csi-lib-utils ExitOnConnectionLoss) exit when
  // the plugin closes their connection.
  absl::Duration max_connection_idle = absl::ZeroDuration();
  // Unix socket: 0600, or 0660 with this group.
  std::optional<gid_t> socket_group;
  // For the listener's metrics; may be null.
  prometheus::Registry* registry = nullptr;
};

class PluginServer {
 public:
  PluginServer(Endpoint endpoint, std::vector<grpc::Service*> services,
               PluginServerOptions options = {})
      : endpoint_(std::move(endpoint)),
        services_(std::move(services)),
        options_(std::move(options)) {}
  ~PluginServer() { Shutdown(); }

  absl::Status Start();
  // Stops accepting calls, lets running ones finish within `grace`, removes
  // the socket. Safe to call twice.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  const Endpoint& endpoint() const { return endpoint_; }
  // For tcp endpoints: the port actually bound.
  int bound_port() const { return bound_port_; }

 private:
  Endpoint endpoint_;
  std::vector<grpc::Service*> services_;
  PluginServerOptions options_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<grpc::Server> server_;
  int bound_port_ = 0;
};

}  // namespace ublk_csi
