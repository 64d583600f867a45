// The plugin's HTTP endpoint (--metrics-address): /metrics (Prometheus text
// format from a prometheus::Registry), /healthz and /readyz (from Health).
// civetweb owns its threads; handlers only read thread-safe state.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "csi/health.h"
#include "prometheus/registry.h"

class CivetServer;

namespace ublk_csi {

class HttpServer {
 public:
  // `address` is host:port (port 0 picks a free one). `liveness` is called by
  // /healthz; it should return OK when the process and its gRPC server answer.
  // `before_metrics`, if set, runs before each /metrics collection (for
  // gauges computed from state rather than updated as it changes).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      const Health* health, std::function<absl::Status()> liveness,
      std::function<void()> before_metrics = nullptr);
  ~HttpServer();

  int port() const { return port_; }

 private:
  HttpServer() = default;
  struct Handlers;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<CivetServer> server_;
  int port_ = 0;
};

}  // namespace ublk_csi
