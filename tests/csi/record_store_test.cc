// RecordStore crash safety: atomic replace, leftover temp files, a crash
// before the rename, corrupt records set aside (never deleted), ID safety.
#include "csi/record_store.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using records::SnapshotRecord;
using records::VolumeRecord;

VolumeRecord Vol(const std::string& id, int64_t cap) {
  VolumeRecord r;
  r.set_volume_id(id);
  r.set_name("name-" + id);
  r.set_state(VolumeRecord::READY);
  r.set_capacity_bytes(cap);
  r.set_dev_id(0);
  r.set_backing_file(RecordStore::VolumeFileRel(id));  // a record without one is corrupt
  return r;
}

std::vector<std::string> Ls(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

class RecordStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<RecordStore> Open() {
    auto s = RecordStore::Open(dir_.path() + "/data", &registry_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::string Records() { return dir_.path() + "/data/records"; }

  ublk_test::TempDir dir_;
  prometheus::Registry registry_;
};

TEST_F(RecordStoreTest, CreatesLayout) {
  auto store = Open();
  for (const char* sub : {"records", "records/corrupt", "volumes", "snapshots"}) {
    EXPECT_EQ(::access((dir_.path() + "/data/" + sub).c_str(), F_OK), 0) << sub;
  }
}

TEST_F(RecordStoreTest, PutReplacesAtomicallyAndLeavesNoTempFiles) {
  auto store = Open();
  ASSERT_TRUE(store->PutVolume(Vol("vol-a", 1)).ok());
  ASSERT_TRUE(store->PutVolume(Vol("vol-a", 2)).ok());
  SnapshotRecord snap;
  snap.set_snapshot_id("snap-a");
  snap.set_ready_to_use(true);
  snap.set_file(RecordStore::SnapshotFileRel("snap-a"));
  ASSERT_TRUE(store->PutSnapshot(snap).ok());
  EXPECT_EQ(Ls(Records()),
            (std::vector<std::string>{"corrupt", "snap-a.snapshot", "vol-a.volume"}));
  auto loaded = store->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->volumes.size(), 1u);
  EXPECT_EQ(loaded->volumes[0].capacity_bytes(), 2);
  EXPECT_TRUE(loaded->volumes[0].has_dev_id());
  ASSERT_EQ(loaded->snapshots.size(), 1u);
  ASSERT_TRUE(store->DeleteVolume("vol-a").ok());
  ASSERT_TRUE(store->DeleteVolume("vol-a").ok()) << "deleting an absent record is OK";
  ASSERT_TRUE(store->DeleteSnapshot("snap-a").ok());
  EXPECT_TRUE(store->LoadAll()->volumes.empty());
}

TEST_F(RecordStoreTest, CrashBeforeRenameKeepsTheOldRecord) {
  auto store = Open();
  ASSERT_TRUE(store->PutVolume(Vol("vol-a", 1)).ok());
  store->SetBeforeRenameHookForTest([] { return absl::InternalError("simulated crash"); });
  EXPECT_FALSE(store->PutVolume(Vol("vol-a", 2)).ok());
  // The "crash" left the temp file behind; the record is the old one.
  EXPECT_EQ(Ls(Records()),
            (std::vector<std::string>{".vol-a.volume.tmp", "corrupt", "vol-a.volume"}));
  store.reset();
  auto reopened = Open();  // restart: the temp file is cleaned up
  EXPECT_EQ(Ls(Records()), (std::vector<std::string>{"corrupt", "vol-a.volume"}));
  auto loaded = reopened->LoadAll();
  ASSERT_EQ(loaded->volumes.size(), 1u);
  EXPECT_EQ(loaded->volumes[0].capacity_bytes(), 1);
}

TEST_F(RecordStoreTest, CorruptRecordsAreSetAsideAndCounted) {
  auto store = Open();
  ASSERT_TRUE(store->PutVolume(Vol("vol-good", 1)).ok());
  WriteFile(Records() + "/vol-garbage.volume", "\xff\xff\xff not a record");
  // Parses, but names another volume: copied or tampered with.
  WriteFile(Records() + "/vol-other.volume", Vol("vol-good", 7).SerializeAsString());
  WriteFile(Records() + "/snap-bad.snapshot", "\x0a\xff");
  auto loaded = store->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->volumes.size(), 1u);
  EXPECT_EQ(loaded->volumes[0].volume_id(), "vol-good");
  EXPECT_EQ(loaded->set_aside.size(), 3u);
  EXPECT_EQ(store->corrupt_count(), 3);
  auto corrupt = Ls(Records() + "/corrupt");
  ASSERT_EQ(corrupt.size(), 3u) << "set aside, never deleted";
  EXPECT_THAT(corrupt, ::testing::Contains(::testing::StartsWith("vol-garbage.volume.")));
  std::ifstream f(Records() + "/corrupt/" + corrupt[2]);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_FALSE(ss.str().empty());
  // Logged and counted once: a second load finds nothing more to set aside.
  EXPECT_TRUE(store->LoadAll()->set_aside.empty());
  EXPECT_EQ(store->corrupt_count(), 3);
  std::string metrics = prometheus::TextSerializer().Serialize(registry_.Collect());
  EXPECT_THAT(metrics, ::testing::HasSubstr("ublk_csi_corrupt_records_total 3"));
}

// Found writing tests/fuzz/record_fuzz (its sentinel oracle): a record naming
// "../x" as its backing file loaded, and rolling it back (CREATING) unlinked a
// file outside the data dir.
TEST_F(RecordStoreTest, RecordsNamingFilesOutsideTheDataDirAreSetAside) {
  auto store = Open();
  VolumeRecord vol = Vol("vol-1", 1);
  vol.set_schema_version(1);
  vol.set_state(VolumeRecord::CREATING);
  vol.set_backing_file("volumes/../../victim");
  WriteFile(Records() + "/vol-1.volume", vol.SerializeAsString());
  VolumeRecord abs = Vol("vol-2", 1);
  abs.set_schema_version(1);
  abs.set_backing_file("/etc/passwd");
  WriteFile(Records() + "/vol-2.volume", abs.SerializeAsString());
  SnapshotRecord snap;
  snap.set_schema_version(1);
  snap.set_snapshot_id("snap-1");
  snap.set_file("../victim");
  WriteFile(Records() + "/snap-1.snapshot", snap.SerializeAsString());
  VolumeRecord good = Vol("vol-3", 1);
  good.set_backing_file(RecordStore::VolumeFileRel("vol-3"));
  ASSERT_TRUE(store->PutVolume(good).ok());

  auto loaded = store->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->volumes.size(), 1u);
  EXPECT_EQ(loaded->volumes[0].volume_id(), "vol-3");
  EXPECT_TRUE(loaded->snapshots.empty());
  EXPECT_EQ(loaded->set_aside.size(), 3u);
}

TEST_F(RecordStoreTest, IdsCannotEscapeTheDataDir) {
  auto store = Open();
  for (const char* bad : {"../x", "a/b", ".", "..", ".x", "", "x\n"}) {
    EXPECT_EQ(store->PutVolume(Vol(bad, 1)).code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store->DeleteVolume(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateId("vol-0123456789abcdef", "volume_id").ok());
  EXPECT_TRUE(ValidateId(std::string(128, 'a'), "volume_id").ok());
  EXPECT_FALSE(ValidateId(std::string(129, 'a'), "volume_id").ok());
  auto s = ValidateId("a/b", "volume_id");
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("volume_id"));
}

}  // namespace
}  // namespace ublk_csi
