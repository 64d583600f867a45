#include "csi/fake_rbd_admin.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ublk_csi {

namespace {
std::string Key(const std::string& pool, const std::string& image) {
  return absl::StrCat(pool, "/", image);
}
}  // namespace

void FakeRbdCluster::AddUser(const std::string& user, const std::string& key) {
  ublk::MutexLock l(&mu_);
  users_[user] = key;
}

void FakeRbdCluster::SetReachable(bool reachable) {
  ublk::MutexLock l(&mu_);
  reachable_ = reachable;
}

void FakeRbdCluster::FailNext(const std::string& op, absl::Status status) {
  ublk::MutexLock l(&mu_);
  fail_next_[op] = std::move(status);
}

bool FakeRbdCluster::HasImage(const std::string& pool, const std::string& image) const {
  ublk::MutexLock l(&mu_);
  return images_.count(Key(pool, image)) != 0;
}

std::optional<FakeRbdCluster::Image> FakeRbdCluster::GetImage(const std::string& pool,
                                                              const std::string& image) const {
  ublk::MutexLock l(&mu_);
  auto it = images_.find(Key(pool, image));
  if (it == images_.end()) return std::nullopt;
  return it->second;
}

int FakeRbdCluster::trash_size() const {
  ublk::MutexLock l(&mu_);
  return static_cast<int>(trash_.size());
}

absl::Status FakeRbdCluster::Check(const RbdAccess& a, const std::string& pool, const char* op) {
  if (auto it = fail_next_.find(op); it != fail_next_.end()) {
    absl::Status s = std::move(it->second);
    fail_next_.erase(it);
    return s;
  }
  if (!reachable_ || a.monitors != monitors_) {
    return absl::UnavailableError(
        absl::StrCat("rados connect to ", a.monitors, ": timed out (monitors unreachable)"));
  }
  auto u = users_.find(a.creds.user);
  if (u == users_.end() || u->second != a.creds.key) {
    return absl::PermissionDeniedError(
        absl::StrCat("rados connect as client.", a.creds.user, ": cephx authentication failed"));
  }
  if (pools_.count(pool) == 0)
    return absl::NotFoundError(absl::StrCat("pool ", pool, " not found"));
  return absl::OkStatus();
}

FakeRbdAdmin::FakeRbdAdmin(FakeRbdCluster* cluster) : cluster_(cluster) {
  ublk::MutexLock l(&cluster_->mu_);
  client_ = absl::StrCat("client.", cluster_->next_client_++);
}

absl::StatusOr<RbdImageInfo> FakeRbdAdmin::Stat(const RbdAccess& access, const std::string& pool,
                                                const std::string& image) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "stat"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  RbdImageInfo info;
  info.size_bytes = it->second.size;
  info.features = it->second.features;
  info.has_parent = !it->second.parent.empty();
  info.snapshot_count = static_cast<int>(it->second.snaps.size());
  return info;
}

absl::Status FakeRbdAdmin::Create(const RbdAccess& access, const RbdLocation& loc,
                                  const std::string& image, int64_t size_bytes) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, loc.pool, "create"); !s.ok()) return s;
  if (!loc.data_pool.empty() && cluster_->pools_.count(loc.data_pool) == 0) {
    return absl::NotFoundError(absl::StrCat("data pool ", loc.data_pool, " not found"));
  }
  auto [it, inserted] = cluster_->images_.try_emplace(Key(loc.pool, image));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("image ", loc.pool, "/", image, " exists"));
  }
  it->second.size = size_bytes;
  it->second.features = loc.features;
  it->second.data_pool = loc.data_pool;
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::Remove(const RbdAccess& access, const std::string& pool,
                                  const std::string& image) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "remove"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) return absl::OkStatus();
  // The trash keeps an image with snapshots (librbd's purge would refuse it).
  if (!it->second.snaps.empty()) cluster_->trash_.push_back(it->second);
  cluster_->images_.erase(it);
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::Resize(const RbdAccess& access, const std::string& pool,
                                  const std::string& image, int64_t size_bytes) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "resize"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  if (size_bytes > it->second.size) it->second.size = size_bytes;
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::CreateSnapshot(const RbdAccess& access, const std::string& pool,
                                          const std::string& image, const std::string& snap) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "snap_create"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  auto [snap_it, made] = it->second.snaps.try_emplace(snap);
  if (made) snap_it->second.size = it->second.size;
  snap_it->second.is_protected = true;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FakeRbdAdmin::SnapshotSize(const RbdAccess& access, const std::string& pool,
                                                   const std::string& image,
                                                   const std::string& snap) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "snap_list"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  auto sn = it->second.snaps.find(snap);
  if (sn == it->second.snaps.end()) {
    return absl::NotFoundError(absl::StrCat("snapshot ", pool, "/", image, "@", snap));
  }
  return sn->second.size;
}

