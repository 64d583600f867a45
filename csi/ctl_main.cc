// ublk-csi-ctl: drive the plugin by hand over its CSI socket, like the
// community `csc` tool. One gRPC call per invocation; prints the response as
// protobuf text; exit 0 on OK, 1 on a gRPC error (printed with its code), 2 on
// bad usage. `bench` is the exception: many calls over one channel, timed.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "csi.grpc.pb.h"
#include "csi/endpoint.h"
#include "csi/grpc_status.h"
#include "csi/version.h"
#include "csi/volume_manager.h"
#include "gflags/gflags.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/grpcpp.h"

DEFINE_string(endpoint, "unix:///csi/csi.sock", "plugin CSI endpoint");
DEFINE_double(timeout, 30, "per-call deadline in seconds");
DEFINE_string(size, "", "volume create: capacity, e.g. 1Gi, 512Mi (default: the plugin's)");
DEFINE_string(fs_type, "", "volume create / node stage: ext4 or xfs");
DEFINE_bool(block, false, "volume create / validate / node stage / publish: raw block access");
DEFINE_string(from_snapshot, "", "volume create: restore from this snapshot ID");
DEFINE_string(from_volume, "", "volume create: clone this volume ID");
DEFINE_string(params, "", "volume create: StorageClass parameters, k=v,k=v (fsType, blockSize)");
DEFINE_string(secrets_file, "",
              "volume create/delete/expand, snapshot create/delete, node stage/publish/expand: "
              "the request's secrets, one key=value per line (# comments), e.g. userID=... and "
              "userKey=... for an RBD volume; a file, so no key is on a command line");
DEFINE_string(context, "",
              "node stage / publish: the volume_context CreateVolume returned, k=v,k=v (a node "
              "without the volume's record, e.g. an RBD volume made by the controller)");
DEFINE_string(mount_flags, "", "node stage / publish: mount flags, a,b,c");
DEFINE_bool(readonly, false, "node publish: read-only");
DEFINE_int32(max_entries, 0, "volume list / snapshot list: page size (0 = all)");
DEFINE_string(starting_token, "", "volume list / snapshot list: next_token of the previous page");
DEFINE_string(access_mode, "SINGLE_NODE_WRITER", "volume capability access mode");
DEFINE_int32(count, 200, "bench: volumes to create, stage and publish");
DEFINE_string(prefix, "bench", "bench: volume names are PREFIX-0 .. PREFIX-(count-1)");
DEFINE_string(samples, "", "bench: append every call's latency to this file (TSV: call, i, us)");

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

int BadUsage(const std::string& msg) {
  std::fprintf(stderr, "ublk-csi-ctl: %s\n", msg.c_str());
  return 2;
}

// The volume capability the flags describe (--block, --fs-type,
// --mount-flags, --access-mode).
bool Capability(csi::v1::VolumeCapability* cap) {
  if (FLAGS_block) {
    cap->mutable_block();
  } else {
    auto* m = cap->mutable_mount();
    m->set_fs_type(FLAGS_fs_type);
    for (absl::string_view f : absl::StrSplit(FLAGS_mount_flags, ',', absl::SkipEmpty())) {
      m->add_mount_flags(std::string(f));
    }
  }
  csi::v1::VolumeCapability::AccessMode::Mode mode;
  if (!csi::v1::VolumeCapability::AccessMode::Mode_Parse(FLAGS_access_mode, &mode)) {
    std::fprintf(stderr, "ublk-csi-ctl: --access-mode=%s is not a CSI access mode\n",
                 FLAGS_access_mode.c_str());
    return false;
  }
  cap->mutable_access_mode()->set_mode(mode);
  return true;
}

// Checks the positional argument count; prints usage for the command if wrong.
bool Args(const Ctx& ctx, size_t n, const char* usage) {
  if (ctx.args.size() == n) return true;
  std::fprintf(stderr, "usage: ublk-csi-ctl %s\n", usage);
  return false;
}

bool Size(const std::string& text, int64_t* out) {
  absl::StatusOr<int64_t> v = ParseSize(text);
  if (!v.ok()) {
    std::fprintf(stderr, "ublk-csi-ctl: %s\n", std::string(v.status().message()).c_str());
    return false;
  }
  *out = *v;
  return true;
}

// k=v,k=v into a protobuf map (--params, --context).
void KeyValues(const std::string& text, google::protobuf::Map<std::string, std::string>* out) {
  for (absl::string_view kv : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    (*out)[p.first] = p.second;
  }
}

