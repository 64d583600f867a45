// The Node service acts only on what a volume owns (issue 16, items 1-3, 9,
// 10): symlinked node paths are refused, teardown touches only this volume's
// mounts at paths its record lists and only files the plugin created, a
// device is never removed while anything still mounts it, a failed stage
// undoes itself, and mount flags come from an allow-list. Fake backend and
// fake mounter over a temp dir (the fake mounter resolves symlinks in a
// target as the kernel does, so a symlink in the temp dir models one on a
// node).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/volume_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using csi::v1::VolumeCapability;
using ::testing::HasSubstr;
using Mode = csi::v1::VolumeCapability::AccessMode;

constexpr int64_t kMiB = int64_t{1} << 20;

VolumeCapability MountCap(std::vector<std::string> flags = {}) {
  VolumeCapability cap;
  cap.mutable_mount();
  for (const std::string& f : flags) cap.mutable_mount()->add_mount_flags(f);
  cap.mutable_access_mode()->set_mode(Mode::SINGLE_NODE_WRITER);
  return cap;
}

VolumeCapability BlockCap() {
  VolumeCapability cap;
  cap.mutable_block();
  cap.mutable_access_mode()->set_mode(Mode::SINGLE_NODE_WRITER);
  return cap;
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

class NodeSafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = dir_.path() + "/data";
    dev_ = dir_.path() + "/dev";
    ASSERT_EQ(::mkdir(dev_.c_str(), 0700), 0);
    backend_ = std::make_unique<FakeVolumeBackend>(dev_, 8);
    auto store = RecordStore::Open(data_, nullptr);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    Restart();
  }
  // A new VolumeManager over the same records, backend and mount table (a
  // plugin restart).
  void Restart() {
    VolumeManagerOptions opts;
    opts.node_id = "node-a";
    opts.free_bytes = []() -> absl::StatusOr<int64_t> { return int64_t{1} << 40; };
    manager_ = std::make_unique<VolumeManager>(opts, store_.get(), backend_.get(), &mounter_);
    ASSERT_TRUE(manager_->Load().ok());
  }

  std::string Create(const std::string& name, VolumeCapability cap = MountCap()) {
    csi::v1::CreateVolumeRequest r;
    r.set_name(name);
    r.mutable_capacity_range()->set_required_bytes(16 * kMiB);
    *r.add_volume_capabilities() = cap;
    auto resp = manager_->CreateVolume(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->volume().volume_id() : "";
  }

  std::string Path(const std::string& rel) { return dir_.path() + "/" + rel; }

  absl::Status Stage(const std::string& id, const std::string& staging,
                     VolumeCapability cap = MountCap()) {
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    *r.mutable_volume_capability() = cap;
    return manager_->NodeStageVolume(r).status();
  }
  absl::Status Unstage(const std::string& id, const std::string& staging) {
    csi::v1::NodeUnstageVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    return manager_->NodeUnstageVolume(r).status();
  }
  absl::Status Publish(const std::string& id, const std::string& staging, const std::string& target,
                       VolumeCapability cap = MountCap()) {
    csi::v1::NodePublishVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    r.set_target_path(target);
    *r.mutable_volume_capability() = cap;
    return manager_->NodePublishVolume(r).status();
  }
  absl::Status Unpublish(const std::string& id, const std::string& target) {
    csi::v1::NodeUnpublishVolumeRequest r;
    r.set_volume_id(id);
    r.set_target_path(target);
    return manager_->NodeUnpublishVolume(r).status();
  }
  absl::Status Delete(const std::string& id) {
    csi::v1::DeleteVolumeRequest r;
    r.set_volume_id(id);
    return manager_->DeleteVolume(r).status();
  }
  // Mount targets in the fake table (resolved, as the kernel shows them).
  std::vector<std::string> Targets() {
    std::vector<std::string> out;
    for (const MountInfo& m : mounter_.mounts()) out.push_back(m.target);
    return out;
  }
  std::string DevicePath(const std::string& id) {
    return backend_->GetExportStatus(id).device_path;
  }

  ublk_test::TempDir dir_;
  std::string data_, dev_;
  std::unique_ptr<FakeVolumeBackend> backend_;
  FakeMounter mounter_;
  std::unique_ptr<RecordStore> store_;
  std::unique_ptr<VolumeManager> manager_;
};

