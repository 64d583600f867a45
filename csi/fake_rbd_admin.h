// An in-memory Ceph for the RBD seam: FakeRbdCluster holds pools, images,
// snapshots, trash and advisory locks; each FakeRbdAdmin is one client of it
// (its own "client.N" identity, as a process's rados connection is), so two
// nodes, or a plugin before and after a restart, are two admins over one
// cluster. cephx is checked (a user map), the cluster can be made
// unreachable, and the next call of an operation can be made to fail.
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "csi/rbd_admin.h"
#include "ublk/mutex.h"

namespace ublk_csi {

class FakeRbdCluster {
 public:
  struct Image {
    int64_t size = 0;
    uint64_t features = 0;
    std::string data_pool;
    std::string parent;  // "pool/image@snap" while a clone is not flattened
    struct Snap {
      bool is_protected = true;
      int64_t size = 0;  // the image's size when it was taken
    };
    std::map<std::string, Snap> snaps;
    std::vector<RbdLockHolder> lockers;
  };

  FakeRbdCluster(std::string monitors, std::set<std::string> pools)
      : monitors_(std::move(monitors)), pools_(std::move(pools)) {}

  void AddUser(const std::string& user, const std::string& key);
  void SetReachable(bool reachable);
  // The next call whose operation name is `op` ("create", "remove",
  // "resize", "snap_create", "snap_remove", "snap_list", "clone", "flatten",
  // "lock", "stat") fails with `status`.
  void FailNext(const std::string& op, absl::Status status);

  bool HasImage(const std::string& pool, const std::string& image) const;
  std::optional<Image> GetImage(const std::string& pool, const std::string& image) const;
  int trash_size() const;
  const std::string& monitors() const { return monitors_; }

 private:
  friend class FakeRbdAdmin;
  absl::Status Check(const RbdAccess& a, const std::string& pool, const char* op)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string monitors_;
  const std::set<std::string> pools_;
  mutable ublk::Mutex mu_;
  std::map<std::string, std::string> users_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Image> images_ ABSL_GUARDED_BY(mu_);  // "pool/image"
  std::vector<Image> trash_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Status> fail_next_ ABSL_GUARDED_BY(mu_);
  bool reachable_ ABSL_GUARDED_BY(mu_) = true;
  int next_client_ ABSL_GUARDED_BY(mu_) = 4100;
};

class FakeRbdAdmin final : public RbdAdmin {
 public:
  explicit FakeRbdAdmin(FakeRbdCluster* cluster);

  absl::StatusOr<RbdImageInfo> Stat(const RbdAccess& access, const std::string& pool,
                                    const std::string& image) override;
  absl::Status Create(const RbdAccess& access, const RbdLocation& loc, const std::string& image,
                      int64_t size_bytes) override;
  absl::Status Remove(const RbdAccess& access, const std::string& pool,
                      const std::string& image) override;
  absl::Status Resize(const RbdAccess& access, const std::string& pool, const std::string& image,
                      int64_t size_bytes) override;
  absl::Status CreateSnapshot(const RbdAccess& access, const std::string& pool,
                              const std::string& image, const std::string& snap) override;
  absl::StatusOr<int64_t> SnapshotSize(const RbdAccess& access, const std::string& pool,
                                       const std::string& image, const std::string& snap) override;
  absl::Status RemoveSnapshot(const RbdAccess& access, const std::string& pool,
                              const std::string& image, const std::string& snap) override;
  absl::Status CloneFlattened(const RbdAccess& access, const std::string& parent_pool,
                              const std::string& parent, const std::string& snap,
                              const RbdLocation& loc, const std::string& image,
                              int64_t size_bytes) override;
  absl::Status Flatten(const RbdAccess& access, const std::string& pool,
                       const std::string& image) override;
  absl::Status Lock(const RbdAccess& access, const std::string& pool, const std::string& image,
                    const std::string& cookie) override;
  absl::StatusOr<std::vector<RbdLockHolder>> Lockers(const RbdAccess& access,
                                                     const std::string& pool,
                                                     const std::string& image) override;
  absl::Status BreakLock(const RbdAccess& access, const std::string& pool, const std::string& image,
                         const RbdLockHolder& holder) override;
  absl::Status Unlock(const RbdAccess& access, const std::string& pool, const std::string& image,
                      const std::string& cookie) override;

  const std::string& client() const { return client_; }
  // Leaves the next CloneFlattened with an unflattened clone and fails it
  // (as a crash in the middle of a flatten would).
  void CrashInNextFlatten() { crash_in_flatten_ = true; }

 private:
  FakeRbdCluster* const cluster_;
  std::string client_;
  std::atomic<bool> crash_in_flatten_{false};
};

}  // namespace ublk_csi