// --secrets-file into a request's secrets. A malformed line is named by
// its number, never echoed: it may hold a key.
bool Secrets(google::protobuf::Map<std::string, std::string>* out) {
  if (FLAGS_secrets_file.empty()) return true;
  std::ifstream in(FLAGS_secrets_file);
  if (!in) {
    std::fprintf(stderr, "ublk-csi-ctl: --secrets-file=%s: %s\n", FLAGS_secrets_file.c_str(),
                 std::strerror(errno));
    return false;
  }
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    size_t eq = l.find('=');
    if (eq == 0 || eq == absl::string_view::npos) {
      std::fprintf(stderr, "ublk-csi-ctl: --secrets-file=%s line %d: want key=value\n",
                   FLAGS_secrets_file.c_str(), n);
      return false;
    }
    (*out)[std::string(absl::StripAsciiWhitespace(l.substr(0, eq)))] =
        std::string(absl::StripAsciiWhitespace(l.substr(eq + 1)));
  }
  return true;
}

// One call kind's latencies in microseconds; nearest-rank percentiles.
struct Latencies {
  std::vector<double> us;
  int errors = 0;
  double Percentile(double p) const {
    if (us.empty()) return 0;
    std::vector<double> v = us;
    std::sort(v.begin(), v.end());
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
  }
};

// Times one unary call; on error prints it (the first few) and counts it.
template <typename Stub, typename Req, typename Resp>
bool Timed(grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*), Stub* stub,
           const Req& req, Resp* resp, Latencies* lat, const char* what) {
  auto context = NewContext();
  auto t0 = std::chrono::steady_clock::now();
  grpc::Status st = (stub->*method)(context.get(), req, resp);
  auto t1 = std::chrono::steady_clock::now();
  if (!st.ok()) {
    if (++lat->errors <= 3) {
      absl::Status s = FromGrpcStatus(st);
      std::fprintf(stderr, "bench: %s: %s: %s\n", what, absl::StatusCodeToString(s.code()).c_str(),
                   std::string(s.message()).c_str());
    }
    return false;
  }
  lat->us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  return true;
}

