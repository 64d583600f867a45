// The ublk-csi and ublk-csi-ctl binaries as an operator runs them: bad flags,
// a second instance on the same socket, stale sockets, SIGTERM, HTTP health.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ublk_test::BuildDir;
using ublk_test::FreePort;

std::string Plugin() { return BuildDir() + "/csi/ublk-csi"; }
std::string Ctl() { return BuildDir() + "/csi/ublk-csi-ctl"; }

class PluginBinaryTest : public ::testing::Test {
 protected:
  std::vector<std::string> Args(const std::string& sock, int port = 0) {
    return {Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
            absl::StrCat("--metrics-address=127.0.0.1:", port)};
  }
  ublk_test::TempDir dir_;
};

TEST_F(PluginBinaryTest, VersionFlag) {
  auto r = ublk_test::Run({Plugin(), "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("0."));
}

// Ceph's libraries are loaded when the first RBD connection is made
// (ublk/rbd_api.h): a node-local plugin starts without mapping them (in the
// qemu guest, a third of its exec-to-main time).
TEST(PluginLinkTest, TheBinariesDoNotLinkCeph) {
  for (const std::string& bin : {Plugin(), Ctl()}) {
    ublk_test::RunResult r = ublk_test::Run({"/usr/bin/readelf", "-d", bin});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_THAT(r.output, HasSubstr("(NEEDED)")) << bin;
    EXPECT_THAT(r.output, Not(HasSubstr("librbd"))) << bin;
    EXPECT_THAT(r.output, Not(HasSubstr("librados"))) << bin;
  }
}

// With STATIC_DEPS (the plain tree, the image) gRPC, protobuf, abseil and
// liburing are in the binaries: in the guest the dynamic loader's work on
// their ~50 shared objects was most of a restarted plugin's start
// (cmake/StaticDeps.cmake). The trees that keep them shared skip this.
TEST(PluginLinkTest, StaticDepsLeaveOnlyTheSharedObjectsDebianHasNoArchiveFor) {
  if (!UBLK_CSI_STATIC_DEPS) GTEST_SKIP() << "built with -DSTATIC_DEPS=OFF";
  for (const std::string& bin : {Plugin(), Ctl()}) {
    ublk_test::RunResult r = ublk_test::Run({"/usr/bin/readelf", "-d", bin});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_THAT(r.output, HasSubstr("[libglog.so")) << bin;
    for (const char* lib : {"libgrpc", "libgpr", "libprotobuf", "libabsl", "liburing", "libre2",
                            "libssl", "libcrypto", "libcares", "libupb"}) {
      EXPECT_THAT(r.output, Not(HasSubstr(absl::StrCat("[", lib)))) << bin << " needs " << lib;
    }
  }
}

TEST_F(PluginBinaryTest, BadFlagsFailWithClearMessages) {
  std::string sock = dir_.path() + "/csi.sock";
  struct Case {
    std::vector<std::string> argv;
    std::string want;
  };
  std::vector<Case> cases = {
      {{Plugin(), "--endpoint=unix://" + sock, "--data-dir=" + dir_.path()},
       "--node-id is required"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://relative", "--data-dir=" + dir_.path()},
       "must be absolute"},
      {{Plugin(), "--node-id=n1", "--endpoint=tcp://nohost", "--data-dir=" + dir_.path()},
       "expected unix:///path or tcp://host:port"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=/nonexistent/dir"},
       "not an existing directory"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=relative"},
       "must be an absolute path"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--log-level=loud"},
       "--log-level=loud"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--queue-depth=0"},
       "--queue-depth=0: out of range 1..4096"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--queue-depth=5000"},
       "--queue-depth=5000: out of range 1..4096"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--busy-poll-rounds=-1"},
       "--busy-poll-rounds=-1: out of range 0..65536"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--mode=central"},
       "--mode=central: expected node or controller"},
      {{Plugin(), "--mode=controller", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path()},
       "--mode=controller needs --rbd"},
      {{Plugin(), "--mode=controller", "--rbd", "--endpoint=unix://" + sock,
        "--rbd-endpoint=unix://" + sock + "2", "--data-dir=" + dir_.path()},
       "--rbd-endpoint is for --mode=node"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--rbd-endpoint=unix://" + sock + "2"},
       "needs --rbd"},
      {{Plugin(), "--node-id=n1", "--rbd", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--rbd-endpoint=unix://" + sock},
       "is --endpoint too"},
      {{Plugin(), "--node-id=n1", "--rbd", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--rbd-endpoint=unix://relative"},
       "--rbd-endpoint: "},
      {{Plugin(), "--mode=controller", "--rbd", "--endpoint=unix://" + sock,
        "--data-dir=" + dir_.path(), "--rbd-clusters-file=" + dir_.path() + "/no-such-file"},
       "--rbd-clusters-file=" + dir_.path() + "/no-such-file: No such file"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--rbd-clusters-file=" + dir_.path() + "/x"},
       "--rbd-clusters-file needs --rbd"},
      {{Plugin(), "--node-id=n1", "--endpoint=unix://" + sock, "--data-dir=" + dir_.path(),
        "--rbd-max-volumes=-1"},
       "--rbd-max-volumes=-1: must not be negative"},
      {{Plugin(), "--no-such-flag"}, "unknown command line flag"},
      {{Plugin(), "--node-id=n1", "stray-argument"}, "unexpected argument"},
  };
  for (const auto& c : cases) {
    auto r = ublk_test::Run(c.argv);
    EXPECT_NE(r.exit_code, 0) << c.want;
    EXPECT_THAT(r.output, HasSubstr(c.want));
  }
  EXPECT_NE(access(sock.c_str(), F_OK), 0) << "a refused start must not leave a socket";
}

TEST_F(PluginBinaryTest, ServesIdentityRefusesSecondInstanceAndCleansUpOnSigterm) {
  std::string sock = dir_.path() + "/csi.sock";
  int port = FreePort();
  ublk_test::Child plugin(Args(sock, port), dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();

  auto info = ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "identity", "info"});
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_THAT(info.output, HasSubstr("ublk.csi.io"));

  auto second = ublk_test::Run(Args(sock, FreePort()));
  EXPECT_EQ(second.exit_code, 2);
  EXPECT_THAT(second.output, HasSubstr("held by a live process"));
  EXPECT_TRUE(plugin.Alive()) << "the first instance must keep serving";

  // Health over HTTP: the process answers; readiness names what is missing on
  // a host without ublk, and is OK where the driver is present.
  EXPECT_EQ(ublk_test::HttpGet(port, "/healthz"), "200 ok\n");
  std::string ready = ublk_test::HttpGet(port, "/readyz");
  if (access("/dev/ublk-control", F_OK) != 0) {
    EXPECT_THAT(ready, HasSubstr("503"));
    EXPECT_THAT(ready, HasSubstr("ublk_drv"));
  } else {
    EXPECT_EQ(ready, "200 ok\n");
  }
  EXPECT_THAT(ublk_test::HttpGet(port, "/metrics"), HasSubstr("ublk_csi_build_info{"));

  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  EXPECT_NE(access(sock.c_str(), F_OK), 0) << "socket must be removed on SIGTERM";
  EXPECT_THAT(plugin.Log(), HasSubstr("shutdown complete"));
}

// A container runtime's default seccomp profile refuses io_uring (ENOSYS).
// The plugin must not exit, which the kubelet would answer by restarting it
// into the same refusal, a crash loop: it stays up, live and not ready, and
// says why where an operator looks (readiness, Probe, a metric, one log line).
// The chart's controller Deployment: no --node-id, no ublk_drv, no devices;
// ready at once, answering as rbd.ublk.csi.io for RBD volumes only.
TEST_F(PluginBinaryTest, ControllerModeStartsWithoutUblkAndServesOnlyTheRbdDriver) {
  const std::string sock = dir_.path() + "/csi.sock";
  const int port = FreePort();
  ublk_test::Child plugin(
      {Plugin(), "--mode=controller", "--rbd", "--endpoint=unix://" + sock,
       "--data-dir=" + dir_.path(), absl::StrCat("--metrics-address=127.0.0.1:", port)},
      dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();
  const std::string ep = "--endpoint=unix://" + sock;
  auto info = ublk_test::Run({Ctl(), ep, "identity", "info"});
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_THAT(info.output, HasSubstr("rbd.ublk.csi.io"));
  EXPECT_EQ(ublk_test::HttpGet(port, "/readyz"), "200 ok\n") << plugin.Log();
  auto caps = ublk_test::Run({Ctl(), ep, "controller", "caps"});
  EXPECT_THAT(caps.output, HasSubstr("CREATE_DELETE_VOLUME"));
  EXPECT_THAT(caps.output, Not(HasSubstr("PUBLISH_UNPUBLISH")));
  auto create = ublk_test::Run({Ctl(), ep, "volume", "create", "pvc-1"});
  EXPECT_NE(create.exit_code, 0);
  EXPECT_THAT(create.output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(create.output, HasSubstr("parameters.backend must be rbd"));
  auto stage = ublk_test::Run({Ctl(), ep, "node", "stage", "v1", dir_.path() + "/stage"});
  EXPECT_THAT(stage.output, HasSubstr("UNIMPLEMENTED")) << "no Node service in the controller";
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  EXPECT_THAT(plugin.Log(), HasSubstr("controller of rbd.ublk.csi.io"));
  EXPECT_THAT(plugin.Log(), Not(HasSubstr("crash-loop")));
}

// The node plugin with --rbd-endpoint: one process, two drivers, two sockets.
TEST_F(PluginBinaryTest, RbdEndpointAnswersAsTheSecondDriver) {
  const std::string sock = dir_.path() + "/csi.sock";
  const std::string rbd_sock = dir_.path() + "/rbd.sock";
  std::vector<std::string> args = Args(sock, FreePort());
  args.push_back("--backend=fake");
  args.push_back("--mounter=fake");
  args.push_back("--rbd");
  args.push_back("--rbd-endpoint=unix://" + rbd_sock);
  // Each driver reports its own share of the node's ublk devices.
  args.push_back("--max-volumes=48");
  args.push_back("--rbd-max-volumes=16");
  ublk_test::Child plugin(args, dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();
  ASSERT_TRUE(ublk_test::WaitForPath(rbd_sock)) << plugin.Log();
  auto main_info = ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "identity", "info"});
  EXPECT_THAT(main_info.output, HasSubstr("name: \"ublk.csi.io\"")) << main_info.output;
  auto rbd_info = ublk_test::Run({Ctl(), "--endpoint=unix://" + rbd_sock, "identity", "info"});
  EXPECT_THAT(rbd_info.output, HasSubstr("name: \"rbd.ublk.csi.io\"")) << rbd_info.output;
  EXPECT_THAT(ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "node", "info"}).output,
              HasSubstr("max_volumes_per_node: 48"));
  EXPECT_THAT(ublk_test::Run({Ctl(), "--endpoint=unix://" + rbd_sock, "node", "info"}).output,
              HasSubstr("max_volumes_per_node: 16"));
  auto probe = ublk_test::Run({Ctl(), "--endpoint=unix://" + rbd_sock, "identity", "probe"});
  EXPECT_EQ(probe.exit_code, 0) << probe.output;
  auto create = ublk_test::Run({Ctl(), "--endpoint=unix://" + rbd_sock, "volume", "create", "v"});
  EXPECT_THAT(create.output, HasSubstr("UNIMPLEMENTED")) << "the controller Deployment creates";
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  EXPECT_NE(access(sock.c_str(), F_OK), 0);
  EXPECT_NE(access(rbd_sock.c_str(), F_OK), 0) << "both sockets removed on SIGTERM";
}

TEST_F(PluginBinaryTest, IoUringRefusedKeepsThePluginUpNotReadyAndSayingWhy) {
  std::string sock = dir_.path() + "/csi.sock";
  int port = FreePort();
  std::vector<std::string> argv = {BuildDir() + "/tests/no-io-uring"};
  for (const std::string& a : Args(sock, port)) argv.push_back(a);
  argv.push_back("--backend=ublk");
  ublk_test::Child plugin(argv, dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();
  // The HTTP server starts just after the CSI socket.
  for (int i = 0; i < 100 && ublk_test::HttpGet(port, "/healthz") != "200 ok\n"; ++i) {
    usleep(50000);
  }
  EXPECT_EQ(ublk_test::HttpGet(port, "/healthz"), "200 ok\n");
  std::string ready = ublk_test::HttpGet(port, "/readyz");
  EXPECT_THAT(ready, HasSubstr("503"));
  EXPECT_THAT(ready, HasSubstr("io_uring"));
  EXPECT_THAT(ready, HasSubstr("seccomp"));
  auto probe = ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "identity", "probe"});
  EXPECT_THAT(probe.output, HasSubstr("io_uring")) << probe.output;
  EXPECT_THAT(ublk_test::HttpGet(port, "/metrics"), HasSubstr("ublk_csi_backend_usable 0"));
  usleep(500 * 1000);
  EXPECT_TRUE(plugin.Alive()) << plugin.Log();
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
  const std::string log = plugin.Log();
  size_t n = 0;
  for (size_t at = log.find("cannot serve volumes"); at != std::string::npos;
       at = log.find("cannot serve volumes", at + 1)) {
    n += log.compare(at > 0 ? log.rfind('\n', at) + 1 : 0, 1, "E") == 0 ? 1 : 0;
  }
  EXPECT_EQ(n, 1u) << "one ERROR line naming the cause:\n" << log;
}

// ublk_csi_exports counts volumes staged after start-up too: it is taken
// from the volumes' state at each scrape (it used to be set only when
// recovery ran, so it said 0 on a node serving hundreds of volumes).
TEST_F(PluginBinaryTest, ExportGaugeCountsVolumesStagedAfterStartup) {
  std::string sock = dir_.path() + "/csi.sock";
  int port = FreePort();
  std::vector<std::string> args = Args(sock, port);
  args.push_back("--backend=fake");
  args.push_back("--mounter=fake");
  ublk_test::Child plugin(args, dir_.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();
  const std::string live = "ublk_csi_exports{state=\"live\"} ";
  for (int i = 0; i < 100 && ublk_test::HttpGet(port, "/readyz") != "200 ok\n"; ++i) usleep(50000);
  EXPECT_THAT(ublk_test::HttpGet(port, "/metrics"), HasSubstr(live + "0"));

  ASSERT_EQ(mkdir((dir_.path() + "/paths").c_str(), 0755), 0);
  auto bench = ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "bench", dir_.path() + "/paths",
                               "--count=3", "--prefix=g", "--size=1Mi"});
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_THAT(ublk_test::HttpGet(port, "/metrics"), HasSubstr(live + "3"));
  EXPECT_EQ(plugin.Stop(SIGTERM), 0) << plugin.Log();
}

