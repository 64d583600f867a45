// PluginServer's limits, in process over a real unix socket: a bounded number
// of serving threads, calls per connection and message sizes; the socket's
// mode whatever the umask; one log line per failed call, with its ids and
// never a secret. And the Listener's accept loop surviving accept failures.
#include "csi/plugin_server.h"

#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "csi.grpc.pb.h"
#include "csi/listener.h"
#include "csi/liveness.h"
#include "csi/mounter.h"
#include "csi/rpc_logging.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/log_capture.h"
#include "tests/testing/subprocess.h"
#include "ublk/mutex.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

int CountThreads() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

// Probe blocks until released; counts how many run at once.
class BlockingIdentity final : public csi::v1::Identity::Service {
 public:
  grpc::Status Probe(grpc::ServerContext*, const csi::v1::ProbeRequest*,
                     csi::v1::ProbeResponse*) override {
    ublk::MutexLock l(&mu_);
    ++running_;
    max_running_ = std::max(max_running_, running_);
    cv_.NotifyAll();
    cv_.Wait(l, [this] { return released_; });
    --running_;
    return grpc::Status::OK;
  }
  void Release() {
    ublk::MutexLock l(&mu_);
    released_ = true;
    cv_.NotifyAll();
  }
  // Waits until `n` handlers run at once or `ms` pass; returns how many ran.
  int WaitRunning(int n, int ms) {
    ublk::MutexLock l(&mu_);
    cv_.WaitFor(l, std::chrono::milliseconds(ms), [&] { return running_ >= n; });
    return running_;
  }
  int max_running() {
    ublk::MutexLock l(&mu_);
    return max_running_;
  }

 private:
  ublk::Mutex mu_;
  ublk::CondVar cv_;
  int running_ = 0;
  int max_running_ = 0;
  bool released_ = false;
};

// Answers ListVolumes with `entries` volumes of 1 KiB ids; every other
// method is UNIMPLEMENTED (a failed call).
class BigController final : public csi::v1::Controller::Service {
 public:
  grpc::Status ListVolumes(grpc::ServerContext*, const csi::v1::ListVolumesRequest*,
                           csi::v1::ListVolumesResponse* resp) override {
    for (int i = 0; i < entries; ++i) {
      resp->add_entries()->mutable_volume()->set_volume_id(std::string(1024, 'v'));
    }
    return grpc::Status::OK;
  }
  int entries = 0;
};

struct AsyncCalls {
  ublk::Mutex mu;
  ublk::CondVar cv;
  int done = 0;
  std::map<grpc::StatusCode, int> codes;
  void Finish(const grpc::Status& s) {
    ublk::MutexLock l(&mu);
    ++done;
    ++codes[s.error_code()];
    cv.NotifyAll();
  }
  bool WaitDone(int n, int ms) {
    ublk::MutexLock l(&mu);
    return cv.WaitFor(l, std::chrono::milliseconds(ms), [&] { return done >= n; });
  }
};

class PluginServerTest : public ::testing::Test {
 protected:
  void Start(std::vector<grpc::Service*> services, PluginServerOptions opts) {
    auto ep = ParseEndpoint("unix://" + Sock());
    ASSERT_TRUE(ep.ok());
    server_ = std::make_unique<PluginServer>(*ep, std::move(services), std::move(opts));
    ASSERT_TRUE(server_->Start().ok());
    channel_ = grpc::CreateChannel("unix:" + Sock(), grpc::InsecureChannelCredentials());
  }
  std::string Sock() const { return dir_.path() + "/csi.sock"; }

