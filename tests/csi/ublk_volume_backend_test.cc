// UblkVolumeBackend over the fake ublk kernel, a real WorkerPool and backing
// files in a temp dir: ensure/idempotence/remove/resize/status, degraded
// status while the mmap seam fails, the device limit, shutdown leaving the
// devices recoverable and the next process recovering them.
#include "csi/ublk_volume_backend.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/testing/data.h"
#include "ublk/memory.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/testing/fake_rbd.h"
#include "ublk/testing/fault_memory.h"
#include "ublk/worker_pool.h"

// glog + tzset under TSan: see tests/ublk/buffer_pool_test.cc.
extern "C" const char* __tsan_default_suppressions() { return "race:tzset_internal\n"; }

namespace ublk_csi {
namespace {

using ublk_test::Pattern;
using ublk_test::ReadFileRange;

using ::testing::HasSubstr;
using ublk::CmdEncoding;
using ublk::FakeKernel;
using ublk::FakeKernelOptions;

constexpr int64_t kSize = 4 << 20;

class UblkVolumeBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/ublk_volume_backend_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    backend_.reset();
    pool_.reset();
    std::filesystem::remove_all(dir_);
  }

  // (Re)starts "the process": a fresh pool and backend on the same kernel.
  void Start(ublk::FeatureOptions fo = {}, UblkVolumeBackendOptions bo = {}) {
    backend_.reset();
    pool_.reset();
    ublk::WorkerPoolOptions po;
    po.worker_count = 2;
    po.memory = &memory_;
    po.clock = &clock_;
    po.ring_entries = 256;
    po.ring_flags_allowed = kernel_->worker_ring_flags();
    po.metrics_refresh_interval = absl::ZeroDuration();
    auto pool = ublk::WorkerPool::Create(po, nullptr);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
    fo.kernel_release = "6.12.0-test";
    bo.queue_depth = 8;
    bo.ublks_max_path = dir_ + "/ublks_max";
    backend_ = UblkVolumeBackend::Open(
        [this](CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
          return kernel_->OpenControl(e);
        },
        fo, pool_.get(), bo);
    ASSERT_TRUE(backend_->Usable().ok()) << backend_->Usable();
  }

  std::string BackingFile(const std::string& name, int64_t size = kSize) {
    const std::string path = dir_ + "/" + name + ".img";
    int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, size), 0);
    close(fd);
    return path;
  }
  ExportSpec Spec(const std::string& volume, int32_t preferred = -1) {
    ExportSpec s;
    s.volume_id = volume;
    s.backing_file = dir_ + "/" + volume + ".img";
    if (access(s.backing_file.c_str(), F_OK) != 0) BackingFile(volume);
    s.size_bytes = kSize;
    s.preferred_dev_id = preferred;
    return s;
  }
  size_t AssignedQueues() const {
    size_t n = 0;
    for (size_t i = 0; i < pool_->size(); ++i) n += pool_->assigned_queues(i);
    return n;
  }

  std::string dir_;
  std::unique_ptr<FakeKernel> kernel_ = std::make_unique<FakeKernel>();
  ublk::RealMemorySource real_;
  ublk::FaultInjectingMemorySource memory_{real_};
  ublk::FakeClock clock_;
  std::unique_ptr<ublk::WorkerPool> pool_;
  std::unique_ptr<UblkVolumeBackend> backend_;
};

