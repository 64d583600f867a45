// Parsing of the plugin's --endpoint flag (the CSI socket address) and the
// single-instance check for unix sockets. Used by the plugin and the ctl tool.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ublk_csi {

struct Endpoint {
  enum class Kind { kUnix, kTcp };
  Kind kind = Kind::kUnix;
  std::string path;     // unix socket path (kUnix)
  std::string address;  // host:port (kTcp)
  // The address in gRPC's own syntax (unix:/abs/path or host:port).
  std::string GrpcTarget() const;
};

// Accepts unix:///abs/path, unix:/abs/path, tcp://host:port and host:port.
absl::StatusOr<Endpoint> ParseEndpoint(const std::string& spec);

// Makes sure a unix socket path can be bound: fails with FailedPrecondition if
// a live process accepts connections on it; removes a stale socket; refuses to
// remove anything that is not a socket. A no-op for TCP endpoints.
absl::Status PrepareEndpoint(const Endpoint& endpoint);

}  // namespace ublk_csi
