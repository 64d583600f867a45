#include "ublk/testing/fake_rbd.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ublk {

class FakeRadosConnection final : public RadosConnection,
                                  public std::enable_shared_from_this<FakeRadosConnection> {
 public:
  FakeRadosConnection(std::string id, FakeRbdCluster* cluster, uint64_t serial,
                      absl::Duration op_timeout)
      : RadosConnection(std::move(id)),
        cluster_(cluster),
        serial_(serial),
        op_timeout_(op_timeout) {}

  absl::StatusOr<std::unique_ptr<RbdImage>> OpenImage(const std::string& pool,
                                                      const std::string& pool_namespace,
                                                      const std::string& image) override;
  absl::StatusOr<rados_ioctx_t> IoCtx(const std::string&, const std::string&) override {
    return absl::UnimplementedError("fake rados connection: no io context");
  }

  FakeRbdCluster* const cluster_;
  const uint64_t serial_;
  const absl::Duration op_timeout_;
};

class FakeRbdImage final : public RbdImage {
 public:
  FakeRbdImage(std::shared_ptr<FakeRadosConnection> connection,
               std::shared_ptr<FakeRbdCluster::Image> image)
      : connection_(std::move(connection)), image_(std::move(image)) {}
  ~FakeRbdImage() override {
    FakeRbdCluster* c = connection_->cluster_;
    ublk::MutexLock lock(&c->mu_);
    c->cv_.Wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) { return image_->pending == 0; });
    --image_->open_count;
  }

  absl::StatusOr<uint64_t> Size() override {
    ublk::MutexLock lock(&connection_->cluster_->mu_);
    if (image_->removed) return absl::NotFoundError("fake rbd: image removed");
    return image_->data.size();
  }
  int AioRead(uint64_t offset, size_t len, char* buf, AsyncCompletion* done) override {
    return Submit(FakeRbdCluster::Op::Kind::kRead, offset, len, buf, done);
  }
  int AioWrite(uint64_t offset, size_t len, const char* buf, AsyncCompletion* done) override {
    return Submit(FakeRbdCluster::Op::Kind::kWrite, offset, len, const_cast<char*>(buf), done);
  }
  int AioFlush(AsyncCompletion* done) override {
    return Submit(FakeRbdCluster::Op::Kind::kFlush, 0, 0, nullptr, done);
  }
  int AioDiscard(uint64_t offset, uint64_t len, AsyncCompletion* done) override {
    return Submit(FakeRbdCluster::Op::Kind::kDiscard, offset, len, nullptr, done);
  }
  int AioWriteZeroes(uint64_t offset, uint64_t len, AsyncCompletion* done) override {
    return Submit(FakeRbdCluster::Op::Kind::kWriteZeroes, offset, len, nullptr, done);
  }

 private:
  int Submit(FakeRbdCluster::Op::Kind kind, uint64_t offset, uint64_t len, char* buf,
             AsyncCompletion* done) {
    FakeRbdCluster::Op op;
    op.kind = kind;
    op.image = image_;
    op.offset = offset;
    op.len = len;
    op.buf = buf;
    op.done = done;
    op.client = connection_->serial_;
    return connection_->cluster_->Submit(std::move(op), connection_->op_timeout_);
  }

  const std::shared_ptr<FakeRadosConnection> connection_;
  const std::shared_ptr<FakeRbdCluster::Image> image_;
};

absl::StatusOr<std::unique_ptr<RbdImage>> FakeRadosConnection::OpenImage(
    const std::string& pool, const std::string& pool_namespace, const std::string& image) {
  std::shared_ptr<FakeRbdCluster::Image> img;
  {
    ublk::MutexLock lock(&cluster_->mu_);
    if (cluster_->Blocklisted(serial_)) {
      lock.Unlock();
      MarkBad("rbd_open: client blocklisted");
      return absl::UnavailableError(absl::StrCat("rbd cluster ", cluster_id(), ": open image ",
                                                 pool, "/", image, ": client blocklisted"));
    }
    absl::StatusOr<std::shared_ptr<FakeRbdCluster::Image>> found =
        cluster_->Find(pool_namespace.empty() ? pool : pool + "/" + pool_namespace, image);
    if (!found.ok()) {
      return absl::Status(found.status().code(), absl::StrCat("rbd cluster ", cluster_id(), ": ",
                                                              found.status().message()));
    }
    img = *found;
    ++img->open_count;
  }
  return std::unique_ptr<RbdImage>(new FakeRbdImage(shared_from_this(), std::move(img)));
}

FakeRbdCluster::FakeRbdCluster(std::string mon_host) : mon_host_(std::move(mon_host)) {
  {
    ublk::MutexLock lock(&mu_);
    keys_["client.admin"] = "secret";
  }
  osd_thread_ = std::thread([this] { OsdLoop(); });
  osd_thread_id_ = osd_thread_.get_id();
}

