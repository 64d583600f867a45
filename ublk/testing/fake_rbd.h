// An in-memory Ceph cluster behind the RbdClient seam, for unit tests of the
// RBD target and of csi/ code that stages RBD volumes. Like librbd, it
// completes every aio op on a thread of its own (one "OSD" thread per
// cluster), never on the caller's; it clips reads at the image's end and
// refuses writes past it (EINVAL), as librbd does.
// Faults a test can force: monitors down (Connect is Unavailable), a wrong
// cephx key (PermissionDenied), frozen OSDs (ops wait; with the connection's
// op timeout they fail with ETIMEDOUT as rados_osd_op_timeout makes them),
// injected op errors, and blocklisting every current client (their ops and
// opens fail with ESHUTDOWN, as EBLOCKLISTED does).
// Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ublk/mutex.h"
#include "ublk/rbd_cluster.h"

namespace ublk {

class FakeRbdCluster {
 public:
  // A cluster reachable at `mon_host` with user "admin" (key "secret").
  explicit FakeRbdCluster(std::string mon_host);
  // Fails the ops still pending with ESHUTDOWN and ends the OSD thread.
  ~FakeRbdCluster();

  const std::string& mon_host() const { return mon_host_; }
  void SetUserKey(const std::string& user, const std::string& key);
  void CreatePool(const std::string& pool);
  // AlreadyExists, NotFound for the pool.
  absl::Status CreateImage(const std::string& pool, const std::string& image, uint64_t size);
  absl::Status ResizeImage(const std::string& pool, const std::string& image, uint64_t size);
  absl::Status RemoveImage(const std::string& pool, const std::string& image);
  absl::StatusOr<std::string> ReadImage(const std::string& pool, const std::string& image,
                                        uint64_t offset, size_t len);
  absl::Status WriteImage(const std::string& pool, const std::string& image, uint64_t offset,
                          const std::string& data);

  // Faults.
  void SetMonitorsUp(bool up);
  void SetOsdsFrozen(bool frozen);
  // The next `count` ops complete with `err` (negative errno) without effect.
  void FailNextOps(int count, int err);
  // Every connection made so far is blocklisted.
  void BlocklistClients();

  int connects() const;  // successful connects
  uint64_t ops_completed() const;
  size_t ops_pending() const;
  // The thread that completes ops.
  std::thread::id osd_thread_id() const { return osd_thread_id_; }

 private:
  friend class FakeRbdClient;
  friend class FakeRadosConnection;
  friend class FakeRbdImage;
  struct Image {
    std::string data;
    bool removed = false;
    int open_count = 0;
    int pending = 0;  // ops not completed yet
  };
  struct Op {
    enum class Kind { kRead, kWrite, kFlush, kDiscard, kWriteZeroes } kind;
    std::shared_ptr<Image> image;
    uint64_t offset = 0;
    uint64_t len = 0;
    char* buf = nullptr;
    AsyncCompletion* done = nullptr;
    uint64_t client = 0;  // connection serial (blocklisting)
    absl::Time deadline = absl::InfiniteFuture();
  };

  absl::StatusOr<uint64_t> Authenticate(const RbdClusterConfig& config);
  absl::StatusOr<std::shared_ptr<Image>> Find(const std::string& pool, const std::string& image)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int Submit(Op op, absl::Duration op_timeout);
  bool Blocklisted(uint64_t client) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return client < blocklist_below_;
  }
  // Runs `op` against its image; the result to post.
  int64_t Execute(const Op& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OsdLoop();

  const std::string mon_host_;
  mutable ublk::Mutex mu_;
  ublk::CondVar cv_;
  std::map<std::string, std::string> keys_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<std::string, std::shared_ptr<Image>>> pools_ ABSL_GUARDED_BY(mu_);
  std::deque<Op> queue_ ABSL_GUARDED_BY(mu_);
  bool monitors_up_ ABSL_GUARDED_BY(mu_) = true;
  bool frozen_ ABSL_GUARDED_BY(mu_) = false;
  int fail_count_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_err_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_client_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t blocklist_below_ ABSL_GUARDED_BY(mu_) = 0;
  int connects_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ops_completed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread osd_thread_;
  std::thread::id osd_thread_id_;
};

class FakeRbdClient final : public RbdClient {
 public:
  // Clusters must outlive the client and every connection it made.
  void AddCluster(FakeRbdCluster* cluster);
  absl::StatusOr<std::shared_ptr<RadosConnection>> Connect(
      const RbdClusterConfig& config, const RbdConnectOptions& options) override;
  int connect_calls() const;

 private:
  mutable ublk::Mutex mu_;
  std::map<std::string, FakeRbdCluster*> clusters_ ABSL_GUARDED_BY(mu_);
  int connect_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ublk
