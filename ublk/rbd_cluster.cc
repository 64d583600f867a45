#include "ublk/rbd_cluster.h"

#include <cerrno>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/errno.h"
#include "ublk/rbd_api.h"
#include "ublk/status_macros.h"

namespace ublk {
namespace {

std::string ClientName(const std::string& user) {
  return absl::StartsWith(user, "client.") ? user : absl::StrCat("client.", user);
}

// Seconds for a librados duration option (whole seconds, at least 1; "0"
// for a zero duration, which librados reads as "no timeout").
std::string Seconds(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return "0";
  return std::to_string(
      std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1)))));
}

// librbd completion -> the AsyncCompletion the caller gave. Runs on a
// librbd thread.
void PostRbdCompletion(rbd_completion_t c, void* arg) {
  // A completion exists only on a loaded library: this is the cached load
  // (one atomic load), which cannot fail here.
  absl::StatusOr<const RbdApi*> rbd = LoadRbdApi();
  if (!rbd.ok()) {
    static_cast<AsyncCompletion*>(arg)->Post(-EIO);
    return;
  }
  const ssize_t r = (*rbd)->rbd_aio_get_return_value(c);
  (*rbd)->rbd_aio_release(c);
  // Reads and writes are at most a ublk request (< 2 GiB): the result fits.
  const int32_t res = r > std::numeric_limits<int32_t>::max() ? std::numeric_limits<int32_t>::max()
                      : r < std::numeric_limits<int32_t>::min() ? -EIO
                                                                : static_cast<int32_t>(r);
  static_cast<AsyncCompletion*>(arg)->Post(res);
}

class LibradosConnection;

class LibrbdImage final : public RbdImage {
 public:
  LibrbdImage(const RbdApi& rbd, std::shared_ptr<RadosConnection> connection, rbd_image_t image)
      : rbd_(rbd), connection_(std::move(connection)), image_(image) {}
  ~LibrbdImage() override {
    int r = rbd_.rbd_close(image_);
    if (r < 0) {
      LOG(WARNING) << "rbd cluster " << connection_->cluster_id()
                   << ": closing an image: " << ublk::Errno(-r);
    }
  }

  absl::StatusOr<uint64_t> Size() override {
    uint64_t size = 0;
    int r = rbd_.rbd_get_size(image_, &size);
    if (r < 0) return RadosError(r, "rbd_get_size");
    return size;
  }

  int AioRead(uint64_t offset, size_t len, char* buf, AsyncCompletion* done) override {
    return Start(
        done, [&](rbd_completion_t c) { return rbd_.rbd_aio_read(image_, offset, len, buf, c); });
  }
  int AioWrite(uint64_t offset, size_t len, const char* buf, AsyncCompletion* done) override {
    return Start(
        done, [&](rbd_completion_t c) { return rbd_.rbd_aio_write(image_, offset, len, buf, c); });
  }
  int AioFlush(AsyncCompletion* done) override {
    return Start(done, [&](rbd_completion_t c) { return rbd_.rbd_aio_flush(image_, c); });
  }
  int AioDiscard(uint64_t offset, uint64_t len, AsyncCompletion* done) override {
    return Start(done,
                 [&](rbd_completion_t c) { return rbd_.rbd_aio_discard(image_, offset, len, c); });
  }
  int AioWriteZeroes(uint64_t offset, uint64_t len, AsyncCompletion* done) override {
    return Start(done, [&](rbd_completion_t c) {
      return rbd_.rbd_aio_write_zeroes(image_, offset, len, c, /*zero_flags=*/0, /*op_flags=*/0);
    });
  }

 private:
  template <typename F>
  int Start(AsyncCompletion* done, F&& submit) {
    rbd_completion_t c = nullptr;
    int r = rbd_.rbd_aio_create_completion(done, PostRbdCompletion, &c);
    if (r < 0) return r;
    r = static_cast<int>(submit(c));
    if (r < 0) {
      // Not started: librbd will not call back.
      rbd_.rbd_aio_release(c);
      return r;
    }
    return 0;
  }

  const RbdApi& rbd_;
  const std::shared_ptr<RadosConnection> connection_;  // outlives the image
  rbd_image_t image_;
};