TEST_F(UblkVolumeBackendTest, EnsureServesTheBackingFileWithRecoverableDevice) {
  Start();
  ExportSpec spec = Spec("vol-a");
  auto info = backend_->EnsureExport(spec);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device_path, absl::StrCat("/dev/ublkb", info->dev_id));
  EXPECT_EQ(info->size_bytes, kSize);
  EXPECT_EQ(info->state, ExportState::kLive);

  const std::string data = Pattern(65536, 1);
  auto w = kernel_->Write(info->dev_id, 12288, data);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->result, 65536);
  EXPECT_TRUE(ReadFileRange(spec.backing_file, 12288, data.size()) == data);
  auto r = kernel_->Read(info->dev_id, 12288, 65536);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->data == data);

  // Made for restart survival, requests sized to the buffer pool's slots.
  auto control = kernel_->OpenControl(CmdEncoding::kIoctl);
  auto dev = control->GetDeviceInfo(info->dev_id);
  ASSERT_TRUE(dev.ok());
  EXPECT_NE(dev->flags & UBLK_F_USER_RECOVERY, 0u);
  EXPECT_NE(dev->flags & UBLK_F_USER_RECOVERY_REISSUE, 0u);
  EXPECT_NE(dev->flags & UBLK_F_USER_COPY, 0u);
  auto params = control->GetParams(info->dev_id);
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->basic.max_sectors, pool_->buffer_pool_options().slot_size >> 9);
  EXPECT_EQ(params->basic.logical_bs_shift, 9);

  ExportStatus st = backend_->GetExportStatus("vol-a");
  EXPECT_EQ(st.state, ExportState::kLive);
  EXPECT_EQ(st.message, "");
  EXPECT_EQ(st.dev_id, info->dev_id);
  EXPECT_EQ(st.device_path, info->device_path);
  EXPECT_EQ(st.copy_mode, "user_copy");
  EXPECT_GE(st.worker, 0);
  EXPECT_LT(st.worker, 2);
  EXPECT_EQ(backend_->GetExportStatus("nope").state, ExportState::kAbsent);
  EXPECT_EQ(backend_->features()->copy_mode, ublk::CopyMode::kUserCopy);
}

TEST_F(UblkVolumeBackendTest, EnsureIsIdempotentAndSpreadsVolumesOverWorkers) {
  Start();
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  auto again = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->dev_id, a->dev_id);
  EXPECT_EQ(kernel_->device_count(), 1u);
  EXPECT_EQ(AssignedQueues(), 1u);
  auto b = backend_->EnsureExport(Spec("b"));
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->dev_id, a->dev_id);
  EXPECT_NE(backend_->GetExportStatus("a").worker, backend_->GetExportStatus("b").worker);
  EXPECT_EQ(pool_->assigned_queues(0), 1u);
  EXPECT_EQ(pool_->assigned_queues(1), 1u);
}

TEST_F(UblkVolumeBackendTest, PreferredDeviceIdIsAskedForAndFallsBackWhenTaken) {
  Start();
  auto a = backend_->EnsureExport(Spec("a", 5));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dev_id, 5);
  EXPECT_EQ(a->device_path, "/dev/ublkb5");
  // Id 5 is live and someone else's: not touched, another id is used.
  auto b = backend_->EnsureExport(Spec("b", 5));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(b->dev_id, 5);
  EXPECT_EQ(kernel_->DeviceState(5), UBLK_S_DEV_LIVE);
  EXPECT_EQ(kernel_->device_count(), 2u);
}

TEST_F(UblkVolumeBackendTest, MissingBackingFileIsNotFoundAndFailsOnlyThatVolume) {
  Start();
  ExportSpec spec = Spec("gone");
  ASSERT_EQ(unlink(spec.backing_file.c_str()), 0);
  auto info = backend_->EnsureExport(spec);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(info.status().message()), HasSubstr("volume gone"));
  EXPECT_THAT(std::string(info.status().message()), HasSubstr(spec.backing_file));
  ExportStatus st = backend_->GetExportStatus("gone");
  EXPECT_EQ(st.state, ExportState::kFailed);
  EXPECT_THAT(st.message, HasSubstr("missing"));
  EXPECT_EQ(kernel_->device_count(), 0u);
  EXPECT_EQ(AssignedQueues(), 0u);
  // Others are unaffected; the volume works once its file is back.
  ASSERT_TRUE(backend_->EnsureExport(Spec("other")).ok());
  BackingFile("gone");
  ASSERT_TRUE(backend_->EnsureExport(spec).ok());
  EXPECT_EQ(backend_->GetExportStatus("gone").state, ExportState::kLive);
}

