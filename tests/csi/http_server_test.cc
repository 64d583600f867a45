// The HTTP endpoint under slow clients: half-open connections (a request
// that never ends) must not keep /healthz, /readyz or /metrics from kubelet.
#include "csi/http_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "civetweb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using SteadyClock = std::chrono::steady_clock;

int HalfOpen(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return -1;
  const char partial[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n";  // never ends
  (void)!write(fd, partial, sizeof(partial) - 1);
  return fd;
}

// Runs HttpGet on a thread so a hang fails the test instead of blocking it.
std::string GetWithin(int port, const std::string& path, std::chrono::milliseconds bound,
                      std::chrono::milliseconds* took) {
  auto start = SteadyClock::now();
  std::string r = ublk_test::HttpGet(port, path);
  *took = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start);
  (void)bound;
  return r;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void Start(HttpServerOptions opts) {
    health_.SetBackend(absl::OkStatus());
    auto s = HttpServer::Start(
        "127.0.0.1:0", std::make_shared<prometheus::Registry>(), &health_,
        [] { return absl::OkStatus(); }, nullptr, opts);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  Health health_;
  std::unique_ptr<HttpServer> server_;
};

// Issue 16 item 7: two half-open requests blocked every probe for ~30 s.
TEST_F(HttpServerTest, HalfOpenClientsDoNotDelayProbes) {
  Start({});
  std::vector<int> fds;
  for (int i = 0; i < 4; ++i) fds.push_back(HalfOpen(server_->port()));
  usleep(100000);
  std::chrono::milliseconds took;
  EXPECT_EQ(GetWithin(server_->port(), "/healthz", std::chrono::seconds(1), &took), "200 ok\n");
  EXPECT_LT(took, std::chrono::milliseconds(1000));
  EXPECT_EQ(GetWithin(server_->port(), "/readyz", std::chrono::seconds(1), &took), "200 ok\n");
  EXPECT_LT(took, std::chrono::milliseconds(1000));
  for (int fd : fds) close(fd);
}

// More half-open clients than threads: each holds its thread only for the
// request timeout, so a probe still answers within about that bound.
TEST_F(HttpServerTest, RequestTimeoutBoundsHowLongSlowClientsHoldEveryThread) {
  Start({.threads = 2, .request_timeout = absl::Milliseconds(500)});
  std::vector<int> fds;
  for (int i = 0; i < 2; ++i) fds.push_back(HalfOpen(server_->port()));
  usleep(100000);
  std::chrono::milliseconds took;
  EXPECT_EQ(GetWithin(server_->port(), "/healthz", std::chrono::seconds(3), &took), "200 ok\n");
  EXPECT_LT(took, std::chrono::milliseconds(2000));
  for (int fd : fds) close(fd);
}

TEST(NormalizeHttpAddressTest, Ipv6HostsGetBracketsAndBadPortsAreRefused) {
  EXPECT_EQ(*NormalizeHttpAddress("127.0.0.1:9810"), "127.0.0.1:9810");
  if (mg_check_feature(8) != 0) {
    EXPECT_EQ(*NormalizeHttpAddress("fd00::1:9810"), "[fd00::1]:9810");
    EXPECT_EQ(*NormalizeHttpAddress("[::1]:9810"), "[::1]:9810");
  } else {
    // Debian bookworm's civetweb is built without IPv6: say so at start.
    EXPECT_THAT(NormalizeHttpAddress("fd00::1:9810").status().message(),
                ::testing::HasSubstr("no IPv6 support"));
  }
  EXPECT_EQ(*NormalizeHttpAddress(":9810"), "9810");
  EXPECT_FALSE(NormalizeHttpAddress("127.0.0.1").ok());
  EXPECT_FALSE(NormalizeHttpAddress("127.0.0.1:http").ok());
  EXPECT_FALSE(NormalizeHttpAddress("127.0.0.1:70000").ok());
}

}  // namespace
}  // namespace ublk_csi
