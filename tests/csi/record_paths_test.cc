// Records are untrusted input (issue 16, item 8): a record whose data-dir
// path (backing_file, snapshot file) leaves the data dir, by "..", an
// absolute path or a symlink, or whose node paths are not clean, is set aside
// like a corrupt record (log line, counter) and never acted on: before, a
// CREATING record with backing_file "../victim" made the next start unlink
// a file outside the data dir.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/record_store.h"
#include "csi/volume_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using records::SnapshotRecord;
using records::VolumeRecord;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class RecordPathsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = dir_.path() + "/data";
    auto store = RecordStore::Open(data_, &registry_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    victim_ = dir_.path() + "/victim";
    std::ofstream(victim_) << "not the plugin's";
  }

  VolumeRecord Volume(const std::string& id, VolumeRecord::State state = VolumeRecord::READY) {
    VolumeRecord r;
    r.set_volume_id(id);
    r.set_name(id);
    r.set_state(state);
    r.set_capacity_bytes(1 << 20);
    r.set_access_type(VolumeRecord::MOUNT);
    r.set_backing_file(RecordStore::VolumeFileRel(id));
    return r;
  }

  // Loads the records the way the plugin does at start.
  absl::Status Load() {
    VolumeManagerOptions opts;
    opts.node_id = "n";
    manager_ = std::make_unique<VolumeManager>(opts, store_.get(), &backend_, &mounter_);
    return manager_->Load();
  }

  ublk_test::TempDir dir_;
  std::string data_, victim_;
  prometheus::Registry registry_;
  std::unique_ptr<RecordStore> store_;
  FakeVolumeBackend backend_{dir_.path(), 4};
  FakeMounter mounter_;
  std::unique_ptr<VolumeManager> manager_;
};

TEST_F(RecordPathsTest, ACreatingRecordPointingOutsideTheDataDirIsSetAsideNotUnlinked) {
  VolumeRecord evil = Volume("vol-evil", VolumeRecord::CREATING);
  evil.set_backing_file("../victim");
  ASSERT_TRUE(store_->PutVolume(evil).ok());
  VolumeRecord deleting = Volume("vol-abs", VolumeRecord::DELETING);
  deleting.set_backing_file(victim_);
  ASSERT_TRUE(store_->PutVolume(deleting).ok());
  ublk_test::LogCapture logs;
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(ReadFile(victim_), "not the plugin's") << "a file outside the data dir was unlinked";
  EXPECT_EQ(store_->corrupt_count(), 2);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {"corrupt record", "vol-evil", "backing_file",
                                            "not a clean path inside the data dir"}),
            1);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {"corrupt record", "vol-abs", "backing_file"}), 1);
  EXPECT_NE(::access((data_ + "/records/vol-evil.volume").c_str(), F_OK), 0) << "moved aside";
  EXPECT_FALSE(manager_->GetRecord("vol-evil").ok()) << "never served";
  std::string metrics = prometheus::TextSerializer().Serialize(registry_.Collect());
  EXPECT_THAT(metrics, HasSubstr("ublk_csi_corrupt_records_total 2"));
}

TEST_F(RecordPathsTest, ASymlinkInsideTheDataDirLeadingOutIsRefused) {
  // The backing file itself a symlink to a file outside: delete would unlink
  // only the link, but copy/snapshot would read and export the outside file.
  ASSERT_EQ(::symlink(victim_.c_str(), (data_ + "/volumes/vol-link.img").c_str()), 0);
  ASSERT_TRUE(store_->PutVolume(Volume("vol-link")).ok());
  // A symlinked dir on the way.
  ASSERT_EQ(::symlink(dir_.path().c_str(), (data_ + "/volumes/out").c_str()), 0);
  VolumeRecord via_dir = Volume("vol-dir", VolumeRecord::DELETING);
  via_dir.set_backing_file("volumes/out/victim");
  ASSERT_TRUE(store_->PutVolume(via_dir).ok());
  ASSERT_TRUE(store_->PutVolume(Volume("vol-good")).ok());
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(ReadFile(victim_), "not the plugin's");
  EXPECT_EQ(store_->corrupt_count(), 2);
  EXPECT_TRUE(manager_->GetRecord("vol-good").ok()) << "the others load";
  EXPECT_FALSE(manager_->GetRecord("vol-link").ok());
}

TEST_F(RecordPathsTest, SnapshotFileOutsideTheDataDirIsSetAside) {
  SnapshotRecord snap;
  snap.set_snapshot_id("snap-evil");
  snap.set_source_volume_id("vol-x");
  snap.set_ready_to_use(false);  // an interrupted snapshot's file is unlinked on load
  snap.set_file("snapshots/../../victim");
  ASSERT_TRUE(store_->PutSnapshot(snap).ok());
  ublk_test::LogCapture logs;
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(ReadFile(victim_), "not the plugin's");
  EXPECT_EQ(store_->corrupt_count(), 1);
  EXPECT_EQ(logs.Count(google::GLOG_ERROR, {"corrupt record", "snap-evil", "file '"}), 1);
}

TEST_F(RecordPathsTest, NodePathsMustBeCleanAndCreatedPathsListed) {
  struct Case {
    std::string id;
    std::function<void(VolumeRecord*)> spoil;
    std::string want;
  };
  std::vector<Case> cases = {
      {"vol-a", [](VolumeRecord* r) { r->set_staged_path("relative"); }, "staged_path"},
      {"vol-b", [](VolumeRecord* r) { r->add_published_paths("/x/../etc"); }, "published_paths"},
      {"vol-c", [](VolumeRecord* r) { r->add_created_paths("/etc/passwd"); },
       "neither the staged path nor a published path"},
      {"vol-d", [](VolumeRecord* r) { r->set_backing_file(""); }, "backing_file is empty"},
  };
  for (const Case& c : cases) {
    VolumeRecord r = Volume(c.id);
    c.spoil(&r);
    EXPECT_THAT(std::string(store_->CheckVolumePaths(r).message()), HasSubstr(c.want)) << c.id;
    ASSERT_TRUE(store_->PutVolume(r).ok());
  }
  VolumeRecord ok = Volume("vol-ok");
  ok.set_staged_path("/var/lib/kubelet/stage");
  ok.add_published_paths("/var/lib/kubelet/pods/p/vol");
  ok.add_created_paths("/var/lib/kubelet/pods/p/vol");
  EXPECT_TRUE(store_->CheckVolumePaths(ok).ok());
  ASSERT_TRUE(store_->PutVolume(ok).ok());
  auto loaded = store_->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->volumes.size(), 1u);
  EXPECT_EQ(loaded->volumes[0].volume_id(), "vol-ok");
  EXPECT_EQ(loaded->set_aside.size(), cases.size());
}

}  // namespace
}  // namespace ublk_csi