TEST_F(UblkVolumeBackendTest, BadSpecIsInvalidArgumentNamingTheField) {
  Start();
  ExportSpec s = Spec("x");
  s.logical_block_size = 3000;
  EXPECT_THAT(std::string(backend_->EnsureExport(s).status().message()),
              HasSubstr("logical_block_size"));
  s = Spec("x");
  s.size_bytes = 0;
  EXPECT_EQ(backend_->EnsureExport(s).status().code(), absl::StatusCode::kInvalidArgument);
  s = Spec("x");
  s.backing_file.clear();
  EXPECT_THAT(std::string(backend_->EnsureExport(s).status().message()), HasSubstr("backing_file"));
  s = Spec("x");
  s.logical_block_size = 4096;
  auto info = backend_->EnsureExport(s);
  ASSERT_TRUE(info.ok()) << info.status();
  auto control = kernel_->OpenControl(CmdEncoding::kIoctl);
  EXPECT_EQ(control->GetParams(info->dev_id)->basic.logical_bs_shift, 12);
}

TEST_F(UblkVolumeBackendTest, RemoveStopsAndDeletesAndIsIdempotent) {
  Start();
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(backend_->RemoveExport("a").ok());
  EXPECT_EQ(kernel_->device_count(), 0u);
  EXPECT_EQ(kernel_->DeviceState(a->dev_id), std::nullopt);
  EXPECT_EQ(backend_->GetExportStatus("a").state, ExportState::kAbsent);
  EXPECT_EQ(AssignedQueues(), 0u);
  EXPECT_EQ(pool_->worker(0)->queue_count() + pool_->worker(1)->queue_count(), 0u);
  EXPECT_TRUE(backend_->RemoveExport("a").ok());
  EXPECT_TRUE(backend_->RemoveExport("never").ok());
  // And it can come back.
  auto again = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(kernel_->Write(again->dev_id, 0, Pattern(4096, 2))->result, 4096);
}

TEST_F(UblkVolumeBackendTest, RemoveOfAVanishedDeviceSucceeds) {
  Start();
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok());
  kernel_->VanishDevice(a->dev_id);
  EXPECT_TRUE(backend_->RemoveExport("a").ok());
  EXPECT_EQ(backend_->GetExportStatus("a").state, ExportState::kAbsent);
  EXPECT_EQ(AssignedQueues(), 0u);
}

