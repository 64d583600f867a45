// The seam over what the engine calls in librados/librbd (Ceph's C API,
// Debian 16.2.x), and the node-wide registry of rados connections: one
// connection per cluster (mon_host, user), shared by every volume and admin
// call on it, re-made when it goes bad. RbdClient is the seam (a real one on
// librados here, an in-memory fake in ublk/testing/fake_rbd.h); nothing else
// in the engine includes librbd.h.
//
// Secrets: RbdClusterConfig::key is a cephx secret. It is never logged, never
// put in a Status message, never in a metric label; cluster_id() names a
// cluster in logs without it.
//
// Threads: RadosConnections and RadosConnection are thread-safe. RbdImage's
// Aio* calls may be made from any thread (a worker's); their callbacks run on
// a librbd thread (or, for an error found at submission, on the caller's).
#pragma once

#include <rados/librados.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ublk/async_completion.h"
#include "ublk/mutex.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace ublk {

// Which cluster and who we are on it. Two volumes with the same (mon_host,
// user) share one connection.
// A librados/librbd errno (either sign) as a Status naming `what`, with the
// code callers act on: NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED (cephx),
// UNAVAILABLE (monitors, network, timeouts, blocklisted), INVALID_ARGUMENT,
// FAILED_PRECONDITION (busy, read-only, not empty), RESOURCE_EXHAUSTED,
// else INTERNAL. One mapping for the engine and the CSI admin calls.
absl::Status RadosError(int err, absl::string_view what);

struct RbdClusterConfig {
  std::string mon_host;  // "10.0.0.1:6789,10.0.0.2" (as ceph.conf's mon_host)
  std::string user;      // cephx id: "admin" (or "client.admin")
  std::string key;       // cephx secret (base64): never logged
};

// "client.<user>@<mon_host>": how logs and errors name a cluster (no key).
std::string RbdClusterId(const RbdClusterConfig& config);
// InvalidArgument naming the empty field (mon_host, user, key) or a user with
// whitespace.
absl::Status ValidateRbdClusterConfig(const RbdClusterConfig& config);

struct RbdConnectOptions {
  // How long connecting may take (librados client_mount_timeout and
  // rados_mon_op_timeout): a cluster whose monitors do not answer in this
  // time is Unavailable.
  absl::Duration connect_timeout = absl::Seconds(10);
  // The bounded op timeout (librados rados_osd_op_timeout): an OSD op that
  // has not completed after this long fails with ETIMEDOUT (RbdTarget turns
  // it into EIO on that one I/O and counts it). Zero: wait forever (Ceph's
  // default; a frozen OSD then hangs the I/O until it comes back).
  absl::Duration op_timeout = absl::Seconds(120);  // --rbd-op-timeout's default (csi/main.cc)
  // librbd's writeback cache (rbd_cache). Off by default: a write then is
  // durable when it completes (as krbd), so FUA needs nothing more.
  bool rbd_cache = false;
};

// One open image. Destroying it closes the image, which waits for the ops in
// flight (all of them have posted their completion when it returns).
class RbdImage {
 public:
  virtual ~RbdImage() = default;

  // The image size now (librbd refreshes it when another client resizes).
  virtual absl::StatusOr<uint64_t> Size() = 0;
  // Each returns 0 when the op was started: `done` is then posted exactly
  // once, from a librbd thread, with librbd's result (bytes for a read; 0
  // for a write and the others, as librbd gives; or -errno); or -errno when
  // it was not started
  // (`done` is not posted). `buf` must stay valid until `done` is posted.
  virtual int AioRead(uint64_t offset, size_t len, char* buf, AsyncCompletion* done) = 0;
  virtual int AioWrite(uint64_t offset, size_t len, const char* buf, AsyncCompletion* done) = 0;
  virtual int AioFlush(AsyncCompletion* done) = 0;
  virtual int AioDiscard(uint64_t offset, uint64_t len, AsyncCompletion* done) = 0;
  virtual int AioWriteZeroes(uint64_t offset, uint64_t len, AsyncCompletion* done) = 0;
};

// One rados client (rados_t) on one cluster, with an io context per pool
// opened on first use. Held by shared_ptr: the registry and every image
// opened through it (an image keeps its connection alive).
class RadosConnection {
 public:
  explicit RadosConnection(std::string cluster_id) : cluster_id_(std::move(cluster_id)) {}
  virtual ~RadosConnection() = default;
  RadosConnection(const RadosConnection&) = delete;
  RadosConnection& operator=(const RadosConnection&) = delete;

