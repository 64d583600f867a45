// RadosConnections on the fake cluster: one connection per (mon_host, user)
// shared by volumes, failed connects not cached, a bad (blocklisted)
// connection replaced, secrets never in errors or logs; the async
// completion queue under many posting threads; and the real librados
// client against monitors that do not answer.
#include "ublk/rbd_cluster.h"

#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "ublk/async_completion.h"
#include "ublk/mutex.h"
#include "ublk/rbd_target.h"
#include "ublk/ring.h"
#include "ublk/testing/fake_rbd.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSecret[] = "AQBtopsecretkeyvalue==";

// Collects every glog line (any severity) while it lives.
class LogCapture : public google::LogSink {
 public:
  LogCapture() { google::AddLogSink(this); }
  ~LogCapture() override { google::RemoveLogSink(this); }
  void send(google::LogSeverity, const char*, const char*, int, const struct ::tm*,
            const char* message, size_t len) override {
    ublk::MutexLock lock(&mu_);
    text_.append(message, len).append("\n");
  }
  std::string text() {
    ublk::MutexLock lock(&mu_);
    return text_;
  }

 private:
  ublk::Mutex mu_;
  std::string text_ ABSL_GUARDED_BY(mu_);
};

class RadosConnectionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_.SetUserKey("admin", kSecret);
    a_.CreatePool("rbd");
    ASSERT_TRUE(a_.CreateImage("rbd", "vol1", 1 << 20).ok());
    ASSERT_TRUE(a_.CreateImage("rbd", "vol2", 1 << 20).ok());
    b_.SetUserKey("admin", kSecret);
    b_.CreatePool("rbd");
    client_.AddCluster(&a_);
    client_.AddCluster(&b_);
  }
  RbdClusterConfig A() { return {a_.mon_host(), "admin", kSecret}; }

  FakeRbdCluster a_{"10.0.0.1"};
  FakeRbdCluster b_{"10.0.0.2,10.0.0.3"};
  FakeRbdClient client_;
};

TEST_F(RadosConnectionsTest, VolumesOnOneClusterShareOneConnection) {
  prometheus::Registry registry;
  RadosConnections connections(client_, {}, &registry);
  auto c1 = connections.Get(A());
  ASSERT_TRUE(c1.ok()) << c1.status();
  auto t1 = RbdTarget::Open(*c1, {"rbd", "", "vol1"});
  ASSERT_TRUE(t1.ok()) << t1.status();
  auto c2 = connections.Get(A());
  ASSERT_TRUE(c2.ok());
  auto t2 = RbdTarget::Open(*c2, {"rbd", "", "vol2"});
  ASSERT_TRUE(t2.ok()) << t2.status();
  EXPECT_EQ((*t1)->connection().get(), (*t2)->connection().get());
  EXPECT_EQ(a_.connects(), 1);
  EXPECT_EQ(connections.size(), 1u);
  // "client.admin" and "admin" are the same user.
  auto c3 = connections.Get({a_.mon_host(), "client.admin", kSecret});
  ASSERT_TRUE(c3.ok());
  EXPECT_EQ(c3->get(), c1->get());
  // Another cluster, another connection.
  auto other = connections.Get({b_.mon_host(), "admin", kSecret});
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->get(), c1->get());
  EXPECT_EQ(connections.size(), 2u);
  EXPECT_EQ(connections.connects(), 2u);

  // Cached connections nobody else holds are dropped; held ones stay.
  other->reset();
  EXPECT_EQ(connections.DropUnused(), 1u);
  EXPECT_EQ(connections.size(), 1u);
  // Destroying the registry leaves users' connections working.
  t1->reset();
}

TEST_F(RadosConnectionsTest, FailedConnectIsUnavailableAndNotCached) {
  RadosConnections connections(client_, {});
  a_.SetMonitorsUp(false);
  LogCapture logs;
  auto c = connections.Get(A());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(c.status().message(), HasSubstr("client.admin@10.0.0.1"));
  EXPECT_EQ(connections.size(), 0u);
  a_.SetMonitorsUp(true);
  c = connections.Get(A());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(client_.connect_calls(), 2);
  // Unknown monitors too.
  auto nowhere = connections.Get({"192.0.2.1", "admin", kSecret});
  EXPECT_EQ(nowhere.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(logs.text(), Not(HasSubstr(kSecret)));
}

TEST_F(RadosConnectionsTest, SecretsAreNeverInErrorsOrLogs) {
  RadosConnections connections(client_, {});
  LogCapture logs;
  auto bad = connections.Get({a_.mon_host(), "admin", "AQBwrongkey=="});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("AQBwrongkey")));
  auto good = connections.Get(A());
  ASSERT_TRUE(good.ok());
  (*good)->MarkBad("test");
  ASSERT_TRUE(connections.Get(A()).ok());
  const std::string text = logs.text();
  EXPECT_THAT(text, HasSubstr("client.admin@10.0.0.1"));  // it did log
  EXPECT_THAT(text, Not(HasSubstr("AQBwrongkey")));
  EXPECT_THAT(text, Not(HasSubstr(kSecret)));
}

TEST_F(RadosConnectionsTest, ConfigIsValidatedNamingTheField) {
  RadosConnections connections(client_, {});
  auto s = connections.Get({"", "admin", kSecret}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("mon_host"));
  s = connections.Get({"10.0.0.1", "", kSecret}).status();
  EXPECT_THAT(s.message(), HasSubstr("user"));
  s = connections.Get({"10.0.0.1", "admin", ""}).status();
  EXPECT_THAT(s.message(), HasSubstr("key"));
  s = connections.Get({"10.0.0.1", "ad min", kSecret}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_.connect_calls(), 0);
}