TEST_F(UblkVolumeBackendTest, ResizeIsUnimplementedBefore614) {
  Start();
  ExportSpec spec = Spec("a");
  ASSERT_TRUE(backend_->EnsureExport(spec).ok());
  BackingFile("a", kSize * 2);
  absl::Status s = backend_->ResizeExport("a", kSize * 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("volume a"));
  EXPECT_EQ(backend_->ResizeExport("none", kSize).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(backend_->ResizeExport("a", kSize).ok());  // same size: nothing to do
  EXPECT_EQ(backend_->ResizeExport("a", kSize / 2).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(UblkVolumeBackendTest, ResizeGrowsALiveDeviceWhereTheKernelCan) {
  FakeKernelOptions ko;
  ko.features |= UBLK_F_UPDATE_SIZE;
  kernel_ = std::make_unique<FakeKernel>(ko);
  Start();
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok());
  // The backing file must have been grown first.
  absl::Status s = backend_->ResizeExport("a", kSize * 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("backing file"));
  EXPECT_EQ(kernel_->Read(a->dev_id, kSize, 4096)->result, -EIO);

  BackingFile("a", kSize * 2);
  ASSERT_TRUE(backend_->ResizeExport("a", kSize * 2).ok());
  auto control = kernel_->OpenControl(CmdEncoding::kIoctl);
  EXPECT_EQ(control->GetParams(a->dev_id)->basic.dev_sectors,
            static_cast<uint64_t>(kSize * 2) >> 9);
  const std::string data = Pattern(8192, 3);
  EXPECT_EQ(kernel_->Write(a->dev_id, kSize + 4096, data)->result, 8192);
  EXPECT_TRUE(kernel_->Read(a->dev_id, kSize + 4096, 8192)->data == data);
  EXPECT_EQ(backend_->EnsureExport(Spec("a")).value().size_bytes, kSize * 2);
}

// The volume-level view of issue 6: with no memory for buffer pools the
// export still serves, and says it is degraded, until memory returns.
TEST_F(UblkVolumeBackendTest, StatusIsDegradedWhileBufferPoolsCannotBeMapped) {
  Start();
  memory_.FailMapAlways();
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->state, ExportState::kLive);  // no I/O yet: no pool asked for
  const std::string data = Pattern(16384, 4);
  EXPECT_EQ(kernel_->Write(a->dev_id, 0, data)->result, 16384);
  EXPECT_TRUE(kernel_->Read(a->dev_id, 0, 16384)->data == data);
  ExportStatus st = backend_->GetExportStatus("a");
  EXPECT_EQ(st.state, ExportState::kDegraded);
  EXPECT_THAT(st.message, HasSubstr("heap"));
  EXPECT_THAT(st.message, HasSubstr(absl::StrCat("worker ", st.worker)));
  EXPECT_EQ(backend_->EnsureExport(Spec("a"))->state, ExportState::kDegraded);

  memory_.HealMap();
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(kernel_->Write(a->dev_id, 0, data)->result, 16384);
  st = backend_->GetExportStatus("a");
  EXPECT_EQ(st.state, ExportState::kLive);
  EXPECT_EQ(st.message, "");
}

TEST_F(UblkVolumeBackendTest, DeviceLimitIsResourceExhaustedNamingUblksMax) {
  FakeKernelOptions ko;
  ko.ublks_max = 2;
  kernel_ = std::make_unique<FakeKernel>(ko);
  Start();
  ASSERT_TRUE(backend_->EnsureExport(Spec("a")).ok());
  ASSERT_TRUE(backend_->EnsureExport(Spec("b")).ok());
  auto c = backend_->EnsureExport(Spec("c"));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("ublks_max"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("volume c"));
  EXPECT_EQ(backend_->GetExportStatus("c").state, ExportState::kFailed);
  EXPECT_EQ(AssignedQueues(), 2u);  // c's assignment was given back
  ASSERT_TRUE(backend_->RemoveExport("a").ok());
  EXPECT_TRUE(backend_->EnsureExport(Spec("c")).ok());
}

TEST_F(UblkVolumeBackendTest, MaxVolumesReadsUblksMax) {
  Start();
  EXPECT_EQ(backend_->MaxVolumes(), 64);  // no such file: the default
  std::ofstream(dir_ + "/ublks_max") << "128\n";
  EXPECT_EQ(backend_->MaxVolumes(), 128);
  std::ofstream(dir_ + "/ublks_max") << "garbage\n";
  EXPECT_EQ(backend_->MaxVolumes(), 64);
}

TEST_F(UblkVolumeBackendTest, UnusableWithoutTheDriverAndSaysWhy) {
  ublk::WorkerPoolOptions po;
  po.worker_count = 1;
  po.memory = &memory_;
  po.metrics_refresh_interval = absl::ZeroDuration();
  auto pool = ublk::WorkerPool::Create(po, nullptr);
  ASSERT_TRUE(pool.ok());
  auto backend = UblkVolumeBackend::Open(
      [](CmdEncoding) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
        return absl::FailedPreconditionError("/dev/ublk-control: No such file or directory");
      },
      {}, pool->get());
  absl::Status s = backend->Usable();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("ublk_drv"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("/dev/ublk-control"));
  EXPECT_EQ(backend->features(), nullptr);
  ExportSpec spec = Spec("a");
  EXPECT_EQ(backend->EnsureExport(spec).status(), s);
  EXPECT_EQ(backend->GetExportStatus("a").state, ExportState::kAbsent);
  EXPECT_TRUE(backend->RemoveExport("a").ok());
  EXPECT_EQ(backend->MaxVolumes(), 64);

  // A forced copy mode the kernel lacks: unusable, and the message says so.
  auto kernel61 = std::make_unique<FakeKernel>(FakeKernelOptions::Linux61());
  ublk::FeatureOptions fo;
  fo.force_copy_mode = ublk::CopyMode::kUserCopy;
  fo.kernel_release = "6.1.0";
  backend = UblkVolumeBackend::Open(
      [&](CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> {
        return kernel61->OpenControl(e);
      },
      fo, pool->get());
  EXPECT_THAT(std::string(backend->Usable().message()), HasSubstr("UBLK_F_USER_COPY"));
}

TEST_F(UblkVolumeBackendTest, GetDataModeOnA61Kernel) {
  kernel_ = std::make_unique<FakeKernel>(FakeKernelOptions::Linux61());
  Start();
  EXPECT_EQ(backend_->features()->encoding, CmdEncoding::kLegacy);
  auto a = backend_->EnsureExport(Spec("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string data = Pattern(32768, 5);
  EXPECT_EQ(kernel_->Write(a->dev_id, 4096, data)->result, 32768);
  EXPECT_TRUE(kernel_->Read(a->dev_id, 4096, 32768)->data == data);
  EXPECT_EQ(backend_->GetExportStatus("a").copy_mode, "get_data");
}

// SIGTERM: every export is detached, never stopped, so the devices stay
// QUIESCED with I/O waiting; the next process's EnsureExport (kubelet
// repeats NodeStageVolume) recovers each one under the same id.
TEST_F(UblkVolumeBackendTest, ShutdownLeavesDevicesRecoverableForTheNextProcess) {
  Start();
  std::vector<ExportSpec> specs = {Spec("a", 3), Spec("b", 4)};
  std::vector<int32_t> ids;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto info = backend_->EnsureExport(specs[i]);
    ASSERT_TRUE(info.ok()) << info.status();
    ids.push_back(info->dev_id);
    EXPECT_EQ(kernel_->Write(info->dev_id, 0, Pattern(4096, 10 + i))->result, 4096);
  }
  backend_->Shutdown();
  backend_->Shutdown();  // idempotent
  for (int32_t id : ids) EXPECT_EQ(kernel_->DeviceState(id), UBLK_S_DEV_QUIESCED) << id;
  EXPECT_EQ(backend_->EnsureExport(Spec("c")).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(backend_->GetExportStatus("a").state, ExportState::kFailed);
  EXPECT_EQ(AssignedQueues(), 0u);
  auto pending = kernel_->SubmitIoAsync(ids[0], UBLK_IO_OP_WRITE, 8192, 4096, Pattern(4096, 20));

  Start();  // the next process
  for (size_t i = 0; i < specs.size(); ++i) {
    auto info = backend_->EnsureExport(specs[i]);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dev_id, ids[i]);
    EXPECT_EQ(kernel_->DeviceState(ids[i]), UBLK_S_DEV_LIVE);
    EXPECT_TRUE(kernel_->Read(ids[i], 0, 4096)->data == Pattern(4096, 10 + i));
  }
  auto done = kernel_->Wait(pending, absl::Seconds(5));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->result, 4096);
  EXPECT_TRUE(kernel_->Read(ids[0], 8192, 4096)->data == Pattern(4096, 20));
  EXPECT_EQ(kernel_->device_count(), 2u);
  EXPECT_EQ(AssignedQueues(), 2u);
  ASSERT_TRUE(backend_->RemoveExport("a").ok());
  ASSERT_TRUE(backend_->RemoveExport("b").ok());
  EXPECT_EQ(kernel_->device_count(), 0u);
}

// Devices carry the volume's owner tag (ublksrv_flags). A QUIESCED device
// whose tag names another volume or another server is not recovered for a
// volume that claims its id: it is left as it is and the volume gets a new
// device. An untagged device (from a version before tags) is still adopted.
TEST_F(UblkVolumeBackendTest, RecoversOnlyDevicesTaggedForTheVolume) {
  Start();
  auto a = backend_->EnsureExport(Spec("a", 3));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->dev_id, 3);
  auto control = kernel_->OpenControl(CmdEncoding::kIoctl);
  auto info = control->GetDeviceInfo(3);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->ublksrv_flags, UblkVolumeBackend::OwnerTag("a"));
  EXPECT_NE(UblkVolumeBackend::OwnerTag("a"), UblkVolumeBackend::OwnerTag("b"));
  EXPECT_EQ(kernel_->Write(3, 0, Pattern(4096, 40))->result, 4096);
  auto b = backend_->EnsureExport(Spec("b", 4));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->dev_id, 4);
  backend_->Shutdown();
  ASSERT_EQ(kernel_->DeviceState(3), UBLK_S_DEV_QUIESCED);
  kernel_->SetUblksrvFlags(4, 0);  // as an untagged version left it

  Start();  // the next process
  // "x" claims a's device id (e.g. a record copied from elsewhere).
  auto x = backend_->EnsureExport(Spec("x", 3));
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_FALSE(x->recovered);
  EXPECT_NE(x->dev_id, 3);
  EXPECT_EQ(kernel_->DeviceState(3), UBLK_S_DEV_QUIESCED) << "a's device must be left alone";
  // a's own device still comes back, with its data.
  auto again = backend_->EnsureExport(Spec("a", 3));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->recovered);
  EXPECT_EQ(again->dev_id, 3);
  EXPECT_TRUE(kernel_->Read(3, 0, 4096)->data == Pattern(4096, 40));
  // The untagged device is adopted as before.
  auto b2 = backend_->EnsureExport(Spec("b", 4));
  ASSERT_TRUE(b2.ok()) << b2.status();
  EXPECT_TRUE(b2->recovered);
  EXPECT_EQ(b2->dev_id, 4);
  for (const char* v : {"a", "b", "x"}) ASSERT_TRUE(backend_->RemoveExport(v).ok()) << v;
  EXPECT_EQ(kernel_->device_count(), 0u);
}