  ublk_test::TempDir dir_;
  std::unique_ptr<PluginServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Issue 16 item 6: "500 concurrent RPCs made 413 threads".
TEST_F(PluginServerTest, ServingThreadsAreBounded) {
  BlockingIdentity identity;
  PluginServerOptions opts;
  opts.max_threads = 8;
  opts.max_concurrent_streams = 1000;
  Start({&identity}, opts);
  const int threads_before = CountThreads();
  auto stub = csi::v1::Identity::NewStub(channel_);
  const int kCalls = 60;
  AsyncCalls calls;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<csi::v1::ProbeResponse> resps(kCalls);
  csi::v1::ProbeRequest req;
  for (int i = 0; i < kCalls; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    stub->async()->Probe(ctxs.back().get(), &req, &resps[i],
                         [&calls](grpc::Status s) { calls.Finish(s); });
  }
  // Let every call that can start do so.
  identity.WaitRunning(kCalls, 3000);
  usleep(300000);
  const int threads_during = CountThreads();
  identity.Release();
  ASSERT_TRUE(calls.WaitDone(kCalls, 30000));
  EXPECT_LE(identity.max_running(), 8) << "more handlers ran at once than --grpc-max-threads";
  EXPECT_LE(threads_during - threads_before, 10) << "the server started a thread per call";
  EXPECT_GT(calls.codes[grpc::StatusCode::RESOURCE_EXHAUSTED], 0)
      << "calls beyond the thread bound are refused, not queued on new threads";
  EXPECT_GT(calls.codes[grpc::StatusCode::OK], 0);
  server_.reset();  // the server goes before the services it serves
}

TEST_F(PluginServerTest, CallsPerConnectionAreBounded) {
  BlockingIdentity identity;
  PluginServerOptions opts;
  opts.max_concurrent_streams = 3;
  Start({&identity}, opts);
  auto stub = csi::v1::Identity::NewStub(channel_);
  const int kCalls = 10;
  AsyncCalls calls;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<csi::v1::ProbeResponse> resps(kCalls);
  csi::v1::ProbeRequest req;
  for (int i = 0; i < kCalls; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    stub->async()->Probe(ctxs.back().get(), &req, &resps[i],
                         [&calls](grpc::Status s) { calls.Finish(s); });
  }
  identity.WaitRunning(kCalls, 2000);
  EXPECT_EQ(identity.max_running(), 3);
  identity.Release();
  ASSERT_TRUE(calls.WaitDone(kCalls, 20000));
  EXPECT_EQ(calls.codes[grpc::StatusCode::OK], kCalls) << "the rest waited and then ran";
  server_.reset();  // the server goes before the services it serves
}

TEST_F(PluginServerTest, MessageSizesAreBoundedBothWays) {
  BigController controller;
  PluginServerOptions opts;
  opts.max_message_bytes = 16 * 1024;
  Start({&controller}, opts);
  auto stub = csi::v1::Controller::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    csi::v1::CreateVolumeRequest req;
    req.set_name(std::string(32 * 1024, 'n'));
    csi::v1::CreateVolumeResponse resp;
    EXPECT_EQ(stub->CreateVolume(&ctx, req, &resp).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  {
    controller.entries = 8;  // ~8 KiB: fits
    grpc::ClientContext ctx;
    csi::v1::ListVolumesResponse resp;
    EXPECT_TRUE(stub->ListVolumes(&ctx, {}, &resp).ok());
  }
  {
    controller.entries = 64;  // ~64 KiB: over the send limit
    grpc::ClientContext ctx;
    csi::v1::ListVolumesResponse resp;
    EXPECT_EQ(stub->ListVolumes(&ctx, {}, &resp).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  server_.reset();  // the server goes before the services it serves
}

class UmaskZero {
 public:
  UmaskZero() : old_(umask(0)) {}
  ~UmaskZero() { umask(old_); }

 private:
  mode_t old_;
};

// Issue 16 item 9: the socket was 0777 under umask 000.
TEST_F(PluginServerTest, SocketIsOwnerOnlyWhateverTheUmask) {
  UmaskZero umask0;
  BlockingIdentity identity;
  Start({&identity}, {});
  struct stat st;
  ASSERT_EQ(stat(Sock().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  server_.reset();  // the server goes before the services it serves
}

TEST_F(PluginServerTest, SocketGroupMakesIt0660WithThatGroup) {
  UmaskZero umask0;
  BlockingIdentity identity;
  PluginServerOptions opts;
  opts.socket_group = getgid();
  Start({&identity}, opts);
  struct stat st;
  ASSERT_EQ(stat(Sock().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, getgid());
  server_.reset();  // the server goes before the services it serves
}

// Idle connections used to stay forever (400 of them exhausted the fds). A
// connection that does not answer the server's keepalive ping (a dead peer,
// or a raw socket that never speaks HTTP/2) is closed; gRPC clients answer
// pings and keep theirs.
TEST_F(PluginServerTest, ConnectionsThatDoNotAnswerKeepalivePingsAreClosed) {
  BlockingIdentity identity;
  identity.Release();
  PluginServerOptions opts;
  opts.keepalive_time = absl::Milliseconds(300);
  opts.keepalive_timeout = absl::Milliseconds(300);
  Start({&identity}, opts);
  int raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, Sock().c_str(), Sock().size() + 1);
  ASSERT_EQ(connect(raw, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  auto stub = csi::v1::Identity::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    csi::v1::ProbeResponse resp;
    ASSERT_TRUE(stub->Probe(&ctx, {}, &resp).ok());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool closed = false;
  char buf[4096];
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    pollfd p{.fd = raw, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 100) == 1) closed = read(raw, buf, sizeof(buf)) <= 0;
  }
  close(raw);
  EXPECT_TRUE(closed) << "a connection that never answers pings stayed open";
  // The gRPC client's connection, idle as long, is the same one and works.
  EXPECT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  grpc::ClientContext ctx;
  csi::v1::ProbeResponse resp;
  EXPECT_TRUE(stub->Probe(&ctx, {}, &resp).ok());
  server_.reset();  // the server goes before the services it serves
}

// Issue 16 item 11: failed calls were not logged at all.
TEST_F(PluginServerTest, EveryFailedCallIsOneWarningWithIdsAndNoSecrets) {
  BigController controller;
  Start({&controller}, {});
  auto stub = csi::v1::Controller::NewStub(channel_);
  ublk_test::LogCapture logs;
  grpc::ClientContext ctx;
  csi::v1::DeleteVolumeRequest req;
  req.set_volume_id("vol-1\nE0101 00:00:00 forged line");
  (*req.mutable_secrets())["password"] = "hunter2";
  csi::v1::DeleteVolumeResponse resp;
  EXPECT_EQ(stub->DeleteVolume(&ctx, req, &resp).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING,
                       {"Controller/DeleteVolume",
                        "volume_id=\"vol-1\\nE0101 00:00:00 forged line\"", "UNIMPLEMENTED"}),
            1);
  for (const std::string& line : logs.AtLeast(google::GLOG_INFO)) {
    EXPECT_THAT(line, Not(HasSubstr("hunter2")));
    EXPECT_THAT(line, Not(HasSubstr("\n")));
  }
  server_.reset();  // the server goes before the services it serves
}

TEST_F(PluginServerTest, EveryCallIsLoggedAtDebugLevel) {
  BigController controller;
  Start({&controller}, {});
  auto stub = csi::v1::Controller::NewStub(channel_);
  const int old_v = FLAGS_v;
  FLAGS_v = 1;
  ublk_test::LogCapture logs;
  grpc::ClientContext ctx;
  csi::v1::ListVolumesRequest req;
  req.set_starting_token("t1");
  csi::v1::ListVolumesResponse resp;
  EXPECT_TRUE(stub->ListVolumes(&ctx, req, &resp).ok());
  FLAGS_v = old_v;
  EXPECT_EQ(
      logs.Count(google::GLOG_INFO, {"Controller/ListVolumes", "starting_token=\"t1\"", "started"}),
      1);
  EXPECT_EQ(
      logs.Count(google::GLOG_INFO, {"Controller/ListVolumes", "starting_token=\"t1\"", "ok in"}),
      1);
  EXPECT_EQ(logs.CountAtLeast(google::GLOG_WARNING), 0);
  server_.reset();  // the server goes before the services it serves
}

TEST(RpcLoggingTest, DescribesIdsIncludingNestedOnesAndNothingElse) {
  csi::v1::CreateVolumeRequest req;
  req.set_name("pvc-1");
  (*req.mutable_parameters())["fsType"] = "ext4";
  (*req.mutable_secrets())["token"] = "s3cret";
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("snap-9");
  EXPECT_EQ(DescribeRequestIds(req),
            " name=\"pvc-1\" volume_content_source.snapshot.snapshot_id=\"snap-9\"");
  csi::v1::NodePublishVolumeRequest pub;
  pub.set_volume_id("v");
  pub.set_staging_target_path("/s");
  pub.set_target_path("/t");
  (*pub.mutable_publish_context())["k"] = "x";
  EXPECT_EQ(DescribeRequestIds(pub),
            " volume_id=\"v\" staging_target_path=\"/s\" target_path=\"/t\"");
  csi::v1::CreateVolumeRequest huge;
  huge.set_name(std::string(100000, 'x'));
  EXPECT_LT(DescribeRequestIds(huge).size(), 200u);
}

// The accept loop survives accept failing (as with EMFILE): one WARNING when
// it stalls, one INFO when it resumes, the counter counts every failure, and
// the pending connection is served.
TEST(ListenerTest, AcceptFailuresStallAndRecoverWithOneLineEach) {
  ublk_test::TempDir dir;
  auto ep = ParseEndpoint("unix://" + dir.path() + "/l.sock");
  ASSERT_TRUE(ep.ok());
  std::atomic<int> fail_left{5};
  ListenerOptions opts;
  opts.max_backoff = absl::Milliseconds(40);
  opts.accept_fn = [&fail_left](int fd) {
    if (fail_left.fetch_sub(1) > 0) {
      errno = EMFILE;
      return -1;
    }
    return accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  };
  prometheus::Registry registry;
  ublk_test::LogCapture logs;
  auto listener = Listener::Bind(*ep, opts, &registry);
  ASSERT_TRUE(listener.ok()) << listener.status();
  ASSERT_TRUE((*listener)
                  ->Start([](int fd) {
                    (void)!write(fd, "hi", 2);
                    close(fd);
                  })
                  .ok());
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string path = dir.path() + "/l.sock";
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  pollfd p{.fd = c, .events = POLLIN, .revents = 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "the pending connection was never served";
  char buf[2];
  EXPECT_EQ(read(c, buf, 2), 2);
  close(c);
  (*listener)->Stop();
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"cannot accept connections", "Too many open files"}),
            1);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"accepting connections again", "after 5 failed"}), 1);
  prometheus::TextSerializer ser;
  std::string metrics = ser.Serialize(registry.Collect());
  EXPECT_THAT(metrics, HasSubstr("ublk_csi_grpc_accept_failures_total 5"));
  EXPECT_THAT(metrics, HasSubstr("ublk_csi_grpc_accept_stalled 0"));
}