  // Opens `pool`/`image` (pool_namespace "" is the default namespace).
  // NotFound naming the pool or image; PermissionDenied for cephx refusal;
  // Unavailable when the cluster does not answer; the connection is marked
  // bad when librados says this client was blocklisted (ESHUTDOWN).
  virtual absl::StatusOr<std::unique_ptr<RbdImage>> OpenImage(const std::string& pool,
                                                              const std::string& pool_namespace,
                                                              const std::string& image) = 0;
  // The pool's io context for admin calls (csi/rbd_admin on librbd: create,
  // remove, snapshot, clone, resize). Owned by the connection: valid while
  // it lives (hold the shared_ptr). NotFound for a missing pool;
  // Unimplemented on a fake connection.
  virtual absl::StatusOr<rados_ioctx_t> IoCtx(const std::string& pool,
                                              const std::string& pool_namespace) = 0;

  // Whether new users should get this connection. False once MarkBad was
  // called (by a user that saw ESHUTDOWN/EBLOCKLISTED, or a cephx failure on
  // an established client); RadosConnections::Get then makes a new one. Users
  // that still hold this one keep it (their images go on or fail on their own).
  bool healthy() const { return healthy_.load(std::memory_order_acquire); }
  // Logs `why` once (the first call); never the key.
  void MarkBad(absl::string_view why);
  const std::string& cluster_id() const { return cluster_id_; }

 private:
  const std::string cluster_id_;
  std::atomic<bool> healthy_{true};
};

// Connects to clusters: the seam. The real one is librados.
class RbdClient {
 public:
  virtual ~RbdClient() = default;
  // A new connection. InvalidArgument for a bad config (naming the field);
  // Unavailable when the monitors do not answer within the connect timeout;
  // PermissionDenied when cephx refuses user/key. The message names the
  // cluster by RbdClusterId, never the key.
  virtual absl::StatusOr<std::shared_ptr<RadosConnection>> Connect(
      const RbdClusterConfig& config, const RbdConnectOptions& options) = 0;
};

// librados/librbd.
std::unique_ptr<RbdClient> NewLibradosClient();

// The node's connections, one per (mon_host, user). main() makes one and
// passes it down (csi/ stage and admin calls, ublk-tool --rbd).
//   ublk_csi_rbd_connections              connections held now
//   ublk_csi_rbd_connects_total{result="ok|error"}
//   ublk_csi_rbd_reconnects_total         a bad connection replaced
class RadosConnections {
 public:
  // `client` must outlive this; `registry` nullable.
  RadosConnections(RbdClient& client, RbdConnectOptions options,
                   prometheus::Registry* registry = nullptr);
  ~RadosConnections();

  // The connection for config's cluster: the cached one if it is healthy
  // and was made with the same key, else a new one (which replaces the
  // cached one; users of the old one keep it). A failed connect is not
  // cached: the next Get tries again. Connecting happens under a
  // per-registry lock, so concurrent Gets for one cluster connect once.
  absl::StatusOr<std::shared_ptr<RadosConnection>> Get(const RbdClusterConfig& config);

  // Drops cached connections nobody else holds (e.g. after the last volume
  // of a cluster was unstaged). Returns how many.
  size_t DropUnused();
  size_t size() const;
  uint64_t connects() const { return connects_.load(std::memory_order_relaxed); }
  uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }
  const RbdConnectOptions& options() const { return options_; }

 private:
  struct Entry {
    std::string key;  // to notice a rotated secret; never logged
    std::shared_ptr<RadosConnection> connection;
  };
  void UpdateGauge() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RbdClient& client_;
  const RbdConnectOptions options_;
  mutable ublk::Mutex mu_;
  std::map<std::pair<std::string, std::string>, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> connects_{0};
  std::atomic<uint64_t> reconnects_{0};
  prometheus::Gauge* connections_gauge_ = nullptr;
  prometheus::Counter* connects_ok_ = nullptr;
  prometheus::Counter* connects_error_ = nullptr;
  prometheus::Counter* reconnects_counter_ = nullptr;
};

}  // namespace ublk