// bench DIR: control-plane latency as kubelet and the provisioner see it,
// without a process start per call: one channel, --count block volumes,
// each CreateVolume'd, then each NodeStageVolume'd (block: no mkfs) at
// DIR/stage/NAME, then each NodePublishVolume'd at DIR/publish/NAME. Every
// call is timed on the client (gRPC over the unix socket included).
int Bench(const Ctx& ctx) {
  if (!Args(ctx, 1, "bench DIR [--count=200] [--prefix=bench] [--size=16Mi] [--samples=FILE]")) {
    return 2;
  }
  if (FLAGS_count <= 0) return BadUsage("--count must be positive");
  FLAGS_block = true;
  const std::string dir = ctx.args[0];
  auto controller = csi::v1::Controller::NewStub(ctx.channel);
  auto node = csi::v1::Node::NewStub(ctx.channel);
  // Connect before the clock starts: the first call would otherwise pay it.
  if (!ctx.channel->WaitForConnected(
          std::chrono::system_clock::now() +
          std::chrono::milliseconds(static_cast<int64_t>(FLAGS_timeout * 1000)))) {
    std::fprintf(stderr, "bench: cannot connect to %s\n", FLAGS_endpoint.c_str());
    return 1;
  }
  int64_t bytes = 0;
  if (!FLAGS_size.empty() && !Size(FLAGS_size, &bytes)) return 2;
  Latencies create, stage, publish;
  std::vector<std::pair<std::string, std::string>> vols;  // (name, id)
  for (int i = 0; i < FLAGS_count; ++i) {
    csi::v1::CreateVolumeRequest req;
    req.set_name(absl::StrCat(FLAGS_prefix, "-", i));
    if (bytes > 0) req.mutable_capacity_range()->set_required_bytes(bytes);
    if (!Capability(req.add_volume_capabilities())) return 2;
    csi::v1::CreateVolumeResponse resp;
    if (Timed(&csi::v1::Controller::Stub::CreateVolume, controller.get(), req, &resp, &create,
              "CreateVolume")) {
      vols.emplace_back(req.name(), resp.volume().volume_id());
    }
  }
  std::vector<std::pair<std::string, std::string>> staged;
  for (const auto& [name, id] : vols) {
    csi::v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(absl::StrCat(dir, "/stage/", name));
    if (!Capability(req.mutable_volume_capability())) return 2;
    csi::v1::NodeStageVolumeResponse resp;
    if (Timed(&csi::v1::Node::Stub::NodeStageVolume, node.get(), req, &resp, &stage,
              "NodeStageVolume")) {
      staged.emplace_back(name, id);
    }
  }
  for (const auto& [name, id] : staged) {
    csi::v1::NodePublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(absl::StrCat(dir, "/stage/", name));
    req.set_target_path(absl::StrCat(dir, "/publish/", name));
    if (!Capability(req.mutable_volume_capability())) return 2;
    csi::v1::NodePublishVolumeResponse resp;
    Timed(&csi::v1::Node::Stub::NodePublishVolume, node.get(), req, &resp, &publish,
          "NodePublishVolume");
  }
  const std::pair<const char*, const Latencies*> rows[] = {
      {"CreateVolume", &create}, {"NodeStageVolume", &stage}, {"NodePublishVolume", &publish}};
  std::printf("%-18s %6s %6s %10s %10s %10s %10s\n", "call", "ok", "errors", "p50_ms", "p99_ms",
              "mean_ms", "max_ms");
  for (const auto& [name, lat] : rows) {
    double sum = 0;
    for (double u : lat->us) sum += u;
    std::printf("%-18s %6zu %6d %10.2f %10.2f %10.2f %10.2f\n", name, lat->us.size(), lat->errors,
                lat->Percentile(50) / 1000, lat->Percentile(99) / 1000,
                lat->us.empty() ? 0.0 : sum / static_cast<double>(lat->us.size()) / 1000,
                lat->Percentile(100) / 1000);
  }
  if (!FLAGS_samples.empty()) {
    FILE* f = std::fopen(FLAGS_samples.c_str(), "a");
    if (f == nullptr) {
      std::fprintf(stderr, "bench: cannot open %s\n", FLAGS_samples.c_str());
      return 1;
    }
    for (const auto& [name, lat] : rows) {
      for (size_t i = 0; i < lat->us.size(); ++i) {
        std::fprintf(f, "%s\t%s\t%zu\t%.1f\n", FLAGS_prefix.c_str(), name, i, lat->us[i]);
      }
    }
    std::fclose(f);
  }
  return create.errors + stage.errors + publish.errors == 0 ? 0 : 1;
}