// Identity as the plugin has it: Probe dials the plugin's own endpoint over
// a new connection (the liveness self-dial) from a serving thread.
class SelfDialingIdentity final : public csi::v1::Identity::Service {
 public:
  explicit SelfDialingIdentity(Endpoint ep) : ep_(std::move(ep)) {}
  grpc::Status GetPluginInfo(grpc::ServerContext*, const csi::v1::GetPluginInfoRequest*,
                             csi::v1::GetPluginInfoResponse* resp) override {
    resp->set_name("test.csi");
    resp->set_vendor_version("1");
    return grpc::Status::OK;
  }
  grpc::Status Probe(grpc::ServerContext*, const csi::v1::ProbeRequest*,
                     csi::v1::ProbeResponse*) override {
    absl::Status s = DialGetPluginInfo(ep_, absl::Seconds(10));
    return s.ok() ? grpc::Status::OK : grpc::Status(grpc::StatusCode::UNAVAILABLE, s.ToString());
  }

 private:
  Endpoint ep_;
};

// The conditions of the one csi-sanity run whose new connection did not
// become ready within 60 s, in process and sped up: many clients that each
// open a fresh connection (own subchannel pool, as csi-sanity's new process
// has), make one call and close it, so connections are accepted while
// others are torn down; self-dialing Probes from serving threads; and fork
// + exec of helper commands (mkfs, blkid) from another thread. Every call
// must complete, each within a bound far below csi-sanity's 60 s.
TEST_F(PluginServerTest, FreshConnectionsUnderChurnForkAndSelfDialAreServedPromptly) {
  auto ep = ParseEndpoint("unix://" + Sock());
  ASSERT_TRUE(ep.ok());
  SelfDialingIdentity identity(*ep);
  Start({&identity}, PluginServerOptions{});
  std::atomic<bool> stop{false};
  std::atomic<int> forks{0};
  std::thread forker([&] {
    while (!stop.load()) {
      if (RunCommand({"true"}).ok()) forks.fetch_add(1);
    }
  });
  const int kClients = 8;
  const int kCallsEach = 25;
  std::atomic<int> failed{0};
  std::atomic<int64_t> worst_ms{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kCallsEach; ++i) {
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
        auto stub = csi::v1::Identity::NewStub(
            grpc::CreateCustomChannel("unix:" + Sock(), grpc::InsecureChannelCredentials(), args));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
        const absl::Time t0 = absl::Now();
        grpc::Status s;
        if ((c + i) % 3 == 0) {
          csi::v1::ProbeResponse r;
          s = stub->Probe(&ctx, {}, &r);
        } else {
          csi::v1::GetPluginInfoResponse r;
          s = stub->GetPluginInfo(&ctx, {}, &r);
        }
        const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - t0);
        int64_t prev = worst_ms.load();
        while (ms > prev && !worst_ms.compare_exchange_weak(prev, ms)) {
        }
        if (!s.ok()) {
          failed.fetch_add(1);
          ADD_FAILURE() << "client " << c << " call " << i << ": " << s.error_message();
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  stop.store(true);
  forker.join();
  server_.reset();  // the server goes before the services it serves
  EXPECT_EQ(failed.load(), 0);
  EXPECT_LT(worst_ms.load(), 10000) << "a fresh connection waited for its first call";
  EXPECT_GT(forks.load(), 0);
  RecordProperty("worst_call_ms", static_cast<int>(worst_ms.load()));
  RecordProperty("forks", forks.load());
  std::cout << "worst call " << worst_ms.load() << " ms over " << kClients * kCallsEach
            << " fresh connections, " << forks.load() << " forks\n";
}

}  // namespace
}  // namespace ublk_csi