class LibradosConnection final : public RadosConnection,
                                 public std::enable_shared_from_this<LibradosConnection> {
 public:
  LibradosConnection(const RbdApi& rbd, std::string cluster_id, rados_t cluster)
      : RadosConnection(std::move(cluster_id)), rbd_(rbd), cluster_(cluster) {}
  ~LibradosConnection() override {
    {
      ublk::MutexLock lock(&mu_);
      for (auto& [name, io] : ioctxs_) rbd_.rados_ioctx_destroy(io);
      ioctxs_.clear();
    }
    rbd_.rados_shutdown(cluster_);
  }

  absl::StatusOr<rados_ioctx_t> IoCtx(const std::string& pool,
                                      const std::string& pool_namespace) override {
    if (pool.empty()) return absl::InvalidArgumentError("rbd: empty pool name");
    ublk::MutexLock lock(&mu_);
    auto key = std::make_pair(pool, pool_namespace);
    auto it = ioctxs_.find(key);
    if (it != ioctxs_.end()) return it->second;
    rados_ioctx_t io = nullptr;
    int r = rbd_.rados_ioctx_create(cluster_, pool.c_str(), &io);
    if (r < 0) {
      if (r == -ESHUTDOWN) MarkBad("rados_ioctx_create: client blocklisted");
      return RadosError(r, absl::StrCat("rbd cluster ", cluster_id(), ": pool ", pool));
    }
    rbd_.rados_ioctx_set_namespace(io, pool_namespace.empty() ? nullptr : pool_namespace.c_str());
    ioctxs_.emplace(key, io);
    return io;
  }

  absl::StatusOr<std::unique_ptr<RbdImage>> OpenImage(const std::string& pool,
                                                      const std::string& pool_namespace,
                                                      const std::string& image) override {
    if (image.empty()) return absl::InvalidArgumentError("rbd: empty image name");
    ASSIGN_OR_RETURN(rados_ioctx_t io, IoCtx(pool, pool_namespace));
    rbd_image_t img = nullptr;
    int r = rbd_.rbd_open(io, image.c_str(), &img, nullptr);
    if (r < 0) {
      if (r == -ESHUTDOWN) MarkBad("rbd_open: client blocklisted");
      return RadosError(r, absl::StrCat("rbd cluster ", cluster_id(), ": open image ", pool, "/",
                                        pool_namespace.empty() ? "" : pool_namespace + "/", image));
    }
    return std::unique_ptr<RbdImage>(new LibrbdImage(rbd_, shared_from_this(), img));
  }

 private:
  const RbdApi& rbd_;
  rados_t cluster_;
  ublk::Mutex mu_;
  std::map<std::pair<std::string, std::string>, rados_ioctx_t> ioctxs_ ABSL_GUARDED_BY(mu_);
};

class LibradosClient final : public RbdClient {
 public:
  absl::StatusOr<std::shared_ptr<RadosConnection>> Connect(
      const RbdClusterConfig& config, const RbdConnectOptions& options) override {
    RETURN_IF_ERROR(ValidateRbdClusterConfig(config));
    const std::string id = RbdClusterId(config);
    ASSIGN_OR_RETURN(const RbdApi* api, LoadRbdApi());
    const RbdApi& rbd = *api;
    rados_t cluster = nullptr;
    int r = rbd.rados_create2(&cluster, "ceph", ClientName(config.user).c_str(), 0);
    if (r < 0) return RadosError(r, absl::StrCat("rbd cluster ", id, ": rados_create2"));
    const std::string connect_s = Seconds(options.connect_timeout);
    // Option values other than the key may appear in errors; the key never.
    const std::pair<const char*, std::string> conf[] = {
        {"mon_host", config.mon_host},
        {"key", config.key},
        {"client_mount_timeout", connect_s},
        {"rados_mon_op_timeout", connect_s},
        {"rados_osd_op_timeout", Seconds(options.op_timeout)},
        {"rbd_cache", options.rbd_cache ? "true" : "false"},
        {"log_to_stderr", "false"},
        {"err_to_stderr", "true"},
    };
    for (const auto& [name, value] : conf) {
      r = rbd.rados_conf_set(cluster, name, value.c_str());
      if (r < 0) {
        rbd.rados_shutdown(cluster);
        return RadosError(r, absl::StrCat("rbd cluster ", id, ": setting ", name));
      }
    }
    r = rbd.rados_connect(cluster);
    if (r < 0) {
      rbd.rados_shutdown(cluster);
      absl::Status s =
          RadosError(r, absl::StrCat("rbd cluster ", id, ": connect (timeout ", connect_s, " s)"));
      if (r == -EINVAL || r == -ENOENT) {
        // librados says EINVAL/ENOENT for unusable monitor addresses.
        s = absl::UnavailableError(s.message());
      }
      return s;
    }
    return std::shared_ptr<RadosConnection>(std::make_shared<LibradosConnection>(rbd, id, cluster));
  }
};

}  // namespace

