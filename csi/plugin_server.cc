#include "csi/plugin_server.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

absl::Status PluginServer::Start() {
  RETURN_IF_ERROR(PrepareEndpoint(endpoint_));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(endpoint_.GrpcTarget(), grpc::InsecureServerCredentials(),
                           &bound_port_);
  for (grpc::Service* s : services_) builder.RegisterService(s);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || bound_port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", endpoint_.GrpcTarget(),
                     " (address in use, or directory missing or not writable)"));
  }
  LOG(INFO) << "CSI endpoint listening on " << endpoint_.GrpcTarget();
  return absl::OkStatus();
}

void PluginServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  server_->Wait();
  server_.reset();
  if (endpoint_.kind == Endpoint::Kind::kUnix) ::unlink(endpoint_.path.c_str());
  LOG(INFO) << "CSI endpoint " << endpoint_.GrpcTarget() << " closed";
}

}  // namespace ublk_csi
