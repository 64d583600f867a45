// A recovery cut short at every step resumes (issue 17): the fake kernel
// models what ublk_drv leaves when a recovering server is killed between
// START_USER_RECOVERY, the mmap, the FETCHes and END_USER_RECOVERY, as 6.12
// (START refuses a device with no queue ready; the mmap owner is reset only
// by START; a server killed in the middle of a queue's FETCHes never
// releases its char device) and as 7.x (the char device's release resets
// the round). Each test kills a recovery at one point, starts a "new
// process" and checks that Export::Recover brings the device back with the
// data intact, or, where nothing can, gives up in bounded time without
// touching the device and leaves STOP_DEV as the way out.
#include <unistd.h>

#include <filesystem>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ublk/export.h"
#include "ublk/file_target.h"
#include "ublk/memory.h"
#include "ublk/testing/fake_clock.h"
#include "ublk/testing/fake_kernel.h"
#include "ublk/worker.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;
using CrashPoint = FakeKernel::CrashPoint;

constexpr uint64_t kSize = 1 << 20;
constexpr uint16_t kDepth = 8;

std::string Pattern(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

struct Case {
  const char* name;
  bool legacy;  // 6.12 (true) or 7.x
};

class RecoveryResumeTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/resume_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    control_ = kernel_.OpenControl(CmdEncoding::kIoctl);
    for (int i = 0; i < 2; ++i) {
      WorkerOptions wo;
      wo.worker_id = i;
      wo.memory = &memory_;
      auto w = Worker::Create(wo);
      ASSERT_TRUE(w.ok()) << w.status();
      workers_.push_back(std::move(*w));
    }
    FileTargetOptions fo;
    fo.path = dir_ + "/vol.img";
    fo.size_bytes = kSize;
    fo.create = true;
    auto t = FileTarget::Open(fo);
    ASSERT_TRUE(t.ok()) << t.status();
    target_ = std::move(*t);
  }
  void TearDown() override {
    for (auto& w : workers_) w->Stop();
    std::filesystem::remove_all(dir_);
  }
  static FakeKernelOptions KernelOptions() {
    FakeKernelOptions o =
        GetParam().legacy ? FakeKernelOptions::Linux612() : FakeKernelOptions::Linux7();
    o.start_timeout = absl::Seconds(5);
    return o;
  }
  std::vector<Worker*> Workers() {
    std::vector<Worker*> v;
    for (auto& w : workers_) v.push_back(w.get());
    return v;
  }
  // A running USER_RECOVERY device holding `data_` at 0, whose server is
  // then gone (QUIESCED). Returns its id.
  uint32_t QuiescedDevice(uint16_t queues) {
    ExportOptions o;
    o.size_bytes = kSize;
    o.nr_queues = queues;
    o.queue_depth = kDepth;
    o.copy_mode = CopyMode::kUserCopy;
    o.max_io_bytes = 64 * 1024;
    o.user_recovery = true;
    o.user_recovery_reissue = true;
    auto e = Export::Create(*control_, Workers(), target_, o);
    EXPECT_TRUE(e.ok()) << e.status();
    EXPECT_TRUE((*e)->Start().ok());
    const uint32_t id = (*e)->dev_id();
    auto w = kernel_.Write(id, 0, data_);
    EXPECT_TRUE(w.ok() && w->result == static_cast<int32_t>(data_.size()));
    EXPECT_TRUE((*e)->Detach().ok());
    EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_QUIESCED);
    kernel_.NewProcess();
    return id;
  }
  // A recovery by this "process" killed at `point`.
  void KilledRecovery(uint32_t id, CrashPoint point, int after_fetches = 0) {
    kernel_.CrashAt(point, after_fetches);
    auto r = Export::Recover(*control_, Workers(), target_, id, Quick());
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("fault point"));
    // The dead server's channels close on its worker threads: wait for
    // that (a liveness bound, not a timing check).
    for (int i = 0; i < 5000 && kernel_.open_channels(id) > 0; ++i)
      absl::SleepFor(absl::Milliseconds(1));
    ASSERT_EQ(kernel_.open_channels(id), 0);
    kernel_.NewProcess();  // the next server
  }
  // Backoff on the real clock but short: the previous server's channels
  // close on its worker threads, a moment after Recover returned.
  RecoverOptions Quick() {
    RecoverOptions ro;
    ro.release_wait = absl::Seconds(10);
    ro.backoff_max = absl::Milliseconds(5);
    return ro;
  }
  void ExpectServes(uint32_t id) {
    EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_LIVE);
    auto r = kernel_.Read(id, 0, static_cast<uint32_t>(data_.size()));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->result, static_cast<int32_t>(data_.size()));
    EXPECT_TRUE(r->data == data_);
  }

  FakeKernel kernel_{KernelOptions()};
  std::unique_ptr<ControlDevice> control_;
  RealMemorySource memory_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::shared_ptr<Target> target_;
  std::string dir_;
  const std::string data_ = Pattern(8192, 5);
};

