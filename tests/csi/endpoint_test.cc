#include "csi/endpoint.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

TEST(ParseEndpointTest, AcceptsUnixAndTcpForms) {
  auto a = ParseEndpoint("unix:///csi/csi.sock");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->kind, Endpoint::Kind::kUnix);
  EXPECT_EQ(a->path, "/csi/csi.sock");
  EXPECT_EQ(a->GrpcTarget(), "unix:/csi/csi.sock");

  auto b = ParseEndpoint("unix:/run/x.sock");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->path, "/run/x.sock");

  auto c = ParseEndpoint("tcp://127.0.0.1:10000");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->kind, Endpoint::Kind::kTcp);
  EXPECT_EQ(c->GrpcTarget(), "127.0.0.1:10000");
}

TEST(ParseEndpointTest, RejectsMalformedWithMessage) {
  for (const char* bad :
       {"", "unix://relative/path", "tcp://host", "tcp://host:0", "tcp://host:99999", "nonsense"}) {
    auto r = ParseEndpoint(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  std::string long_path = "unix:///" + std::string(200, 'a');
  EXPECT_EQ(ParseEndpoint(long_path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PrepareEndpointTest, RemovesStaleSocket) {
  ublk_test::TempDir dir;
  std::string path = dir.path() + "/csi.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);  // bound but never listened: a dead server's leftover
  auto ep = ParseEndpoint("unix://" + path);
  ASSERT_TRUE(ep.ok());
  EXPECT_TRUE(PrepareEndpoint(*ep).ok());
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

TEST(PrepareEndpointTest, RefusesLiveSocket) {
  ublk_test::TempDir dir;
  std::string path = dir.path() + "/csi.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  auto ep = ParseEndpoint("unix://" + path);
  absl::Status s = PrepareEndpoint(*ep);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("live process"), std::string::npos) << s;
  EXPECT_EQ(access(path.c_str(), F_OK), 0) << "live socket must not be removed";
  close(fd);
}

TEST(PrepareEndpointTest, RefusesToRemoveRegularFile) {
  ublk_test::TempDir dir;
  std::string path = dir.path() + "/csi.sock";
  std::ofstream(path) << "precious";
  auto ep = ParseEndpoint("unix://" + path);
  EXPECT_EQ(PrepareEndpoint(*ep).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace ublk_csi