TEST_F(RadosConnectionsTest, BlocklistedConnectionIsReplacedAndOldUsersKeepTheirs) {
  RadosConnections connections(client_, {});
  auto c = connections.Get(A());
  ASSERT_TRUE(c.ok());
  auto t1 = RbdTarget::Open(*c, {"rbd", "", "vol1"});
  ASSERT_TRUE(t1.ok());
  a_.BlocklistClients();
  // The next open on it learns it was blocklisted and marks it bad.
  auto refused = RbdTarget::Open(*c, {"rbd", "", "vol2"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE((*c)->healthy());
  auto fresh = connections.Get(A());
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->get(), c->get());
  EXPECT_TRUE((*fresh)->healthy());
  EXPECT_EQ(connections.reconnects(), 1u);
  EXPECT_EQ(a_.connects(), 2);
  auto t2 = RbdTarget::Open(*fresh, {"rbd", "", "vol2"});
  ASSERT_TRUE(t2.ok()) << t2.status();
  // The old target still holds the old connection.
  EXPECT_EQ((*t1)->connection().get(), c->get());
  // Healthy now: Get keeps returning the new one.
  EXPECT_EQ(connections.Get(A())->get(), fresh->get());
}

TEST_F(RadosConnectionsTest, IoRefusedForABlocklistedClientMarksTheConnectionBad) {
  RadosConnections connections(client_, {});
  auto c = connections.Get(A());
  ASSERT_TRUE(c.ok());
  auto t = RbdTarget::Open(*c, {"rbd", "", "vol1"});
  ASSERT_TRUE(t.ok());
  a_.BlocklistClients();
  // Drive one I/O straight through the target with a completion queue of
  // our own, as a worker would.
  auto q = AsyncCompletionQueue::Create();
  ASSERT_TRUE(q.ok());
  AsyncCompletion done;
  (*q)->Prepare(done, 42);
  std::string buf(4096, '\0');
  TargetIo io{UBLK_IO_OP_READ, 0, 0, 4096, buf.data(), -1, &done};
  auto ring = Ring::Create(8);
  ASSERT_TRUE(ring.ok());
  auto started = (*t)->StartIo(**ring, io, 42);
  ASSERT_FALSE(started.has_value());
  int32_t result = 1;
  for (int i = 0; i < 1000 && result == 1; ++i) {
    (*q)->Drain([&](uint64_t ud, int32_t r) {
      EXPECT_EQ(ud, 42u);
      result = *(*t)->FinishIo(io, r);
    });
    if (result == 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(result, -EIO);
  EXPECT_FALSE((*c)->healthy());
  EXPECT_NE(connections.Get(A())->get(), c->get());
}

TEST_F(RadosConnectionsTest, ANewKeyForTheSameUserMakesANewConnection) {
  RadosConnections connections(client_, {});
  auto c = connections.Get(A());
  ASSERT_TRUE(c.ok());
  a_.SetUserKey("admin", "AQBrotated==");
  auto rotated = connections.Get({a_.mon_host(), "admin", "AQBrotated=="});
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_NE(rotated->get(), c->get());
  // The old key is refused now: no silent use of the cached connection.
  auto old = connections.Get(A());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(AsyncCompletionQueueTest, EveryPostFromManyThreadsIsDrainedOnceAndWakesTheFd) {
  auto q = AsyncCompletionQueue::Create();
  ASSERT_TRUE(q.ok());
  constexpr int kThreads = 4, kPerThread = 2000;
  std::vector<AsyncCompletion> completions(kThreads * kPerThread);
  for (size_t i = 0; i < completions.size(); ++i) (*q)->Prepare(completions[i], i);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        completions[t * kPerThread + i].Post(t * kPerThread + i + 1);
      }
    });
  }
  std::vector<int> seen(completions.size(), 0);
  size_t total = 0;
  while (total < completions.size()) {
    uint64_t count = 0;
    // Blocking read: the eventfd must have been written if anything is
    // pending (no lost wakeup).
    if (!(*q)->empty()) {
      ASSERT_EQ(read((*q)->fd(), &count, sizeof(count)), static_cast<ssize_t>(sizeof(count)));
    } else {
      std::this_thread::yield();
    }
    total += (*q)->Drain([&](uint64_t ud, int32_t r) {
      ASSERT_LT(ud, seen.size());
      EXPECT_EQ(r, static_cast<int32_t>(ud + 1));
      ++seen[ud];
    });
  }
  for (auto& th : threads) th.join();
  total += (*q)->Drain([&](uint64_t ud, int32_t) { ++seen[ud]; });
  EXPECT_EQ(total, completions.size());
  for (int s : seen) EXPECT_EQ(s, 1);
}

// The real client, without a cluster: monitors that do not answer are
// Unavailable within the connect timeout, and the key stays out of it.
TEST(LibradosClientTest, UnreachableMonitorsAreUnavailableWithinTheTimeout) {
  auto client = NewLibradosClient();
  RbdConnectOptions o;
  o.connect_timeout = absl::Seconds(1);
  LogCapture logs;
  const absl::Time start = absl::Now();
  // A cephx key must be valid base64 for librados to take it.
  auto c = client->Connect({"127.0.0.1:1", "admin", "AQDx3lxlAAAAABAAuJ+bS6n0v6D3RMYeN6vZ1w=="}, o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("client.admin@127.0.0.1:1"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("AQDx3lxl")));
  EXPECT_THAT(logs.text(), Not(HasSubstr("AQDx3lxl")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

}  // namespace
}  // namespace ublk