std::map<std::string, Command> Commands() {
  using csi::v1::Controller;
  using csi::v1::Identity;
  using csi::v1::Node;
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
    return Call(&Identity::Stub::Probe, Identity::NewStub(ctx.channel), csi::v1::ProbeRequest());
  };

  // Controller.
  c["volume create"] = [](const Ctx& ctx) {
    if (!Args(ctx, 1,
              "volume create NAME [--size=1Gi] [--fs-type=ext4|xfs] [--block] "
              "[--from-snapshot=ID|--from-volume=ID] [--params=k=v,...]")) {
      return 2;
    }
    csi::v1::CreateVolumeRequest req;
    req.set_name(ctx.args[0]);
    if (!FLAGS_size.empty()) {
      int64_t bytes = 0;
      if (!Size(FLAGS_size, &bytes)) return 2;
      req.mutable_capacity_range()->set_required_bytes(bytes);
    }
    if (!Capability(req.add_volume_capabilities())) return 2;
    KeyValues(FLAGS_params, req.mutable_parameters());
    if (!Secrets(req.mutable_secrets())) return 2;
    if (!FLAGS_from_snapshot.empty() && !FLAGS_from_volume.empty()) {
      return BadUsage("--from-snapshot and --from-volume exclude each other");
    }
    if (!FLAGS_from_snapshot.empty()) {
      req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(FLAGS_from_snapshot);
    }
    if (!FLAGS_from_volume.empty()) {
      req.mutable_volume_content_source()->mutable_volume()->set_volume_id(FLAGS_from_volume);
    }
    return Call(&Controller::Stub::CreateVolume, Controller::NewStub(ctx.channel), req);
  };
  c["volume delete"] = [](const Ctx& ctx) {
    if (!Args(ctx, 1, "volume delete ID")) return 2;
    csi::v1::DeleteVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Controller::Stub::DeleteVolume, Controller::NewStub(ctx.channel), req);
  };
  c["volume list"] = [](const Ctx& ctx) {
    if (!Args(ctx, 0, "volume list [--max-entries=N] [--starting-token=T]")) return 2;
    csi::v1::ListVolumesRequest req;
    req.set_max_entries(FLAGS_max_entries);
    req.set_starting_token(FLAGS_starting_token);
    return Call(&Controller::Stub::ListVolumes, Controller::NewStub(ctx.channel), req);
  };
  c["volume expand"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "volume expand ID SIZE")) return 2;
    csi::v1::ControllerExpandVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    int64_t bytes = 0;
    if (!Size(ctx.args[1], &bytes)) return 2;
    req.mutable_capacity_range()->set_required_bytes(bytes);
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Controller::Stub::ControllerExpandVolume, Controller::NewStub(ctx.channel), req);
  };
  c["volume validate"] = [](const Ctx& ctx) {
    if (!Args(ctx, 1, "volume validate ID [--block] [--fs-type=T] [--access-mode=M]")) return 2;
    csi::v1::ValidateVolumeCapabilitiesRequest req;
    req.set_volume_id(ctx.args[0]);
    if (!Capability(req.add_volume_capabilities())) return 2;
    return Call(&Controller::Stub::ValidateVolumeCapabilities, Controller::NewStub(ctx.channel),
                req);
  };
  c["capacity"] = [](const Ctx& ctx) {
    if (!Args(ctx, 0, "capacity")) return 2;
    return Call(&Controller::Stub::GetCapacity, Controller::NewStub(ctx.channel),
                csi::v1::GetCapacityRequest());
  };
  c["controller caps"] = [](const Ctx& ctx) {
    return Call(&Controller::Stub::ControllerGetCapabilities, Controller::NewStub(ctx.channel),
                csi::v1::ControllerGetCapabilitiesRequest());
  };
  c["snapshot create"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "snapshot create VOLUME_ID NAME")) return 2;
    csi::v1::CreateSnapshotRequest req;
    req.set_source_volume_id(ctx.args[0]);
    req.set_name(ctx.args[1]);
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Controller::Stub::CreateSnapshot, Controller::NewStub(ctx.channel), req);
  };
  c["snapshot delete"] = [](const Ctx& ctx) {
    if (!Args(ctx, 1, "snapshot delete ID")) return 2;
    csi::v1::DeleteSnapshotRequest req;
    req.set_snapshot_id(ctx.args[0]);
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Controller::Stub::DeleteSnapshot, Controller::NewStub(ctx.channel), req);
  };
  c["snapshot list"] = [](const Ctx& ctx) {
    if (ctx.args.size() > 1) return BadUsage("usage: ublk-csi-ctl snapshot list [VOLUME_ID]");
    csi::v1::ListSnapshotsRequest req;
    if (!ctx.args.empty()) req.set_source_volume_id(ctx.args[0]);
    req.set_max_entries(FLAGS_max_entries);
    req.set_starting_token(FLAGS_starting_token);
    return Call(&Controller::Stub::ListSnapshots, Controller::NewStub(ctx.channel), req);
  };

  // Node.
  c["node stage"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "node stage ID STAGING_PATH [--fs-type=T] [--block] [--mount-flags=a,b]")) {
      return 2;
    }
    csi::v1::NodeStageVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_staging_target_path(ctx.args[1]);
    if (!Capability(req.mutable_volume_capability())) return 2;
    KeyValues(FLAGS_context, req.mutable_volume_context());
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Node::Stub::NodeStageVolume, Node::NewStub(ctx.channel), req);
  };
  c["node unstage"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "node unstage ID STAGING_PATH")) return 2;
    csi::v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_staging_target_path(ctx.args[1]);
    return Call(&Node::Stub::NodeUnstageVolume, Node::NewStub(ctx.channel), req);
  };
  c["node publish"] = [](const Ctx& ctx) {
    if (!Args(ctx, 3, "node publish ID STAGING_PATH TARGET_PATH [--readonly] [--block]")) return 2;
    csi::v1::NodePublishVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_staging_target_path(ctx.args[1]);
    req.set_target_path(ctx.args[2]);
    req.set_readonly(FLAGS_readonly);
    if (!Capability(req.mutable_volume_capability())) return 2;
    KeyValues(FLAGS_context, req.mutable_volume_context());
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Node::Stub::NodePublishVolume, Node::NewStub(ctx.channel), req);
  };
  c["node unpublish"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "node unpublish ID TARGET_PATH")) return 2;
    csi::v1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_target_path(ctx.args[1]);
    return Call(&Node::Stub::NodeUnpublishVolume, Node::NewStub(ctx.channel), req);
  };
  c["node info"] = [](const Ctx& ctx) {
    return Call(&Node::Stub::NodeGetInfo, Node::NewStub(ctx.channel),
                csi::v1::NodeGetInfoRequest());
  };
  c["node caps"] = [](const Ctx& ctx) {
    return Call(&Node::Stub::NodeGetCapabilities, Node::NewStub(ctx.channel),
                csi::v1::NodeGetCapabilitiesRequest());
  };
  c["node stats"] = [](const Ctx& ctx) {
    if (!Args(ctx, 2, "node stats ID VOLUME_PATH")) return 2;
    csi::v1::NodeGetVolumeStatsRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_volume_path(ctx.args[1]);
    return Call(&Node::Stub::NodeGetVolumeStats, Node::NewStub(ctx.channel), req);
  };
  c["node expand"] = [](const Ctx& ctx) {
    if (!Args(ctx, 3, "node expand ID VOLUME_PATH SIZE")) return 2;
    csi::v1::NodeExpandVolumeRequest req;
    req.set_volume_id(ctx.args[0]);
    req.set_volume_path(ctx.args[1]);
    int64_t bytes = 0;
    if (!Size(ctx.args[2], &bytes)) return 2;
    req.mutable_capacity_range()->set_required_bytes(bytes);
    if (!Secrets(req.mutable_secrets())) return 2;
    return Call(&Node::Stub::NodeExpandVolume, Node::NewStub(ctx.channel), req);
  };
  // Exports at a glance: ListVolumes' VOLUME_CONDITION carries each export's
  // state, device, worker and copy mode (CSI has no RPC of its own for it).
  c["status"] = [](const Ctx& ctx) {
    if (!Args(ctx, 0, "status")) return 2;
    auto stub = Controller::NewStub(ctx.channel);
    csi::v1::ListVolumesRequest req;
    std::printf("%-22s %-24s %12s %-9s %s\n", "VOLUME", "NAME", "BYTES", "CONDITION", "EXPORT");
    do {
      csi::v1::ListVolumesResponse resp;
      auto context = NewContext();
      grpc::Status st = stub->ListVolumes(context.get(), req, &resp);
      if (!st.ok()) return Print(st, resp);
      for (const auto& e : resp.entries()) {
        std::printf("%-22s %-24s %12lld %-9s %s\n", e.volume().volume_id().c_str(),
                    e.volume().volume_context().count("name") != 0
                        ? e.volume().volume_context().at("name").c_str()
                        : "-",
                    static_cast<long long>(e.volume().capacity_bytes()),
                    e.status().volume_condition().abnormal() ? "ABNORMAL" : "ok",
                    e.status().volume_condition().message().c_str());
      }
      req.set_starting_token(resp.next_token());
    } while (!req.starting_token().empty());
    return 0;
  };
  c["bench"] = Bench;
  return c;
}