absl::Status FakeRbdAdmin::RemoveSnapshot(const RbdAccess& access, const std::string& pool,
                                          const std::string& image, const std::string& snap) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "snap_remove"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) return absl::OkStatus();
  const std::string spec = absl::StrCat(pool, "/", image, "@", snap);
  for (const auto& [_, img] : cluster_->images_) {
    if (img.parent == spec) {
      return absl::FailedPreconditionError(
          absl::StrCat("snapshot ", spec, " has clones that are not flattened"));
    }
  }
  it->second.snaps.erase(snap);
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::CloneFlattened(const RbdAccess& access, const std::string& parent_pool,
                                          const std::string& parent, const std::string& snap,
                                          const RbdLocation& loc, const std::string& image,
                                          int64_t size_bytes) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, loc.pool, "clone"); !s.ok()) return s;
  auto p = cluster_->images_.find(Key(parent_pool, parent));
  if (p == cluster_->images_.end() || p->second.snaps.count(snap) == 0) {
    return absl::NotFoundError(
        absl::StrCat("snapshot ", parent_pool, "/", parent, "@", snap, " not found"));
  }
  if (!p->second.snaps[snap].is_protected) {
    return absl::FailedPreconditionError("clone of an unprotected snapshot (clone v1)");
  }
  const int64_t parent_size = p->second.snaps[snap].size;
  auto [it, inserted] = cluster_->images_.try_emplace(Key(loc.pool, image));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("image ", loc.pool, "/", image, " exists"));
  }
  it->second.size = std::max(size_bytes, parent_size);
  it->second.features = loc.features;
  it->second.data_pool = loc.data_pool;
  it->second.parent = absl::StrCat(parent_pool, "/", parent, "@", snap);
  if (crash_in_flatten_.exchange(false)) {
    return absl::UnavailableError("flatten interrupted (fake crash)");
  }
  it->second.parent.clear();
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::Flatten(const RbdAccess& access, const std::string& pool,
                                   const std::string& image) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "flatten"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  it->second.parent.clear();
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::Lock(const RbdAccess& access, const std::string& pool,
                                const std::string& image, const std::string& cookie) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "lock"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  auto& lockers = it->second.lockers;
  if (!lockers.empty()) {
    if (lockers[0].client == client_ && lockers[0].cookie == cookie) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("image ", pool, "/", image, " is locked by ",
                                                      lockers[0].client, " (", lockers[0].cookie,
                                                      ")"));
  }
  lockers.push_back({client_, cookie, absl::StrCat("10.0.0.1:0/", client_)});
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RbdLockHolder>> FakeRbdAdmin::Lockers(const RbdAccess& access,
                                                                 const std::string& pool,
                                                                 const std::string& image) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "lockers"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", pool, "/", image, " not found"));
  }
  return it->second.lockers;
}

absl::Status FakeRbdAdmin::BreakLock(const RbdAccess& access, const std::string& pool,
                                     const std::string& image, const RbdLockHolder& holder) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "break_lock"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) return absl::OkStatus();
  auto& lockers = it->second.lockers;
  std::erase_if(lockers, [&](const RbdLockHolder& h) {
    return h.client == holder.client && h.cookie == holder.cookie;
  });
  return absl::OkStatus();
}

absl::Status FakeRbdAdmin::Unlock(const RbdAccess& access, const std::string& pool,
                                  const std::string& image, const std::string& cookie) {
  ublk::MutexLock l(&cluster_->mu_);
  if (absl::Status s = cluster_->Check(access, pool, "unlock"); !s.ok()) return s;
  auto it = cluster_->images_.find(Key(pool, image));
  if (it == cluster_->images_.end()) return absl::OkStatus();
  std::erase_if(it->second.lockers,
                [&](const RbdLockHolder& h) { return h.client == client_ && h.cookie == cookie; });
  return absl::OkStatus();
}

}  // namespace ublk_csi
