// One gRPC server interceptor that logs every CSI call: at debug level
// (VLOG 1) when it starts and ends, with the method and the request's ids
// (volume and snapshot ids, names, node id, target and staging paths; never
// secrets, parameters or contexts), and at WARNING for every call that
// fails, with the method, ids, gRPC code, message and duration. Every logged
// string goes through EscapeForLog. Handlers need no logging of their own.
#pragma once

#include <memory>
#include <string>

#include "google/protobuf/message.h"
#include "grpcpp/support/server_interceptor.h"

namespace ublk_csi {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewRpcLoggingInterceptorFactory();

// " volume_id=\"...\" target_path=\"...\"" for the id fields of `request`
// (top level and nested messages such as volume_content_source), in field
// order; "" when it has none. Exposed for tests.
std::string DescribeRequestIds(const google::protobuf::Message& request);

}  // namespace ublk_csi
