// Request validation: every CSI request type through a VolumeManager over the
// fake backend and the fake mounter. The first input byte picks the request
// type, the rest is that request in protobuf wire format. Before it runs, the
// manager holds one staged volume and one snapshot of it; in the request the
// strings "@vol" and "@snap" stand for their IDs (so an input can name them),
// and every absolute path is moved under the scratch dir (the node calls
// create and remove directories). Any request must get an answer or a
// Status: no crash, no sanitizer report, nothing outside the data dir gone.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "csi.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "tests/fuzz/fuzz_env.h"

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

struct Names {
  std::string vol, snap, root;
};

std::string Rewrite(const FieldDescriptor* f, const std::string& v, const Names& n) {
  if (v == "@vol") return n.vol;
  if (v == "@snap") return n.snap;
  if (absl::EndsWith(f->name(), "path") && absl::StartsWith(v, "/")) return n.root + v;
  return v;
}

// Rewrites every string field of m (recursively) with Rewrite.
void Walk(Message* m, const Names& n) {
  const auto* refl = m->GetReflection();
  const auto* desc = m->GetDescriptor();
  for (int i = 0; i < desc->field_count(); ++i) {
    const FieldDescriptor* f = desc->field(i);
    if (f->is_map()) continue;  // secrets, parameters, contexts: opaque
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      if (f->is_repeated()) {
        for (int j = 0; j < refl->FieldSize(*m, f); ++j) {
          refl->SetRepeatedString(m, f, j, Rewrite(f, refl->GetRepeatedString(*m, f, j), n));
        }
      } else if (!f->has_presence() || refl->HasField(*m, f)) {
        refl->SetString(m, f, Rewrite(f, refl->GetString(*m, f), n));
      }
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int j = 0; j < refl->FieldSize(*m, f); ++j) {
          Walk(refl->MutableRepeatedMessage(m, f, j), n);
        }
      } else if (refl->HasField(*m, f)) {
        Walk(refl->MutableMessage(m, f), n);
      }
    }
  }
}

template <class Req, class Call>
void Run(const uint8_t* data, size_t size, const Names& n, Call call) {
  Req req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  Walk(&req, n);
  (void)call(req);
}

[[noreturn]] void Fail(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "fuzz setup: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t type = data[0];
  ++data;
  --size;

  ublk_fuzz::Env env;
  env.Open();
  ublk_csi::VolumeManager& vm = *env.manager;
  if (absl::Status s = vm.Load(); !s.ok()) Fail("Load", s);
  Names n;
  n.root = ublk_fuzz::Root();
  {
    csi::v1::CreateVolumeRequest req;
    req.set_name("seed");
    auto* cap = req.add_volume_capabilities();
    cap->mutable_mount()->set_fs_type("ext4");
    cap->mutable_access_mode()->set_mode(csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    auto r = vm.CreateVolume(req);
    if (!r.ok()) Fail("CreateVolume", r.status());
    n.vol = r->volume().volume_id();
    csi::v1::CreateSnapshotRequest sreq;
    sreq.set_name("seed-snap");
    sreq.set_source_volume_id(n.vol);
    auto sr = vm.CreateSnapshot(sreq);
    if (!sr.ok()) Fail("CreateSnapshot", sr.status());
    n.snap = sr->snapshot().snapshot_id();
    csi::v1::NodeStageVolumeRequest st;
    st.set_volume_id(n.vol);
    st.set_staging_target_path(n.root + "/stage");
    *st.mutable_volume_capability() = req.volume_capabilities(0);
    auto str = vm.NodeStageVolume(st);
    if (!str.ok()) Fail("NodeStageVolume", str.status());
  }

  using namespace csi::v1;  // NOLINT: sixteen request types
  switch (type % 16) {
    case 0:
      Run<CreateVolumeRequest>(data, size, n, [&](auto& r) { return vm.CreateVolume(r); });
      break;
    case 1:
      Run<DeleteVolumeRequest>(data, size, n, [&](auto& r) { return vm.DeleteVolume(r); });
      break;
    case 2:
      Run<ValidateVolumeCapabilitiesRequest>(
          data, size, n, [&](auto& r) { return vm.ValidateVolumeCapabilities(r); });
      break;
    case 3:
      Run<ListVolumesRequest>(data, size, n, [&](auto& r) { return vm.ListVolumes(r); });
      break;
    case 4:
      Run<GetCapacityRequest>(data, size, n, [&](auto& r) { return vm.GetCapacity(r); });
      break;
    case 5:
      Run<ControllerExpandVolumeRequest>(data, size, n,
                                         [&](auto& r) { return vm.ControllerExpandVolume(r); });
      break;
    case 6:
      Run<CreateSnapshotRequest>(data, size, n, [&](auto& r) { return vm.CreateSnapshot(r); });
      break;
    case 7:
      Run<DeleteSnapshotRequest>(data, size, n, [&](auto& r) { return vm.DeleteSnapshot(r); });
      break;
    case 8:
      Run<ListSnapshotsRequest>(data, size, n, [&](auto& r) { return vm.ListSnapshots(r); });
      break;
    case 9:
      Run<NodeStageVolumeRequest>(data, size, n, [&](auto& r) { return vm.NodeStageVolume(r); });
      break;
    case 10:
      Run<NodeUnstageVolumeRequest>(data, size, n,
                                    [&](auto& r) { return vm.NodeUnstageVolume(r); });
      break;
    case 11:
      Run<NodePublishVolumeRequest>(data, size, n,
                                    [&](auto& r) { return vm.NodePublishVolume(r); });
      break;
    case 12:
      Run<NodeUnpublishVolumeRequest>(data, size, n,
                                      [&](auto& r) { return vm.NodeUnpublishVolume(r); });
      break;
    case 13:
      Run<NodeGetVolumeStatsRequest>(data, size, n,
                                     [&](auto& r) { return vm.NodeGetVolumeStats(r); });
      break;
    case 14:
      Run<NodeExpandVolumeRequest>(data, size, n, [&](auto& r) { return vm.NodeExpandVolume(r); });
      break;
    case 15:
      (void)vm.Status();
      (void)vm.NodeGetInfo();
      (void)vm.RecoverExport(n.vol);
      break;
  }
  env.CheckSentinel();
  return 0;
}
