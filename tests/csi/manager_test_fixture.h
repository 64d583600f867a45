// A VolumeManager over the fake backend and fake mounter in a temp dir, with
// the free-space seam under the test's control: the fixture shared by the
// request-validation, error-table and thin-provisioning tests.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <memory>
#include <string>

#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/volume_manager.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {

inline constexpr int64_t kMiB = int64_t{1} << 20;
inline constexpr int64_t kGiB = int64_t{1} << 30;
using Mode = csi::v1::VolumeCapability::AccessMode;

inline csi::v1::VolumeCapability MountCap(const std::string& fs = "",
                                          Mode::Mode mode = Mode::SINGLE_NODE_WRITER) {
  csi::v1::VolumeCapability cap;
  cap.mutable_mount()->set_fs_type(fs);
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

inline csi::v1::VolumeCapability BlockCap(Mode::Mode mode = Mode::SINGLE_NODE_WRITER) {
  csi::v1::VolumeCapability cap;
  cap.mutable_block();
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

inline csi::v1::CreateVolumeRequest CreateReq(const std::string& name, int64_t bytes,
                                              csi::v1::VolumeCapability cap = MountCap()) {
  csi::v1::CreateVolumeRequest r;
  r.set_name(name);
  r.mutable_capacity_range()->set_required_bytes(bytes);
  *r.add_volume_capabilities() = cap;
  return r;
}

class ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = dir_.path() + "/data";
    dev_ = dir_.path() + "/dev";
    ASSERT_EQ(::mkdir(dev_.c_str(), 0700), 0);
    backend_ = std::make_unique<FakeVolumeBackend>(dev_, 64);
    Restart();
  }

  // A new manager over the same data dir, as after a plugin restart.
  void Restart() {
    manager_.reset();
    auto store = RecordStore::Open(data_, nullptr, fs_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    VolumeManagerOptions opts = options_;
    opts.node_id = "node-a";
    opts.free_bytes = [this]() -> absl::StatusOr<int64_t> { return free_bytes_.load(); };
    opts.registry = registry_.get();
    manager_ = std::make_unique<VolumeManager>(opts, store_.get(), backend_.get(), mounter_.get());
    absl::Status loaded = manager_->Load();
    ASSERT_TRUE(loaded.ok()) << loaded;
  }

  absl::StatusOr<std::string> Create(const std::string& name, int64_t bytes,
                                     csi::v1::VolumeCapability cap = MountCap()) {
    auto r = manager_->CreateVolume(CreateReq(name, bytes, cap));
    if (!r.ok()) return r.status();
    return r->volume().volume_id();
  }

  std::string Path(const std::string& rel) { return dir_.path() + "/" + rel; }

  absl::Status Stage(const std::string& id, const std::string& staging,
                     csi::v1::VolumeCapability cap = MountCap()) {
    csi::v1::NodeStageVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    *r.mutable_volume_capability() = cap;
    return manager_->NodeStageVolume(r).status();
  }

  absl::Status Publish(const std::string& id, const std::string& staging, const std::string& target,
                       bool readonly = false, csi::v1::VolumeCapability cap = MountCap()) {
    csi::v1::NodePublishVolumeRequest r;
    r.set_volume_id(id);
    r.set_staging_target_path(staging);
    r.set_target_path(target);
    r.set_readonly(readonly);
    *r.mutable_volume_capability() = cap;
    return manager_->NodePublishVolume(r).status();
  }

  int64_t FileSize(const std::string& volume_id) {
    auto rec = manager_->GetRecord(volume_id);
    if (!rec.ok()) return -1;
    struct stat st;
    if (::stat(store_->Abs(rec->backing_file()).c_str(), &st) != 0) return -1;
    return st.st_size;
  }

  ublk_test::TempDir dir_;
  std::string data_, dev_;
  VolumeManagerOptions options_;  // set before Restart() to change them
  FileSystem* fs_ = nullptr;      // the data dir's file system (null: the real one)
  std::atomic<int64_t> free_bytes_{int64_t{1} << 40};
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::unique_ptr<FakeVolumeBackend> backend_;
  std::unique_ptr<FakeMounter> mounter_ = std::make_unique<FakeMounter>();
  std::unique_ptr<RecordStore> store_;
  std::unique_ptr<VolumeManager> manager_;
};

}  // namespace ublk_csi
