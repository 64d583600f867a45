// The plugin's HTTP endpoint (--metrics-address): /metrics (Prometheus text
// format from a prometheus::Registry), /healthz (liveness) and /readyz (from
// Health). civetweb owns its threads; handlers only read thread-safe state.
// Slow or half-open clients hold a thread for at most `request_timeout`, and
// there are `threads` of them, so they cannot keep kubelet's probes out.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "csi/health.h"
#include "prometheus/registry.h"

class CivetServer;

namespace ublk_csi {

struct HttpServerOptions {
  // civetweb worker threads (connections served at once).
  int threads = 8;
  // Longest a connection may take to send its request (or read the answer).
  absl::Duration request_timeout = absl::Seconds(3);
};

// "host:port" as civetweb takes it: an IPv6 host gets brackets
// ("fd00::1:9810" -> "[fd00::1]:9810", as $(POD_IP):PORT gives on an IPv6
// cluster); an empty host means every address. INVALID_ARGUMENT for a
// missing or bad port.
absl::StatusOr<std::string> NormalizeHttpAddress(const std::string& address);

class HttpServer {
 public:
  // `address` is host:port (port 0 picks a free one). `liveness` is called by
  // /healthz; it should return OK when the process and its gRPC server answer.
  // `before_metrics`, if set, runs before each /metrics collection (for
  // gauges computed from state rather than updated as it changes).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      const Health* health, std::function<absl::Status()> liveness,
      std::function<void()> before_metrics = nullptr, HttpServerOptions options = {});
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