FakeRbdCluster::~FakeRbdCluster() {
  {
    ublk::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  osd_thread_.join();
}

void FakeRbdCluster::SetUserKey(const std::string& user, const std::string& key) {
  ublk::MutexLock lock(&mu_);
  keys_[absl::StartsWith(user, "client.") ? user : "client." + user] = key;
}

void FakeRbdCluster::CreatePool(const std::string& pool) {
  ublk::MutexLock lock(&mu_);
  pools_[pool];
}

absl::StatusOr<std::shared_ptr<FakeRbdCluster::Image>> FakeRbdCluster::Find(
    const std::string& pool, const std::string& image) {
  auto p = pools_.find(pool);
  if (p == pools_.end()) return absl::NotFoundError(absl::StrCat("pool ", pool, " not found"));
  auto i = p->second.find(image);
  if (i == p->second.end() || i->second->removed) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  return i->second;
}

absl::Status FakeRbdCluster::CreateImage(const std::string& pool, const std::string& image,
                                         uint64_t size) {
  ublk::MutexLock lock(&mu_);
  auto p = pools_.find(pool);
  if (p == pools_.end()) return absl::NotFoundError(absl::StrCat("pool ", pool, " not found"));
  auto& slot = p->second[image];
  if (slot != nullptr && !slot->removed) {
    return absl::AlreadyExistsError(absl::StrCat("image ", pool, "/", image, " exists"));
  }
  slot = std::make_shared<Image>();
  slot->data.assign(size, '\0');
  return absl::OkStatus();
}

absl::Status FakeRbdCluster::ResizeImage(const std::string& pool, const std::string& image,
                                         uint64_t size) {
  ublk::MutexLock lock(&mu_);
  absl::StatusOr<std::shared_ptr<Image>> img = Find(pool, image);
  if (!img.ok()) return img.status();
  (*img)->data.resize(size, '\0');
  return absl::OkStatus();
}

absl::Status FakeRbdCluster::RemoveImage(const std::string& pool, const std::string& image) {
  ublk::MutexLock lock(&mu_);
  absl::StatusOr<std::shared_ptr<Image>> img = Find(pool, image);
  if (!img.ok()) return img.status();
  if ((*img)->open_count > 0) {
    return absl::FailedPreconditionError(absl::StrCat("image ", pool, "/", image, " is open"));
  }
  (*img)->removed = true;
  pools_[pool].erase(image);
  return absl::OkStatus();
}

absl::StatusOr<std::string> FakeRbdCluster::ReadImage(const std::string& pool,
                                                      const std::string& image, uint64_t offset,
                                                      size_t len) {
  ublk::MutexLock lock(&mu_);
  absl::StatusOr<std::shared_ptr<Image>> img = Find(pool, image);
  if (!img.ok()) return img.status();
  if (offset + len > (*img)->data.size()) return absl::OutOfRangeError("past the image's end");
  return (*img)->data.substr(offset, len);
}

absl::Status FakeRbdCluster::WriteImage(const std::string& pool, const std::string& image,
                                        uint64_t offset, const std::string& data) {
  ublk::MutexLock lock(&mu_);
  absl::StatusOr<std::shared_ptr<Image>> img = Find(pool, image);
  if (!img.ok()) return img.status();
  if (offset + data.size() > (*img)->data.size()) {
    return absl::OutOfRangeError("past the image's end");
  }
  (*img)->data.replace(offset, data.size(), data);
  return absl::OkStatus();
}

void FakeRbdCluster::SetMonitorsUp(bool up) {
  ublk::MutexLock lock(&mu_);
  monitors_up_ = up;
}

void FakeRbdCluster::SetOsdsFrozen(bool frozen) {
  {
    ublk::MutexLock lock(&mu_);
    frozen_ = frozen;
  }
  cv_.NotifyAll();
}

void FakeRbdCluster::FailNextOps(int count, int err) {
  ublk::MutexLock lock(&mu_);
  fail_count_ = count;
  fail_err_ = err;
}

void FakeRbdCluster::BlocklistClients() {
  ublk::MutexLock lock(&mu_);
  blocklist_below_ = next_client_;
}

int FakeRbdCluster::connects() const {
  ublk::MutexLock lock(&mu_);
  return connects_;
}

uint64_t FakeRbdCluster::ops_completed() const {
  ublk::MutexLock lock(&mu_);
  return ops_completed_;
}

size_t FakeRbdCluster::ops_pending() const {
  ublk::MutexLock lock(&mu_);
  return queue_.size();
}

absl::StatusOr<uint64_t> FakeRbdCluster::Authenticate(const RbdClusterConfig& config) {
  ublk::MutexLock lock(&mu_);
  if (!monitors_up_) {
    return absl::UnavailableError(
        absl::StrCat("rbd cluster ", RbdClusterId(config), ": connect: Connection timed out"));
  }
  auto k =
      keys_.find(absl::StartsWith(config.user, "client.") ? config.user : "client." + config.user);
  if (k == keys_.end() || k->second != config.key) {
    return absl::PermissionDeniedError(
        absl::StrCat("rbd cluster ", RbdClusterId(config), ": connect: Permission denied"));
  }
  ++connects_;
  return next_client_++;
}

int FakeRbdCluster::Submit(Op op, absl::Duration op_timeout) {
  {
    ublk::MutexLock lock(&mu_);
    if (stopping_) return -ESHUTDOWN;
    if (op_timeout > absl::ZeroDuration()) op.deadline = absl::Now() + op_timeout;
    ++op.image->pending;
    queue_.push_back(std::move(op));
  }
  cv_.NotifyAll();
  return 0;
}

int64_t FakeRbdCluster::Execute(const Op& op) {
  if (Blocklisted(op.client)) return -ESHUTDOWN;
  if (op.image->removed) return -ENOENT;
  if (fail_count_ > 0) {
    --fail_count_;
    return fail_err_;
  }
  std::string& data = op.image->data;
  const uint64_t size = data.size();
  switch (op.kind) {
    case Op::Kind::kRead: {
      if (op.offset > size) return -EINVAL;
      const uint64_t n = std::min(op.len, size - op.offset);
      std::memcpy(op.buf, data.data() + op.offset, n);
      return static_cast<int64_t>(n);
    }
    case Op::Kind::kWrite:
      if (op.offset > size || op.len > size - op.offset) return -EINVAL;
      std::memcpy(data.data() + op.offset, op.buf, op.len);
      return 0;  // as librbd: a write completes with 0, a read with its bytes
    case Op::Kind::kDiscard:
    case Op::Kind::kWriteZeroes: {
      if (op.offset > size) return -EINVAL;
      const uint64_t n = std::min(op.len, size - op.offset);
      std::memset(data.data() + op.offset, 0, n);
      return 0;
    }
    case Op::Kind::kFlush:
      return 0;
  }
  return -EINVAL;
}

void FakeRbdCluster::OsdLoop() {
  ublk::MutexLock lock(&mu_);
  auto complete = [&](const Op& op, int64_t r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Posted before the op stops counting as pending: closing an image
    // waits until every callback has run, as librbd's close does.
    op.done->Post(static_cast<int32_t>(r));
    --op.image->pending;
    ++ops_completed_;
    cv_.NotifyAll();
  };
  for (;;) {
    if (stopping_) {
      while (!queue_.empty()) {
        Op op = std::move(queue_.front());
        queue_.pop_front();
        complete(op, -ESHUTDOWN);
      }
      return;
    }
    if (!frozen_ && !queue_.empty()) {
      Op op = std::move(queue_.front());
      queue_.pop_front();
      complete(op, Execute(op));
      continue;
    }
    // Frozen (or idle): fail the ops past their deadline, as the op timeout
    // would, and sleep until the next deadline.
    const absl::Time now = absl::Now();
    absl::Time next = absl::InfiniteFuture();
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->deadline <= now) {
        Op op = std::move(*it);
        it = queue_.erase(it);
        complete(op, -ETIMEDOUT);
      } else {
        next = std::min(next, it->deadline);
        ++it;
      }
    }
    if (next == absl::InfiniteFuture()) {
      cv_.Wait(lock);
    } else {
      cv_.WaitUntil(lock, absl::ToChronoTime(next));
    }
  }
}

void FakeRbdClient::AddCluster(FakeRbdCluster* cluster) {
  ublk::MutexLock lock(&mu_);
  clusters_[cluster->mon_host()] = cluster;
}

int FakeRbdClient::connect_calls() const {
  ublk::MutexLock lock(&mu_);
  return connect_calls_;
}

absl::StatusOr<std::shared_ptr<RadosConnection>> FakeRbdClient::Connect(
    const RbdClusterConfig& config, const RbdConnectOptions& options) {
  absl::Status valid = ValidateRbdClusterConfig(config);
  if (!valid.ok()) return valid;
  FakeRbdCluster* cluster = nullptr;
  {
    ublk::MutexLock lock(&mu_);
    ++connect_calls_;
    auto it = clusters_.find(config.mon_host);
    if (it != clusters_.end()) cluster = it->second;
  }
  if (cluster == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("rbd cluster ", RbdClusterId(config), ": connect: no monitor answers"));
  }
  absl::StatusOr<uint64_t> serial = cluster->Authenticate(config);
  if (!serial.ok()) return serial.status();
  return std::shared_ptr<RadosConnection>(std::make_shared<FakeRadosConnection>(
      RbdClusterId(config), cluster, *serial, options.op_timeout));
}

}  // namespace ublk
