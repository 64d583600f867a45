// ublk-csi-ctl: drive the plugin by hand over its CSI socket, like the
// community `csc` tool. One gRPC call per invocation; prints the response as
// protobuf text; exit 0 on OK, 1 on a gRPC error (printed with its code), 2 on
// bad usage.
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "csi.grpc.pb.h"
#include "csi/endpoint.h"
#include "csi/grpc_status.h"
#include "csi/version.h"
#include "gflags/gflags.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/grpcpp.h"

DEFINE_string(endpoint, "unix:///csi/csi.sock", "plugin CSI endpoint");
DEFINE_double(timeout, 30, "per-call deadline in seconds");

namespace ublk_csi {
namespace {

struct Ctx {
  std::shared_ptr<grpc::Channel> channel;
  std::vector<std::string> args;  // after the command words
};

std::unique_ptr<grpc::ClientContext> NewContext() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(FLAGS_timeout * 1000)));
  return ctx;
}

int Print(const grpc::Status& status, const google::protobuf::Message& resp) {
  if (!status.ok()) {
    absl::Status s = FromGrpcStatus(status);
    std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
                 std::string(s.message()).c_str());
    return 1;
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(resp, &text);
  std::fputs(text.empty() ? "{}\n" : text.c_str(), stdout);
  return 0;
}

template <typename Stub, typename Req, typename Resp>
int Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
         std::unique_ptr<Stub> stub, const Req& req) {
  Resp resp;
  auto context = NewContext();
  grpc::Status st = ((*stub).*method)(context.get(), req, &resp);
  return Print(st, resp);
}

using Command = std::function<int(const Ctx&)>;

std::map<std::string, Command> Commands() {
  using csi::v1::Identity;
  std::map<std::string, Command> c;
  c["identity info"] = [](const Ctx& ctx) {
    return Call(&Identity::Stub::GetPluginInfo, Identity::NewStub(ctx.channel),
                csi::v1::GetPluginInfoRequest());
  };
  c["identity caps"] = [](const Ctx& ctx) {
    return Call(&Identity::Stub::GetPluginCapabilities, Identity::NewStub(ctx.channel),
                csi::v1::GetPluginCapabilitiesRequest());
  };
  c["identity probe"] = [](const Ctx& ctx) {
    return Call(&Identity::Stub::Probe, Identity::NewStub(ctx.channel),
                csi::v1::ProbeRequest());
  };
  return c;
}

int Usage(const std::map<std::string, Command>& cmds) {
  std::vector<std::string> names;
  for (const auto& [name, _] : cmds) names.push_back(name);
  std::fprintf(stderr, "usage: ublk-csi-ctl [--endpoint=unix:///path] COMMAND [ARGS]\ncommands:\n  %s\n",
               absl::StrJoin(names, "\n  ").c_str());
  return 2;
}

}  // namespace
}  // namespace ublk_csi

int main(int argc, char** argv) {
  gflags::SetVersionString(ublk_csi::kVersion);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  auto cmds = ublk_csi::Commands();
  if (argc < 3) return ublk_csi::Usage(cmds);
  auto it = cmds.find(absl::StrCat(argv[1], " ", argv[2]));
  if (it == cmds.end()) return ublk_csi::Usage(cmds);
  auto endpoint = ublk_csi::ParseEndpoint(FLAGS_endpoint);
  if (!endpoint.ok()) {
    std::fprintf(stderr, "ublk-csi-ctl: %s\n", std::string(endpoint.status().message()).c_str());
    return 2;
  }
  ublk_csi::Ctx ctx;
  ctx.channel = grpc::CreateChannel(endpoint->GrpcTarget(), grpc::InsecureChannelCredentials());
  for (int i = 3; i < argc; ++i) ctx.args.emplace_back(argv[i]);
  return it->second(ctx);
}