// A 7.x-like kernel: volumes are served in zero copy (no bounce-buffer
// pool is mapped). The operator then restarts the plugin with the kill
// switch --copy_mode=user_copy: the zero-copy device still recovers, in
// zero copy (its flags were fixed at ADD_DEV), and new volumes use user copy.
TEST_F(UblkVolumeBackendTest, ZeroCopyDeviceRecoversInZeroCopyAfterTheKillSwitch) {
  kernel_ = std::make_unique<FakeKernel>(FakeKernelOptions::Linux7());
  Start();
  EXPECT_EQ(backend_->features()->copy_mode, ublk::CopyMode::kZeroCopy);
  auto a = backend_->EnsureExport(Spec("a", 2));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(backend_->GetExportStatus("a").copy_mode, "zero_copy");
  EXPECT_EQ(kernel_->Write(a->dev_id, 0, Pattern(16384, 30))->result, 16384);
  EXPECT_TRUE(kernel_->Read(a->dev_id, 0, 16384)->data == Pattern(16384, 30));
  EXPECT_EQ(memory_.map_calls(), 0);
  EXPECT_GT(kernel_->auto_buf_regs(), 0);
  backend_->Shutdown();
  EXPECT_EQ(kernel_->DeviceState(a->dev_id), UBLK_S_DEV_QUIESCED);
  auto pending =
      kernel_->SubmitIoAsync(a->dev_id, UBLK_IO_OP_WRITE, 65536, 8192, Pattern(8192, 31));

  ublk::FeatureOptions kill_switch;
  kill_switch.force_copy_mode = ublk::CopyMode::kUserCopy;
  Start(kill_switch);
  EXPECT_EQ(backend_->features()->copy_mode, ublk::CopyMode::kUserCopy);
  auto again = backend_->EnsureExport(Spec("a", 2));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->recovered);
  EXPECT_EQ(again->dev_id, a->dev_id);
  EXPECT_EQ(backend_->GetExportStatus("a").copy_mode, "zero_copy");
  auto done = kernel_->Wait(pending, absl::Seconds(5));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->result, 8192);
  EXPECT_TRUE(kernel_->Read(a->dev_id, 0, 16384)->data == Pattern(16384, 30));
  EXPECT_TRUE(kernel_->Read(a->dev_id, 65536, 8192)->data == Pattern(8192, 31));

  auto b = backend_->EnsureExport(Spec("b"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(backend_->GetExportStatus("b").copy_mode, "user_copy");
  EXPECT_EQ(kernel_->Write(b->dev_id, 0, Pattern(4096, 32))->result, 4096);
  EXPECT_TRUE(kernel_->Read(b->dev_id, 0, 4096)->data == Pattern(4096, 32));
  ASSERT_TRUE(backend_->RemoveExport("a").ok());
  ASSERT_TRUE(backend_->RemoveExport("b").ok());
  EXPECT_EQ(kernel_->device_count(), 0u);
}

// RBD volumes: an RbdTarget on the shared connections (the engine's fake
// cluster), recovered after a restart like a file volume.
class UblkVolumeBackendRbdTest : public UblkVolumeBackendTest {
 protected:
  void SetUp() override {
    UblkVolumeBackendTest::SetUp();
    cluster_.SetUserKey("kubernetes", kKey);
    cluster_.CreatePool("kube");
    ASSERT_TRUE(cluster_.CreateImage("kube", "csi-vol-1", kSize).ok());
    client_.AddCluster(&cluster_);
  }
  void TearDown() override {
    UblkVolumeBackendTest::TearDown();
    connections_.reset();
  }
  void StartRbd() {
    UblkVolumeBackendOptions bo;
    bo.rbd_connections = connections_.get();
    Start({}, bo);
  }
  ExportSpec RbdSpec(const std::string& key = kKey, int32_t preferred = -1) {
    ExportSpec s;
    s.volume_id = "rbd.ceph-a.kube.csi-vol-1";
    s.size_bytes = kSize;
    s.preferred_dev_id = preferred;
    s.rbd = RbdExportSpec{"10.0.0.1:6789", "kubernetes", key, "kube", "csi-vol-1"};
    return s;
  }
  static constexpr char kKey[] = "AQBrbdBackendTestKey0123456789abcdefghi==";
  ublk::FakeRbdCluster cluster_{"10.0.0.1:6789"};
  ublk::FakeRbdClient client_;
  std::unique_ptr<ublk::RadosConnections> connections_ =
      std::make_unique<ublk::RadosConnections>(client_, ublk::RbdConnectOptions{});
};

TEST_F(UblkVolumeBackendRbdTest, ServesResizesRemovesAndRecoversAnImage) {
  StartRbd();
  auto info = backend_->EnsureExport(RbdSpec());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state, ExportState::kLive);
  EXPECT_EQ(info->size_bytes, kSize);
  EXPECT_EQ(connections_->size(), 1u);
  // The device grows only once the image has (the target refuses first).
  EXPECT_EQ(backend_->ResizeExport(RbdSpec().volume_id, 2 * kSize).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cluster_.ResizeImage("kube", "csi-vol-1", 2 * kSize).ok());
  // A restart leaves the device quiesced; the next process recovers it.
  backend_->Shutdown();
  StartRbd();
  ExportSpec again = RbdSpec(kKey, info->dev_id);
  again.size_bytes = 2 * kSize;
  auto rec = backend_->EnsureExport(again);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_TRUE(rec->recovered);
  EXPECT_EQ(rec->dev_id, info->dev_id);
  EXPECT_TRUE(backend_->RemoveExport(again.volume_id).ok());
  EXPECT_EQ(backend_->GetExportStatus(again.volume_id).state, ExportState::kAbsent);
}

TEST_F(UblkVolumeBackendRbdTest, RefusesWithoutRbdOrWithAWrongKeyAndNeverQuotesIt) {
  Start();
  auto s = backend_->EnsureExport(RbdSpec()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("--rbd"));
  StartRbd();
  const std::string wrong = "AQBwrongwrongwrongwrongwrongwrongwrong0==";
  s = backend_->EnsureExport(RbdSpec(wrong)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr(wrong)));
  EXPECT_NE(backend_->GetExportStatus(RbdSpec().volume_id).state, ExportState::kLive);
}

}  // namespace
}  // namespace ublk_csi
