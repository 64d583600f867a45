// The real ublk-csi binary under hostile conditions on its two servers: file
// descriptors exhausted by idle connections (gRPC), half-open HTTP clients,
// a permissive umask, a low RLIMIT_NOFILE soft limit.
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "csi.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace {

using ::testing::HasSubstr;
using ublk_test::BuildDir;
using ublk_test::ConnectTcp;
using ublk_test::FreePort;
using Clock = std::chrono::steady_clock;

std::string Plugin() { return BuildDir() + "/csi/ublk-csi"; }

// A unix-socket connection that sends nothing (non-blocking connect: a full
// backlog gives -1 instead of blocking the test).
int ConnectUnixIdle(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// GET with a time bound: "<code> <body>", or "error: timeout" when the whole
// exchange did not finish within `timeout_ms`.
std::string HttpGetWithin(int port, const std::string& path, int timeout_ms) {
  int fd = ConnectTcp(port);
  if (fd < 0) return "error: connect";
  timeval tv{.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "error: write";
  }
  std::string resp;
  char buf[4096];
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      resp.append(buf, static_cast<size_t>(n));
      if (Clock::now() > deadline) break;
      continue;
    }
    if (n == 0) break;
    close(fd);
    return "error: timeout";
  }
  close(fd);
  size_t sp = resp.find(' ');
  size_t body = resp.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) return "error: bad response";
  return resp.substr(sp + 1, 3) + " " + resp.substr(body + 4);
}

int CountFds(int pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

std::string ProcLimitsLine(int pid, const std::string& what) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/limits"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(what, 0) == 0) return line;
  }
  return "";
}