struct Point {
  CrashPoint point;
  int after_fetches;
  bool legacy_rearms;  // on 6.12 the next START is refused until re-armed
};

TEST_P(RecoveryResumeTest, KilledAtEachStepTheNextProcessRecovers) {
  const Point points[] = {
      {CrashPoint::kAfterStartRecovery, 0, true}, {CrashPoint::kAfterMmap, 0, true},
      {CrashPoint::kDuringFetch, 0, true},  // killed before its first FETCH
      {CrashPoint::kBeforeEndRecovery, 0, false}, {CrashPoint::kAfterEndRecovery, 0, false},
  };
  for (const Point& p : points) {
    SCOPED_TRACE(static_cast<int>(p.point));
    const uint32_t id = QuiescedDevice(1);
    KilledRecovery(id, p.point, p.after_fetches);
    EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_QUIESCED);
    RecoverStats stats;
    auto r = Export::Recover(*control_, Workers(), target_, id, Quick(), &stats);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectServes(id);
    EXPECT_EQ(stats.rearms, GetParam().legacy && p.legacy_rearms ? 1 : 0);
    EXPECT_FALSE(stats.gave_up);
    ASSERT_TRUE((*r)->Stop().ok());
    ASSERT_TRUE((*r)->Delete().ok());
  }
}

TEST_P(RecoveryResumeTest, KilledTwiceInARowStillRecovers) {
  const uint32_t id = QuiescedDevice(1);
  KilledRecovery(id, CrashPoint::kAfterStartRecovery);
  KilledRecovery(id, CrashPoint::kAfterMmap);
  auto r = Export::Recover(*control_, Workers(), target_, id, Quick());
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectServes(id);
}

// Killed with part of a queue fetched: 6.12 never releases the char device
// (the dead process is stuck in its exit). Recover gives up after
// release_wait of the clock, fails without touching the device (it may be
// mounted), and STOP_DEV is the way out: it releases the device, whose I/O
// then fails, and a new device can be made. 7.x recovers.
TEST_P(RecoveryResumeTest, KilledInTheMiddleOfAQueuesFetches) {
  const uint32_t id = QuiescedDevice(1);
  KilledRecovery(id, CrashPoint::kDuringFetch, kDepth / 2);
  FakeClock clock;
  RecoverOptions ro;
  ro.clock = &clock;
  ro.release_wait = absl::Seconds(3);
  RecoverStats stats;
  const absl::Time t0 = clock.Now();
  auto r = Export::Recover(*control_, Workers(), target_, id, ro, &stats);
  if (!GetParam().legacy) {
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectServes(id);
    return;
  }
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("A device left unrecoverable"));
  EXPECT_TRUE(stats.gave_up);
  EXPECT_GT(stats.busy_retries, 0);
  // Bounded by the clock, not by a retry count or the wall.
  EXPECT_GE(clock.Now() - t0, absl::Seconds(3));
  EXPECT_LT(clock.Now() - t0, absl::Seconds(4));
  EXPECT_TRUE(kernel_.HeldByDyingServer(id));
  EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_QUIESCED);  // left as it is

  // The way out: STOP_DEV completes the stuck FETCHes; the device's I/O
  // fails from then on (a mounted filesystem sees EIO), DEL_DEV works and
  // the volume gets a new device.
  ASSERT_TRUE(control_->StopDevice(id).ok());
  EXPECT_FALSE(kernel_.HeldByDyingServer(id));
  auto io = kernel_.Read(id, 0, 4096);
  ASSERT_TRUE(io.ok());
  EXPECT_LT(io->result, 0);
  ASSERT_TRUE(control_->DeleteDevice(id).ok());
  const uint32_t again = QuiescedDevice(1);
  auto rr = Export::Recover(*control_, Workers(), target_, again, Quick());
  ASSERT_TRUE(rr.ok()) << rr.status();
  ExpectServes(again);
}

