#include "csi/plugin_server.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "csi/rpc_logging.h"
#include "glog/logging.h"
#include "grpcpp/server_posix.h"
#include "grpcpp/support/server_interceptor.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

namespace {

int Millis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), INT32_MAX));
}

}  // namespace

absl::Status PluginServer::Start() {
  if (options_.max_threads < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("gRPC max threads ", options_.max_threads, ": must be at least 2"));
  }
  if (options_.max_concurrent_streams < 1 || options_.max_message_bytes < 1) {
    return absl::InvalidArgumentError(
        "gRPC max concurrent streams and message size must be positive");
  }
  RETURN_IF_ERROR(PrepareEndpoint(endpoint_));
  ListenerOptions lopts;
  lopts.socket_group = options_.socket_group;
  absl::StatusOr<std::unique_ptr<Listener>> listener =
      Listener::Bind(endpoint_, std::move(lopts), options_.registry);
  if (!listener.ok()) return listener.status();
  listener_ = std::move(*listener);

  grpc::ServerBuilder builder;
  // No listening port of gRPC's own: connections come from listener_.
  grpc::ResourceQuota quota("ublk-csi");
  quota.SetMaxThreads(options_.max_threads);
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(options_.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(options_.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Keep pinging an idle connection (the default stops after two pings
  // without data, which would let a dead idle peer stay forever).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (options_.max_connection_idle > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               Millis(options_.max_connection_idle));
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(NewRpcLoggingInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  for (grpc::Service* s : services_) builder.RegisterService(s);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    listener_.reset();
    if (endpoint_.kind == Endpoint::Kind::kUnix) ::unlink(endpoint_.path.c_str());
    return absl::InternalError(
        absl::StrCat("cannot start the gRPC server for ", endpoint_.GrpcTarget()));
  }
  grpc::Server* server = server_.get();
  RETURN_IF_ERROR(
      listener_->Start([server](int fd) { grpc::AddInsecureChannelFromFd(server, fd); }));
  bound_port_ = endpoint_.kind == Endpoint::Kind::kTcp ? listener_->port() : 0;
  LOG(INFO) << "CSI endpoint listening on " << endpoint_.GrpcTarget() << " (max "
            << options_.max_threads << " threads, " << options_.max_concurrent_streams
            << " streams per connection, " << options_.max_message_bytes << "-byte messages)";
  return absl::OkStatus();
}

void PluginServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  // No new connections first, so none is handed to a server shutting down.
  if (listener_ != nullptr) listener_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  server_->Wait();
  server_.reset();
  listener_.reset();
  if (endpoint_.kind == Endpoint::Kind::kUnix) ::unlink(endpoint_.path.c_str());
  LOG(INFO) << "CSI endpoint " << endpoint_.GrpcTarget() << " closed";
}

}  // namespace ublk_csi
