// The record parser: RecordStore::LoadAll and VolumeManager::Load over one
// record file whose bytes are the input (a VolumeRecord or, when the first
// byte is odd, a SnapshotRecord), then DeleteVolume/DeleteSnapshot of every
// record that loaded. A record file is whatever was on disk after a crash,
// a bad disk or a hand edit: it may be set aside, but it must never crash
// the plugin nor make it touch a file outside its data dir.
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "csi/record_store.h"
#include "records.pb.h"
#include "tests/fuzz/fuzz_env.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool snapshot = data[0] & 1;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  // Name the file after the ID the record claims when that is a valid ID, so
  // the input can get past the name check to what a record drives.
  std::string id;
  if (snapshot) {
    ublk_csi::records::SnapshotRecord r;
    if (r.ParseFromString(bytes)) id = r.snapshot_id();
  } else {
    ublk_csi::records::VolumeRecord r;
    if (r.ParseFromString(bytes)) id = r.volume_id();
  }
  if (!ublk_csi::ValidateId(id, "id").ok()) id = "x";

  ublk_fuzz::Env env;
  env.Open();
  {
    std::ofstream f(env.store->records_dir() + "/" + id + (snapshot ? ".snapshot" : ".volume"),
                    std::ios::binary);
    f << bytes;
  }
  if (env.manager->Load().ok()) {
    for (const ublk_csi::VolumeStatus& v : env.manager->Status()) {
      csi::v1::DeleteVolumeRequest req;
      req.set_volume_id(v.volume_id);
      (void)env.manager->DeleteVolume(req);
    }
    auto snaps = env.manager->ListSnapshots(csi::v1::ListSnapshotsRequest());
    if (snaps.ok()) {
      for (const auto& e : snaps->entries()) {
        csi::v1::DeleteSnapshotRequest req;
        req.set_snapshot_id(e.snapshot().snapshot_id());
        (void)env.manager->DeleteSnapshot(req);
      }
    }
  }
  env.CheckSentinel();
  return 0;
}