int Usage(const std::map<std::string, Command>& cmds) {
  std::vector<std::string> names;
  for (const auto& [name, _] : cmds) names.push_back(name);
  std::fprintf(stderr,
               "usage: ublk-csi-ctl [--endpoint=unix:///path] COMMAND [ARGS]\ncommands:\n  %s\n",
               absl::StrJoin(names, "\n  ").c_str());
  return 2;
}

}  // namespace
}  // namespace ublk_csi

int main(int argc, char** argv) {
  gflags::SetVersionString(ublk_csi::kVersion);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  auto cmds = ublk_csi::Commands();
  if (argc < 2) return ublk_csi::Usage(cmds);
  // Commands are one word ("status") or two ("volume create").
  int first_arg = 3;
  auto it = argc >= 3 ? cmds.find(absl::StrCat(argv[1], " ", argv[2])) : cmds.end();
  if (it == cmds.end()) {
    it = cmds.find(argv[1]);
    first_arg = 2;
  }
  if (it == cmds.end()) return ublk_csi::Usage(cmds);
  auto endpoint = ublk_csi::ParseEndpoint(FLAGS_endpoint);
  if (!endpoint.ok()) {
    std::fprintf(stderr, "ublk-csi-ctl: %s\n", std::string(endpoint.status().message()).c_str());
    return 2;
  }
  ublk_csi::Ctx ctx;
  ctx.channel = grpc::CreateChannel(endpoint->GrpcTarget(), grpc::InsecureChannelCredentials());
  for (int i = first_arg; i < argc; ++i) ctx.args.emplace_back(argv[i]);
  return it->second(ctx);
}