grpc::Status CallGetPluginInfo(const std::string& sock, int deadline_ms) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new connection, not a shared one
  auto stub = csi::v1::Identity::NewStub(
      grpc::CreateCustomChannel("unix:" + sock, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  ctx.set_wait_for_ready(true);
  csi::v1::GetPluginInfoResponse resp;
  return stub->GetPluginInfo(&ctx, {}, &resp);
}

class PluginHardeningTest : public ::testing::Test {
 protected:
  std::vector<std::string> Args(int port, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {Plugin(),
                                  "--node-id=n1",
                                  "--endpoint=unix://" + Sock(),
                                  "--data-dir=" + dir_.path(),
                                  absl::StrCat("--metrics-address=127.0.0.1:", port),
                                  "--backend=fake",
                                  "--mounter=fake"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::string Sock() const { return dir_.path() + "/csi.sock"; }
  ublk_test::TempDir dir_;
};

// Issue 16 item 6: once RLIMIT_NOFILE was reached (idle connections), gRPC
// 1.51's own accept loop gave up for good: every later connection hung while
// /healthz said 200. Now the plugin reports unhealthy while it cannot serve a
// new connection, and serves new connections again once fds are free.
#if defined(__SANITIZE_THREAD__)
#define UBLK_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UBLK_TEST_TSAN 1
#endif
#endif

TEST_F(PluginHardeningTest, FdExhaustionIsReportedAndTheListenerRecovers) {
#ifdef UBLK_TEST_TSAN
  // The plugin under test has no free fd when TSan reports, so TSan cannot
  // start its symbolizer; tests/tsan.supp matches Debian's uninstrumented
  // abseil (Status refcounts) by function name and so cannot apply, and the
  // known false positive kills the plugin. The plain and ASan builds run it.
  GTEST_SKIP() << "TSan cannot symbolize (and so suppress) reports in a process without fds";
#endif
  const int kLimit = 96;
  int port = FreePort();
  std::vector<std::string> argv = {"/usr/bin/prlimit",
                                   absl::StrCat("--nofile=", kLimit, ":", kLimit)};
  for (const std::string& a : Args(port, {"--liveness-cache=200ms"})) argv.push_back(a);
  ublk_test::Child plugin(argv, dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(Sock())) << plugin.Log();
  ASSERT_TRUE(CallGetPluginInfo(Sock(), 10000).ok()) << plugin.Log();

  // The "sidecar": a connection made before the exhaustion, as the
  // livenessprobe sidecar holds one.
  auto sidecar = csi::v1::Identity::NewStub(
      grpc::CreateChannel("unix:" + Sock(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(sidecar->Probe(&ctx, {}, &resp).ok());
  }
  ASSERT_EQ(ublk_test::HttpGet(port, "/healthz"), "200 ok\n");

  std::vector<int> idle;
  for (int i = 0; i < kLimit + 40; ++i) {
    int fd = ConnectUnixIdle(Sock());
    if (fd >= 0) idle.push_back(fd);
  }
  // Wait until the plugin's fd table is full.
  for (int i = 0; i < 100 && CountFds(plugin.pid()) < kLimit - 1; ++i) usleep(50000);
  EXPECT_GE(CountFds(plugin.pid()), kLimit - 1) << "the test did not exhaust the plugin's fds";
  usleep(300000);  // past --liveness-cache: the next probe checks afresh

  // Unhealthy, within the bound, both ways kubelet asks: the CSI Probe over
  // the sidecar's old connection, and (if it can connect at all) /healthz.
  {
    auto start = Clock::now();
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    csi::v1::ProbeResponse resp;
    grpc::Status s = sidecar->Probe(&ctx, {}, &resp);
    EXPECT_FALSE(s.ok()) << "Probe says healthy while no new connection can be served";
    EXPECT_NE(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
  }
  EXPECT_NE(HttpGetWithin(port, "/healthz", 4000).substr(0, 3), "200");

  for (int fd : idle) close(fd);
  // Recovery: a fresh connection is served again within a bound.
  auto start = Clock::now();
  grpc::Status s = CallGetPluginInfo(Sock(), 15000);
  EXPECT_TRUE(s.ok()) << "after the idle connections closed, a new connection still hangs: "
                      << s.error_message() << "\n"
                      << plugin.Log();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  std::string health;
  for (int i = 0; i < 50; ++i) {
    health = HttpGetWithin(port, "/healthz", 4000);
    if (health == "200 ok\n") break;
    usleep(100000);
  }
  EXPECT_EQ(health, "200 ok\n");
  EXPECT_TRUE(plugin.Alive());
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
}

// Issue 16 "What to build": the soft RLIMIT_NOFILE (often 1024) is raised to
// the hard limit at start, and the log says so.
TEST_F(PluginHardeningTest, RaisesTheOpenFileSoftLimitToTheHardLimit) {
  int port = FreePort();
  std::vector<std::string> argv = {"/usr/bin/prlimit", "--nofile=100:700"};
  for (const std::string& a : Args(port)) argv.push_back(a);
  ublk_test::Child plugin(argv, dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(Sock())) << plugin.Log();
  EXPECT_THAT(ProcLimitsLine(plugin.pid(), "Max open files"),
              ::testing::MatchesRegex("Max open files +700 +700 +files *"));
  EXPECT_THAT(plugin.Log(), HasSubstr("raised RLIMIT_NOFILE soft limit from 100 to 700"));
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
}

// Issue 16 item 9: the socket's mode followed the umask (0777 under 000).
TEST_F(PluginHardeningTest, SocketIs0600UnderUmask000AndSocketGroupMakesIt0660) {
  mode_t old = umask(0);
  {
    ublk_test::Child plugin(Args(FreePort()), dir_.path() + "/plugin.log");
    bool up = ublk_test::WaitForPath(Sock());
    struct stat st;
    if (up) {
      ASSERT_EQ(stat(Sock().c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, 0600u);
    }
    EXPECT_TRUE(up) << plugin.Log();
    EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  }
  {
    ublk_test::Child plugin(Args(FreePort(), {absl::StrCat("--socket-group=", getgid())}),
                            dir_.path() + "/plugin2.log");
    bool up = ublk_test::WaitForPath(Sock());
    struct stat st;
    if (up) {
      ASSERT_EQ(stat(Sock().c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, 0660u);
      EXPECT_EQ(st.st_gid, getgid());
    }
    EXPECT_TRUE(up) << plugin.Log();
    EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  }
  umask(old);
  auto r = ublk_test::Run(Args(FreePort(), {"--socket-group=no-such-group-xyz"}));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--socket-group=no-such-group-xyz: no such group"));
}

// Issue 16 item 7: the HTTP server bound 0.0.0.0 unless told otherwise.
TEST_F(PluginHardeningTest, MetricsAddressDefaultsToLoopback) {
  auto r = ublk_test::Run({Plugin(), "--helpfull"});
  EXPECT_THAT(r.output, ::testing::ContainsRegex(
                            "-metrics_address .*\n? *default: \"127\\.0\\.0\\.1:9810\""));
}

// Half-open HTTP clients against the real binary's defaults.
TEST_F(PluginHardeningTest, HalfOpenHttpClientsDoNotBlockProbes) {
  int port = FreePort();
  ublk_test::Child plugin(Args(port), dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(Sock())) << plugin.Log();
  std::string first;
  for (int i = 0; i < 100 && first != "200 ok\n"; ++i) {
    first = HttpGetWithin(port, "/healthz", 5000);
    if (first != "200 ok\n") usleep(50000);
  }
  ASSERT_EQ(first, "200 ok\n");
  std::vector<int> fds;
  for (int i = 0; i < 3; ++i) {
    int fd = ConnectTcp(port);
    ASSERT_GE(fd, 0);
    const char partial[] = "GET /metrics HTTP/1.1\r\n";
    ASSERT_GT(write(fd, partial, sizeof(partial) - 1), 0);
    fds.push_back(fd);
  }
  usleep(100000);
  auto start = Clock::now();
  EXPECT_EQ(HttpGetWithin(port, "/healthz", 2000), "200 ok\n");
  EXPECT_THAT(HttpGetWithin(port, "/metrics", 2000), HasSubstr("ublk_csi_build_info"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  for (int fd : fds) close(fd);
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
}

// Every failed CSI call leaves one WARNING line naming the method, the ids,
// the code and the message.
TEST_F(PluginHardeningTest, FailedCallsAreLoggedWithMethodIdsAndCode) {
  int port = FreePort();
  ublk_test::Child plugin(Args(port), dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(Sock())) << plugin.Log();
  auto stub = csi::v1::Node::NewStub(
      grpc::CreateChannel("unix:" + Sock(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  // No staging path, no capability: INVALID_ARGUMENT (or UNAVAILABLE while
  // start-up recovery still runs).
  csi::v1::NodeStageVolumeRequest req;
  req.set_volume_id("no-such-vol");
  (*req.mutable_secrets())["key"] = "topsecret";
  csi::v1::NodeStageVolumeResponse resp;
  EXPECT_FALSE(stub->NodeStageVolume(&ctx, req, &resp).ok());
  EXPECT_EQ(plugin.Stop(SIGTERM), 0);
  std::string log = plugin.Log();
  EXPECT_THAT(log, ::testing::ContainsRegex(
                       "W.*rpc Node/NodeStageVolume volume_id=\"no-such-vol\" failed: [A-Z_]+: "))
      << log;
  EXPECT_THAT(log, ::testing::Not(HasSubstr("topsecret")));
}

}  // namespace