TEST_F(PluginBinaryTest, RemovesStaleSocketLeftByKilledInstance) {
  std::string sock = dir_.path() + "/csi.sock";
  {
    ublk_test::Child first(Args(sock, FreePort()), dir_.path() + "/first.log");
    ASSERT_TRUE(ublk_test::WaitForPath(sock));
    EXPECT_EQ(first.Stop(SIGKILL), -SIGKILL);
  }
  ASSERT_EQ(access(sock.c_str(), F_OK), 0) << "kill -9 leaves the socket behind";
  ublk_test::Child second(Args(sock, FreePort()), dir_.path() + "/second.log");
  for (int i = 0; i < 500; ++i) {
    if (ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "identity", "info"}).exit_code == 0)
      break;
    usleep(10000);
  }
  auto info = ublk_test::Run({Ctl(), "--endpoint=unix://" + sock, "identity", "info"});
  EXPECT_EQ(info.exit_code, 0) << second.Log();
  EXPECT_THAT(second.Log(), HasSubstr("removed stale socket"));
  EXPECT_EQ(second.Stop(SIGINT), 0);
}

TEST_F(PluginBinaryTest, MetricsAddressInUseIsAClearError) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  auto r = ublk_test::Run(Args(dir_.path() + "/csi.sock", ntohs(a.sin_port)));
  close(fd);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("metrics address"));
  EXPECT_NE(access((dir_.path() + "/csi.sock").c_str(), F_OK), 0);
}

TEST(CtlBinaryTest, UnreachableEndpointIsUnavailable) {
  ublk_test::TempDir dir;
  auto r = ublk_test::Run({Ctl(), "--endpoint=unix://" + dir.path() + "/nobody.sock", "--timeout=2",
                           "identity", "probe"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("UNAVAILABLE"));
}

TEST(CtlBinaryTest, UnknownCommandPrintsUsage) {
  auto r = ublk_test::Run({Ctl(), "identity", "dance"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("usage:"));
  EXPECT_THAT(r.output, HasSubstr("identity probe"));
}

}  // namespace