// Item 1: a block publish whose target's parent is a symlink mounted at the
// link's destination; unpublish compared the unresolved path, unmounted
// nothing, and unstage + delete then removed the device under the mount.
TEST_F(NodeSafetyTest, SymlinkedParentOfABlockTargetIsRefusedAndNothingLeaks) {
  std::string id = Create("raw", BlockCap());
  ASSERT_TRUE(Stage(id, Path("stage"), BlockCap()).ok());
  ASSERT_EQ(::mkdir(Path("real").c_str(), 0700), 0);
  ASSERT_EQ(::symlink(Path("real").c_str(), Path("link").c_str()), 0);
  absl::Status s = Publish(id, Path("stage"), Path("link/dev"), BlockCap());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("symbolic link"));
  EXPECT_FALSE(Exists(Path("real/dev"))) << "nothing created through the link";
  EXPECT_TRUE(Unpublish(id, Path("link/dev")).ok());
  EXPECT_TRUE(Unstage(id, Path("stage")).ok());
  EXPECT_TRUE(Delete(id).ok());
  EXPECT_THAT(Targets(), ::testing::IsEmpty()) << "no mount of a deleted volume's device";
}

TEST_F(NodeSafetyTest, SymlinkedStagingPathIsRefused) {
  std::string id = Create("fs");
  ASSERT_EQ(::mkdir(Path("real").c_str(), 0700), 0);
  ASSERT_EQ(::symlink(Path("real").c_str(), Path("link").c_str()), 0);
  absl::Status s = Stage(id, Path("link/stage"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(Path("link")));
  EXPECT_EQ(backend_->GetExportStatus(id).state, ExportState::kAbsent);
  EXPECT_THAT(Targets(), ::testing::IsEmpty());
  // A symlink as the last component is refused as well.
  ASSERT_EQ(::symlink(Path("real").c_str(), Path("stage-link").c_str()), 0);
  EXPECT_EQ(Stage(id, Path("stage-link")).code(), absl::StatusCode::kInvalidArgument);
}

// The mount a plugin without these checks leaked (or one made by hand):
// the device is never taken away from under it.
TEST_F(NodeSafetyTest, UnstageAndDeleteRefuseWhileTheDeviceIsMountedAnywhere) {
  std::string id = Create("raw", BlockCap());
  ASSERT_TRUE(Stage(id, Path("stage"), BlockCap()).ok());
  WriteFile(Path("leak"), "");
  MountOptions bind;
  bind.bind = true;
  ASSERT_TRUE(mounter_.Mount(DevicePath(id), Path("leak"), "", bind).ok());
  absl::Status s = Unstage(id, Path("stage"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(Path("leak")));
  EXPECT_NE(backend_->GetExportStatus(id).state, ExportState::kAbsent) << "device kept";
  // DeleteVolume scans the mount table too, whatever the record says.
  records::VolumeRecord rec = *manager_->GetRecord(id);
  rec.clear_staged_path();
  rec.clear_created_paths();
  ASSERT_TRUE(store_->PutVolume(rec).ok());
  VolumeManagerOptions opts;
  opts.node_id = "node-a";
  manager_ = std::make_unique<VolumeManager>(opts, store_.get(), backend_.get(), &mounter_);
  ASSERT_TRUE(manager_->Load().ok());
  s = Delete(id);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("still mounted"));
  EXPECT_TRUE(Exists(data_ + "/volumes/" + id + ".img"));
  ASSERT_TRUE(mounter_.Unmount(Path("leak")).ok());
  EXPECT_TRUE(Delete(id).ok());
}

// Item 2: unpublish of a path this volume never published there.
TEST_F(NodeSafetyTest, UnpublishOfAPathTheVolumeNeverPublishedTouchesNothing) {
  std::string a = Create("a");
  std::string b = Create("b");
  ASSERT_TRUE(Stage(a, Path("stage-a")).ok());
  ASSERT_TRUE(Publish(a, Path("stage-a"), Path("pod-a/vol")).ok());
  ASSERT_TRUE(Stage(b, Path("stage-b")).ok());
  WriteFile(Path("precious"), "keep me");
  ASSERT_EQ(::mkdir(Path("empty-dir").c_str(), 0700), 0);

  EXPECT_TRUE(Unpublish(b, Path("pod-a/vol")).ok());
  EXPECT_TRUE(Unpublish(b, Path("precious")).ok());
  EXPECT_TRUE(Unpublish(b, Path("empty-dir")).ok());

  EXPECT_TRUE(*mounter_.IsMountPoint(Path("pod-a/vol"))) << "a's pod mount stays";
  EXPECT_EQ(ReadFile(Path("precious")), "keep me");
  EXPECT_TRUE(Exists(Path("empty-dir")));
  EXPECT_EQ(mounter_.CountCalls("unmount "), 0);
}

// Item 2: unstage of a volume that is not staged, at another's staging path.
TEST_F(NodeSafetyTest, UnstageOfAVolumeNotStagedLeavesAnotherVolumesStagingMount) {
  std::string a = Create("a");
  std::string b = Create("b");
  ASSERT_TRUE(Stage(a, Path("stage")).ok());
  EXPECT_TRUE(Unstage(b, Path("stage")).ok());
  EXPECT_TRUE(*mounter_.IsMountPoint(Path("stage"))) << "a's staging mount stays";
  EXPECT_EQ(manager_->GetRecord(a)->staged_path(), Path("stage"));
  EXPECT_EQ(mounter_.CountCalls("unmount "), 0);
}

// Item 2: a volume staged at a path where another mount was stacked on top
// of its own: unstage removes nothing of the other's.
TEST_F(NodeSafetyTest, UnstageDoesNotUnmountAForeignMountStackedOnItsPath) {
  std::string a = Create("a");
  std::string b = Create("b");
  ASSERT_TRUE(Stage(a, Path("stage-a")).ok());
  ASSERT_TRUE(Stage(b, Path("stage-b")).ok());
  MountOptions bind;
  bind.bind = true;
  ASSERT_TRUE(mounter_.Mount(Path("stage-b"), Path("stage-a"), "", bind).ok());
  absl::Status s = Unstage(a, Path("stage-a"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(mounter_.CountCalls("unmount "), 0);
  EXPECT_NE(backend_->GetExportStatus(a).state, ExportState::kAbsent);
}

// Item 2: a block publish onto an existing file, then unpublish, deleted it.
TEST_F(NodeSafetyTest, BlockPublishOntoAnExistingFileNeverDeletesIt) {
  std::string id = Create("raw", BlockCap());
  ASSERT_TRUE(Stage(id, Path("stage"), BlockCap()).ok());
  ASSERT_EQ(::mkdir(Path("pod").c_str(), 0700), 0);
  WriteFile(Path("pod/dev"), "someone's data");
  ASSERT_TRUE(Publish(id, Path("stage"), Path("pod/dev"), BlockCap()).ok());
  EXPECT_TRUE(*mounter_.IsMountPoint(Path("pod/dev")));
  ASSERT_TRUE(Unpublish(id, Path("pod/dev")).ok());
  EXPECT_FALSE(*mounter_.IsMountPoint(Path("pod/dev")));
  EXPECT_EQ(ReadFile(Path("pod/dev")), "someone's data");
  EXPECT_TRUE(Unstage(id, Path("stage")).ok());
}

TEST_F(NodeSafetyTest, TeardownRemovesWhatThePluginCreatedAndOnlyThat) {
  std::string id = Create("fs");
  ASSERT_EQ(::mkdir(Path("kubelet-stage").c_str(), 0700), 0);
  ASSERT_TRUE(Stage(id, Path("kubelet-stage")).ok());
  ASSERT_EQ(::mkdir(Path("kubelet-target").c_str(), 0700), 0);
  ASSERT_TRUE(Publish(id, Path("kubelet-stage"), Path("kubelet-target")).ok());
  ASSERT_TRUE(Publish(id, Path("kubelet-stage"), Path("made/by/us")).ok());
  records::VolumeRecord rec = *manager_->GetRecord(id);
  EXPECT_THAT(rec.created_paths(), ::testing::ElementsAre(Path("made/by/us")));
  ASSERT_TRUE(Unpublish(id, Path("kubelet-target")).ok());
  ASSERT_TRUE(Unpublish(id, Path("made/by/us")).ok());
  EXPECT_TRUE(Exists(Path("kubelet-target"))) << "not ours to remove";
  EXPECT_FALSE(Exists(Path("made/by/us")));
  ASSERT_TRUE(Unstage(id, Path("kubelet-stage")).ok());
  EXPECT_TRUE(Exists(Path("kubelet-stage")));
  EXPECT_THAT(Targets(), ::testing::IsEmpty());
}

// After a restart, until recovery re-attached a volume's device, its mounts
// cannot be told from anyone else's: teardown asks the CO to retry rather
// than call them foreign and leave them behind.
TEST_F(NodeSafetyTest, TeardownWaitsForRecoveryInsteadOfGuessingOwnership) {
  std::string id = Create("fs");
  ASSERT_TRUE(Stage(id, Path("stage")).ok());
  ASSERT_TRUE(Publish(id, Path("stage"), Path("pod")).ok());
  struct Recovering : VolumeGate {
    absl::Status CheckServing(const std::string&) override {
      return absl::UnavailableError("being recovered");
    }
  } gate;
  manager_->SetGate(&gate);
  EXPECT_EQ(Unpublish(id, Path("pod")).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Unstage(id, Path("stage")).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(mounter_.CountCalls("unmount "), 0);
  EXPECT_EQ(manager_->GetRecord(id)->published_paths_size(), 1);
  manager_->SetGate(nullptr);
  EXPECT_TRUE(Unpublish(id, Path("pod")).ok());
  EXPECT_TRUE(Unstage(id, Path("stage")).ok());
  EXPECT_THAT(Targets(), ::testing::IsEmpty());
}

// A volume whose recovery failed has no export: its device number was
// "unknown", so teardown called the volume's own mounts foreign, left them
// (reading a device that may be handed to the next volume) and forgot the
// publication. The number recorded at staging identifies them, and a
// restarted plugin still has it (it is in the record).
TEST_F(NodeSafetyTest, TeardownKnowsItsOwnMountsByTheRecordedDeviceWhenTheExportIsGone) {
  for (VolumeCapability cap : {MountCap(), BlockCap()}) {
    const bool block = cap.has_block();
    std::string id = Create(block ? "raw" : "fs", cap);
    ASSERT_TRUE(Stage(id, Path("stage"), cap).ok());
    ASSERT_TRUE(Publish(id, Path("stage"), Path("pod"), cap).ok());
    ASSERT_FALSE(manager_->GetRecord(id)->staged_device().empty());
    // The plugin restarts and the volume's recovery fails: no export.
    ASSERT_TRUE(backend_->RemoveExport(id).ok());
    Restart();
    ASSERT_EQ(backend_->GetExportStatus(id).state, ExportState::kAbsent);
    EXPECT_TRUE(Unpublish(id, Path("pod")).ok());
    EXPECT_FALSE(Exists(Path("pod"))) << "the target the plugin made is removed";
    EXPECT_TRUE(Unstage(id, Path("stage")).ok());
    EXPECT_THAT(Targets(), ::testing::IsEmpty()) << (block ? "block" : "mount");
    EXPECT_TRUE(manager_->GetRecord(id)->staged_device().empty());
    EXPECT_TRUE(Delete(id).ok());
  }
}

// A record written before staged_device existed loads; without the number
// its mounts stay foreign when the export is gone (left alone, as before).
TEST_F(NodeSafetyTest, RecordsWithoutAStagedDeviceStillLoadAndTouchNothingForeign) {
  std::string id = Create("fs");
  ASSERT_TRUE(Stage(id, Path("stage")).ok());
  ASSERT_TRUE(Publish(id, Path("stage"), Path("pod")).ok());
  records::VolumeRecord old = *manager_->GetRecord(id);
  old.clear_staged_device();
  ASSERT_TRUE(store_->PutVolume(old).ok());
  ASSERT_TRUE(backend_->RemoveExport(id).ok());
  Restart();
  ASSERT_TRUE(manager_->GetRecord(id).ok());
  EXPECT_EQ(manager_->GetRecord(id)->staged_path(), Path("stage"));
  EXPECT_TRUE(Unpublish(id, Path("pod")).ok());
  EXPECT_EQ(mounter_.CountCalls("unmount "), 0);
  EXPECT_EQ(Targets().size(), 2u);
}

// Item 3: three failed stages left three devices (and the staging dir).
TEST_F(NodeSafetyTest, AFailedStageUndoesItsExportAndDirAndSaysSo) {
  std::string id = Create("fs");
  ublk_test::LogCapture logs;
  for (int i = 0; i < 3; ++i) {
    mounter_.FailNext(FakeMounter::Op::kMount, absl::InternalError("mount: wrong fs type"));
    absl::Status s = Stage(id, Path("kubelet/stage"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_EQ(backend_->GetExportStatus(id).state, ExportState::kAbsent) << "attempt " << i;
    EXPECT_FALSE(Exists(Path("kubelet"))) << "attempt " << i;
  }
  EXPECT_EQ(logs.Count(google::GLOG_WARNING,
                       {id, "stage at", "failed", "undid", "removed its export", "removed dir"}),
            3);
  mounter_.FailNext(FakeMounter::Op::kProbe, absl::InternalError("blkid exited 4"));
  EXPECT_FALSE(Stage(id, Path("kubelet/stage")).ok());
  EXPECT_EQ(backend_->GetExportStatus(id).state, ExportState::kAbsent);
  ASSERT_TRUE(Stage(id, Path("kubelet/stage")).ok()) << "a retry works";
  EXPECT_THAT(manager_->GetRecord(id)->created_paths(),
              ::testing::ElementsAre(Path("kubelet/stage")));
  ASSERT_TRUE(Unstage(id, Path("kubelet/stage")).ok());
  EXPECT_FALSE(Exists(Path("kubelet/stage"))) << "the dir the plugin made is removed";
  EXPECT_TRUE(Exists(Path("kubelet"))) << "its parent was not recorded: left";
}

// Item 10: bind/remount went to the kernel as fs data (EINVAL) after the
// device and dir were made.
TEST_F(NodeSafetyTest, MountFlagsOutsideTheAllowListAreInvalidArgumentBeforeAnyEffect) {
  std::string id = Create("fs");
  for (const char* bad : {"bind", "rbind", "remount", "move", "shared", "rprivate", "loop",
                          "context=x", "errors=bogus", "commit=1;rm"}) {
    absl::Status s = Stage(id, Path("stage"), MountCap({"noatime", bad}));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(std::string("'") + bad + "'"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("mount_flags"));
  }
  EXPECT_EQ(backend_->ensure_calls(), 0) << "no device was made";
  EXPECT_FALSE(Exists(Path("stage")));
  ASSERT_TRUE(
      Stage(id, Path("stage"), MountCap({"noatime", "discard", "errors=remount-ro", "commit=30"}))
          .ok());
  EXPECT_THAT(mounter_.FlagsOf(Path("stage")),
              ::testing::ElementsAre("noatime", "discard", "errors=remount-ro", "commit=30"));
  absl::Status s = Publish(id, Path("stage"), Path("pod"), MountCap({"remount"}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_FALSE(Exists(Path("pod")));
}

// The allow-list applies where a capability first arrives, not only at
// stage/publish: CreateVolume refuses (INVALID_ARGUMENT naming the flag) and
// creates nothing; ValidateVolumeCapabilities leaves such a capability
// unconfirmed with a message naming it.
TEST_F(NodeSafetyTest, MountFlagsAreCheckedByCreateVolumeAndValidateVolumeCapabilities) {
  csi::v1::CreateVolumeRequest r;
  r.set_name("flags");
  r.mutable_capacity_range()->set_required_bytes(16 * kMiB);
  *r.add_volume_capabilities() = MountCap({"noatime", "remount"});
  auto created = manager_->CreateVolume(r);
  ASSERT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();
  EXPECT_THAT(std::string(created.status().message()), HasSubstr("'remount'"));
  EXPECT_THAT(std::string(created.status().message()),
              HasSubstr("volume_capabilities[0].mount.mount_flags"));
  csi::v1::ListVolumesRequest lr;
  EXPECT_EQ(manager_->ListVolumes(lr)->entries_size(), 0) << "nothing was created";

  std::string id = Create("fs", MountCap({"noatime"}));
  csi::v1::ValidateVolumeCapabilitiesRequest vr;
  vr.set_volume_id(id);
  *vr.add_volume_capabilities() = MountCap({"noatime"});
  *vr.add_volume_capabilities() = MountCap({"bind"});
  auto v = manager_->ValidateVolumeCapabilities(vr);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->has_confirmed());
  EXPECT_THAT(v->message(), HasSubstr("'bind'"));
  EXPECT_THAT(v->message(), HasSubstr("volume_capabilities[1].mount.mount_flags"));
  vr.mutable_volume_capabilities()->RemoveLast();
  v = manager_->ValidateVolumeCapabilities(vr);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->has_confirmed()) << v->message();
}

TEST(ValidateMountFlagsTest, AllowList) {
  EXPECT_TRUE(ValidateMountFlags({"ro", "nosuid", "nodev", "noexec", "relatime", "nouuid",
                                  "data=ordered", "logbsize=256k"},
                                 "f")
                  .ok());
  for (const char* bad : {"bind", "rbind", "remount", "move", "slave", "unbindable", "",
                          "data=", "logbsize=-1", "nonsense"}) {
    absl::Status s = ValidateMountFlags({bad}, "f");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParseMountInfoTest, DeviceIsTheMajorMinorField) {
  auto m = ParseMountInfo(
      "36 35 259:3 / /stage rw,relatime shared:1 - ext4 /dev/ublkb3 rw\n"
      "37 35 0:5 /ublkb3 /pod/dev rw - devtmpfs udev rw\n");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].device, "259:3");
  EXPECT_EQ(m[1].device, "0:5");
  EXPECT_EQ(m[1].root, "/ublkb3");
}

TEST(RefuseSymlinksTest, AnySymlinkComponentIsNamed) {
  ublk_test::TempDir dir;
  const std::string d = dir.path();
  ASSERT_EQ(::mkdir((d + "/a").c_str(), 0700), 0);
  ASSERT_EQ(::symlink((d + "/a").c_str(), (d + "/l").c_str()), 0);
  EXPECT_TRUE(RefuseSymlinks(d + "/a/b/c", "p").ok()) << "a missing tail is fine";
  absl::Status s = RefuseSymlinks(d + "/l/x", "target_path");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("target_path"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(d + "/l is a symbolic link"));
  EXPECT_FALSE(RefuseSymlinks(d + "/l", "p").ok());
}

// Item 9 (data-dir part): anyone could plant records the plugin acts on.
TEST(DataDirTest, AWorldWritableDataDirIsRefusedAtStart) {
  ublk_test::TempDir dir;
  const std::string data = dir.path() + "/data";
  ASSERT_EQ(::mkdir(data.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir((data + "/records").c_str(), 0700), 0);
  ASSERT_EQ(::chmod(data.c_str(), 0777), 0);
  auto store = RecordStore::Open(data, nullptr);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("world-writable (mode 0777)"));
  // A world-writable subdir is as bad.
  ASSERT_EQ(::chmod(data.c_str(), 0700), 0);
  ASSERT_EQ(::chmod((data + "/records").c_str(), 01777), 0);
  EXPECT_FALSE(RecordStore::Open(data, nullptr).ok());
  ASSERT_EQ(::chmod((data + "/records").c_str(), 0700), 0);
  EXPECT_TRUE(RecordStore::Open(data, nullptr).ok());
  // And the binary says so and exits.
  ASSERT_EQ(::chmod(data.c_str(), 0777), 0);
  auto r = ublk_test::Run({ublk_test::BuildDir() + "/csi/ublk-csi", "--node-id=n1",
                           "--endpoint=unix://" + dir.path() + "/csi.sock", "--data-dir=" + data,
                           "--metrics-address=127.0.0.1:0"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("world-writable"));
  EXPECT_FALSE(Exists(dir.path() + "/csi.sock"));
}

}  // namespace
}  // namespace ublk_csi