absl::Status RadosError(int err, absl::string_view what) {
  err = err < 0 ? -err : err;
  const std::string msg = absl::StrCat(what, ": ", Errno(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ETIMEDOUT:
    case ESHUTDOWN:  // EBLOCKLISTED in the C API
    case ECONNREFUSED:
    case ENOTCONN:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return absl::UnavailableError(msg);
    case EINVAL:
    case ERANGE:
      return absl::InvalidArgumentError(msg);
    case EROFS:
    case EBUSY:
    case ENOTEMPTY:
      return absl::FailedPreconditionError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

std::string RbdClusterId(const RbdClusterConfig& config) {
  return absl::StrCat(ClientName(config.user), "@", config.mon_host);
}

absl::Status ValidateRbdClusterConfig(const RbdClusterConfig& config) {
  if (config.mon_host.empty()) return absl::InvalidArgumentError("rbd cluster: empty mon_host");
  if (config.user.empty()) return absl::InvalidArgumentError("rbd cluster: empty user");
  if (config.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rbd cluster ", RbdClusterId(config), ": empty key"));
  }
  for (char c : config.user) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) || c == '\0') {
      return absl::InvalidArgumentError("rbd cluster: user contains whitespace");
    }
  }
  return absl::OkStatus();
}

void RadosConnection::MarkBad(absl::string_view why) {
  if (healthy_.exchange(false, std::memory_order_acq_rel)) {
    LOG(WARNING) << "rbd cluster " << cluster_id_ << ": connection marked bad (" << why
                 << "); the next user gets a new one";
  }
}

std::unique_ptr<RbdClient> NewLibradosClient() { return std::make_unique<LibradosClient>(); }

RadosConnections::RadosConnections(RbdClient& client, RbdConnectOptions options,
                                   prometheus::Registry* registry)
    : client_(client), options_(options) {
  if (registry == nullptr) return;
  connections_gauge_ = &prometheus::BuildGauge()
                            .Name("ublk_csi_rbd_connections")
                            .Help("rados connections held (one per Ceph cluster and user)")
                            .Register(*registry)
                            .Add({});
  auto& connects = prometheus::BuildCounter()
                       .Name("ublk_csi_rbd_connects_total")
                       .Help("connection attempts to Ceph clusters, by result")
                       .Register(*registry);
  connects_ok_ = &connects.Add({{"result", "ok"}});
  connects_error_ = &connects.Add({{"result", "error"}});
  reconnects_counter_ = &prometheus::BuildCounter()
                             .Name("ublk_csi_rbd_reconnects_total")
                             .Help("bad rados connections replaced by a new one")
                             .Register(*registry)
                             .Add({});
}

RadosConnections::~RadosConnections() = default;

absl::StatusOr<std::shared_ptr<RadosConnection>> RadosConnections::Get(
    const RbdClusterConfig& config) {
  RETURN_IF_ERROR(ValidateRbdClusterConfig(config));
  ublk::MutexLock lock(&mu_);
  const auto key = std::make_pair(config.mon_host, ClientName(config.user));
  auto it = entries_.find(key);
  bool replacing = false;
  if (it != entries_.end()) {
    if (it->second.connection->healthy() && it->second.key == config.key) {
      return it->second.connection;
    }
    replacing = true;
  }
  connects_.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<std::shared_ptr<RadosConnection>> c = client_.Connect(config, options_);
  if (!c.ok()) {
    if (connects_error_ != nullptr) connects_error_->Increment();
    LOG(WARNING) << "rbd cluster " << RbdClusterId(config) << ": cannot connect: " << c.status();
    return c.status();
  }
  if (connects_ok_ != nullptr) connects_ok_->Increment();
  if (replacing) {
    const bool was_healthy = it->second.connection->healthy();
    reconnects_.fetch_add(1, std::memory_order_relaxed);
    if (reconnects_counter_ != nullptr) reconnects_counter_->Increment();
    LOG(INFO) << "rbd cluster " << RbdClusterId(config) << ": new connection replaces the "
              << (was_healthy ? "one made with another key" : "bad one");
    it->second = Entry{config.key, *c};
  } else {
    LOG(INFO) << "rbd cluster " << RbdClusterId(config) << ": connected";
    entries_.emplace(key, Entry{config.key, *c});
  }
  UpdateGauge();
  return *c;
}

size_t RadosConnections::DropUnused() {
  ublk::MutexLock lock(&mu_);
  size_t n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.connection.use_count() == 1) {
      it = entries_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  UpdateGauge();
  return n;
}

size_t RadosConnections::size() const {
  ublk::MutexLock lock(&mu_);
  return entries_.size();
}

void RadosConnections::UpdateGauge() {
  if (connections_gauge_ != nullptr) connections_gauge_->Set(static_cast<double>(entries_.size()));
}

}  // namespace ublk