// Two queues: killed after queue 0 was ready and before queue 1's first
// FETCH. On 6.12 a plain START_USER_RECOVERY would reinit a queue that has
// no daemon (put_task_struct(NULL): the fake reports the oops), so a
// multi-queue device is re-armed before its START.
TEST_P(RecoveryResumeTest, MultiQueueKilledBetweenQueues) {
  const uint32_t id = QuiescedDevice(2);
  KilledRecovery(id, CrashPoint::kDuringFetch, kDepth);
  RecoverOptions plain = Quick();
  plain.rearm_multi_queue = false;
  if (GetParam().legacy) {
    auto oops = Export::Recover(*control_, Workers(), target_, id, plain);
    ASSERT_FALSE(oops.ok());
    EXPECT_THAT(std::string(oops.status().message()), HasSubstr("oops"));
  }
  RecoverStats stats;
  auto r = Export::Recover(*control_, Workers(), target_, id, Quick(), &stats);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectServes(id);
  EXPECT_EQ(stats.rearms, 1);
}

// EBUSY while the old server's char device is not released yet is retried
// with backoff through the clock until it is.
TEST_P(RecoveryResumeTest, BusyUntilTheOldServerIsReleased) {
  const uint32_t id = QuiescedDevice(1);
  // Another "process" still holds a queue open: START answers EBUSY.
  ASSERT_TRUE(control_->StartUserRecovery(id).ok());
  auto holder = control_->OpenQueue(id, 0, kDepth);
  ASSERT_TRUE(holder.ok()) << holder.status();
  kernel_.NewProcess();
  FakeClock clock;
  RecoverOptions ro;
  ro.clock = &clock;
  ro.release_wait = absl::Seconds(1);
  RecoverStats stats;
  auto r = Export::Recover(*control_, Workers(), target_, id, ro, &stats);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(stats.gave_up);
  // 1, 2, 4, 8, then every 10 ms: a backoff, not a spin.
  EXPECT_GT(stats.busy_retries, 3);
  EXPECT_LE(stats.busy_retries, 4 + 1000 / 10);
  holder->reset();  // released
  RecoverStats stats2;
  auto ok = Export::Recover(*control_, Workers(), target_, id, Quick(), &stats2);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExpectServes(id);
}

// The release is noticed within the backoff's cap: the old server lets go
// 250 ms (fake) into the wait and the device is served by 260 ms. A 100 ms
// cap noticed it at 327 ms (1+2+...+64+100+100): every device still held
// when its turn came paid up to 100 ms more.
TEST_P(RecoveryResumeTest, ReleaseIsNoticedWithinTheBackoffCap) {
  const uint32_t id = QuiescedDevice(1);
  ASSERT_TRUE(control_->StartUserRecovery(id).ok());
  auto holder = control_->OpenQueue(id, 0, kDepth);
  ASSERT_TRUE(holder.ok()) << holder.status();
  kernel_.NewProcess();
  const absl::Time t0 = FakeClock().Now();  // where every fake clock starts
  ClockThatActsAt clock(t0 + absl::Milliseconds(250), [&] { holder->reset(); });
  RecoverOptions ro;  // the defaults, on the fake clock
  ro.clock = &clock;
  RecoverStats stats;
  auto r = Export::Recover(*control_, Workers(), target_, id, ro, &stats);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectServes(id);
  EXPECT_GE(clock.Now() - t0, absl::Milliseconds(250));
  EXPECT_LE(clock.Now() - t0, absl::Milliseconds(250 + 10));
  EXPECT_GT(stats.busy_retries, 0);
}

INSTANTIATE_TEST_SUITE_P(Kernels, RecoveryResumeTest,
                         ::testing::Values(Case{"Linux612", true}, Case{"Linux7", false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ublk
