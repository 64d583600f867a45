// The one place that converts between absl::Status (used everywhere inside
// the plugin) and grpc::Status (what goes on the wire to CSI callers).
// Every canonical code maps to the gRPC code of the same meaning, and the
// message is carried over unchanged. Stateless and thread-safe.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"

namespace ublk_csi {

// Service handlers end with `return ToGrpcStatus(status);`. A code outside
// the canonical set becomes UNKNOWN; absl payloads are not sent (the CSI spec
// requires status details to be empty).
grpc::Status ToGrpcStatus(const absl::Status& status);

// For clients (ublk-csi-ctl, tests): a gRPC result as an absl::Status. A code
// outside the canonical set becomes UNKNOWN; error_details are dropped.
absl::Status FromGrpcStatus(const grpc::Status& status);

// A service handler's whole body: the manager's response into `out`, or its
// error mapped by ToGrpcStatus.
template <typename Resp>
grpc::Status ToGrpcReply(absl::StatusOr<Resp> result, Resp* out) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *out = std::move(*result);
  return grpc::Status::OK;
}

// As ToGrpcReply, when the call may run at all: `call` (returning the
// manager's absl::StatusOr<Resp>) runs only if `precondition` is OK, else
// that error is the reply.
template <typename Resp, typename Call>
grpc::Status ToGrpcReplyIf(const absl::Status& precondition, Call call, Resp* out) {
  if (!precondition.ok()) return ToGrpcStatus(precondition);
  return ToGrpcReply(call(), out);
}

}  // namespace ublk_csi
