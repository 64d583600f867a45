// LivenessCheck: cached, bounded, one log line per transition; and the real
// self-dial against a serving endpoint and against one that accepts nothing.
#include "csi/liveness.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "csi/identity_service.h"
#include "csi/plugin_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/subprocess.h"
#include "ublk/mutex.h"
#include "ublk/testing/fake_clock.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using SteadyClock = std::chrono::steady_clock;

using ublk::FakeClock;

TEST(LivenessCheckTest, ResultIsCachedForTheConfiguredTime) {
  FakeClock clock;
  int dials = 0;
  LivenessCheck check(
      [&](absl::Duration) {
        ++dials;
        return absl::OkStatus();
      },
      &clock, absl::Seconds(2), absl::Seconds(3), nullptr);
  EXPECT_TRUE(check.Check().ok());
  EXPECT_TRUE(check.Check().ok());
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE(check.Check().ok());
  EXPECT_EQ(dials, 1);
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE(check.Check().ok());
  EXPECT_EQ(dials, 2);
}

TEST(LivenessCheckTest, FailureIsUnavailableWithOneLogLinePerTransitionAndAMetric) {
  FakeClock clock;
  absl::Status next = absl::OkStatus();
  prometheus::Registry registry;
  LivenessCheck check([&](absl::Duration) { return next; }, &clock, absl::Seconds(2),
                      absl::ZeroDuration(), &registry);
  ublk_test::LogCapture logs;
  prometheus::TextSerializer ser;
  EXPECT_TRUE(check.Check().ok());
  next = absl::DeadlineExceededError("GetPluginInfo: deadline");
  for (int i = 0; i < 3; ++i) {
    clock.Advance(absl::Seconds(1));
    absl::Status s = check.Check();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(s.message(), HasSubstr("did not complete a call within 2s"));
    EXPECT_THAT(s.message(), HasSubstr("GetPluginInfo: deadline"));
  }
  EXPECT_THAT(ser.Serialize(registry.Collect()), HasSubstr("ublk_csi_live 0"));
  next = absl::OkStatus();
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(check.Check().ok());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(check.Check().ok());
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"not live"}), 1);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"live again"}), 1);
  EXPECT_THAT(ser.Serialize(registry.Collect()), HasSubstr("ublk_csi_live 1"));
}

// A second prober never waits longer than the bound for a dial in progress.
TEST(LivenessCheckTest, NoCallerWaitsLongerThanTheBound) {
  ublk::RealClock clock;
  std::atomic<bool> release{false};
  LivenessCheck check(
      [&](absl::Duration) {
        while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return absl::OkStatus();
      },
      &clock, absl::Milliseconds(200), absl::Seconds(1), nullptr);
  std::thread first([&] { (void)check.Check(); });
  // Without the bound the second caller would wait until the wedged check
  // ends: a watchdog ends it after 20 s, so such a failure shows as a slow
  // call rather than a hung test. The margin over the 200 ms bound absorbs
  // a loaded CI machine; an unbounded wait still fails by 10x.
  std::thread watchdog([&] {
    for (int i = 0; i < 2000 && !release.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    release = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto start = SteadyClock::now();
  absl::Status second = check.Check();
  auto took = SteadyClock::now() - start;
  release = true;
  first.join();
  watchdog.join();
  EXPECT_FALSE(second.ok());
  EXPECT_LT(took, std::chrono::seconds(2));
}

TEST(DialGetPluginInfoTest, SucceedsAgainstAServingEndpoint) {
  ublk_test::TempDir dir;
  Health health;
  IdentityService identity({}, &health);
  auto ep = ParseEndpoint("unix://" + dir.path() + "/csi.sock");
  ASSERT_TRUE(ep.ok());
  PluginServer server(*ep, {&identity});
  ASSERT_TRUE(server.Start().ok());
  EXPECT_TRUE(DialGetPluginInfo(*ep, absl::Seconds(5)).ok());
}

// What a stopped accept loop looks like from outside: connect succeeds (the
// kernel queues it) and nothing ever answers. The self-dial fails in time.
TEST(DialGetPluginInfoTest, FailsWithinTheBoundWhenNobodyAccepts) {
  ublk_test::TempDir dir;
  std::string path = dir.path() + "/dead.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  auto ep = ParseEndpoint("unix://" + path);
  ASSERT_TRUE(ep.ok());
  auto start = SteadyClock::now();
  absl::Status s = DialGetPluginInfo(*ep, absl::Milliseconds(500));
  auto took = SteadyClock::now() - start;
  close(fd);
  EXPECT_FALSE(s.ok());
  EXPECT_LT(took, std::chrono::milliseconds(1500));
}

// Probe asks liveness first: a plugin that cannot serve a new connection is
// reported dead even over an old one.
TEST(IdentityProbeTest, ProbeFailsWhenLivenessFails) {
  ublk_test::TempDir dir;
  Health health;
  health.SetBackend(absl::OkStatus());
  std::atomic<bool> live{true};
  IdentityService identity({}, &health, [&] {
    return live.load() ? absl::OkStatus() : absl::UnavailableError("liveness: wedged");
  });
  auto ep = ParseEndpoint("unix://" + dir.path() + "/csi.sock");
  ASSERT_TRUE(ep.ok());
  PluginServer server(*ep, {&identity});
  ASSERT_TRUE(server.Start().ok());
  auto stub = csi::v1::Identity::NewStub(
      grpc::CreateChannel(ep->GrpcTarget(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    EXPECT_TRUE(stub->Probe(&ctx, {}, &resp).ok());
  }
  live = false;
  grpc::ClientContext ctx;
  csi::v1::ProbeResponse resp;
  grpc::Status s = stub->Probe(&ctx, {}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("wedged"));
}

}  // namespace
}  // namespace ublk_csi
