// The controller-side (and node-side locking) operations on RBD images that
// the VolumeManager needs, behind a narrow seam: LibRbdAdmin over librbd
// (csi/rbd_admin.cc) and FakeRbdAdmin (csi/fake_rbd_admin.h) for tests.
// Every call names the cluster (monitors + cephx credentials), pool and
// image; errors carry the CSI code the caller can pass on:
//   NOT_FOUND            image / snapshot / pool missing
//   ALREADY_EXISTS       image exists (Create)
//   FAILED_PRECONDITION  refused by the image's state (locked elsewhere,
//                        snapshots still protected, ...)
//   UNAVAILABLE          cluster unreachable (monitors down, timeout)
//   PERMISSION_DENIED    cephx refused the credentials
// No message ever holds the cephx key. Implementations are thread-safe.
//
// Policies (why, in one place):
//  - Delete: rbd_trash_move, then an immediate rbd_trash_remove. Trash
//    first because a move is atomic and quick while a removal deletes every
//    object: a crash or timeout in the middle leaves a trashed image (the
//    name is free, a repeat of DeleteVolume is OK) instead of a half-deleted
//    one under its name. If the purge fails (a clone still depends on it,
//    the cluster is slow) the image stays in the trash: `rbd trash purge`
//    or the next DeleteVolume of the same ID retries it (PurgeTrashed).
//  - Restore and clone: an RBD clone of a (protected) snapshot, flattened
//    at once, always. A flattened volume no longer depends on its parent,
//    so a snapshot (CSI: independent of the volumes made from it) can be
//    deleted at any time, clone chains never grow, and nothing relies on
//    clone v2 / min-compat-client mimic. The price is the copy of the
//    snapshot's allocated objects at restore time (done by the OSDs), which
//    the CO's CreateVolume retry absorbs (the name lock says ABORTED
//    meanwhile and a repeat resumes an interrupted flatten).
//  - Snapshots are protected when created (required by clone v1, harmless
//    with v2) and unprotected before removal.
//  - Multi-attach: an advisory exclusive lock (rbd_lock_exclusive), cookie
//    "ublk-csi:<node id>", taken at NodeStage and released at NodeUnstage.
//    It lives in the image header, so it survives a plugin restart (the
//    recovered process needs no new lock) and a node reboot (the same
//    node's cookie is recognised and taken over). A stage on another node
//    fails with FAILED_PRECONDITION naming the holder. Not the exclusive-lock
//    feature's managed lock: that one moves between clients on request (so
//    it does not refuse a second writer), and held non-cooperatively it
//    would block the controller's own resize and snapshot calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "csi/rbd_params.h"

namespace ublk {
class RadosConnections;
}  // namespace ublk

namespace ublk_csi {

// The rados lock on an RBD image's header object that marks it staged on a
// node (cookie "ublk-csi:<node>"). Inspect or remove it with
// `rados -p POOL lock info rbd_header.<image id> ublk-csi` and
// `rados -p POOL lock break rbd_header.<image id> ublk-csi CLIENT --lock-cookie COOKIE`.
inline constexpr char kRbdStageLockName[] = "ublk-csi";

// One cluster as a client reaches it.
struct RbdAccess {
  std::string monitors;
  RbdCredentials creds;  // SECRET (creds.key)
};

struct RbdImageInfo {
  int64_t size_bytes = 0;
  uint64_t features = 0;
  bool has_parent = false;  // a clone not flattened (yet)
  int snapshot_count = 0;
};

struct RbdLockHolder {
  std::string client;  // e.g. "client.4123"
  std::string cookie;  // e.g. "ublk-csi:node-a"
  std::string address;
};

class RbdAdmin {
 public:
  virtual ~RbdAdmin() = default;

  virtual absl::StatusOr<RbdImageInfo> Stat(const RbdAccess& access, const std::string& pool,
                                            const std::string& image) = 0;
  // Creates an image of `size_bytes` with loc.features (and loc.data_pool).
  virtual absl::Status Create(const RbdAccess& access, const RbdLocation& loc,
                              const std::string& image, int64_t size_bytes) = 0;
  // Trash move + purge (see Policies). OK when the image does not exist.
  virtual absl::Status Remove(const RbdAccess& access, const std::string& pool,
                              const std::string& image) = 0;
  // Grows the image (never shrinks: a smaller size is OK and a no-op).
  virtual absl::Status Resize(const RbdAccess& access, const std::string& pool,
                              const std::string& image, int64_t size_bytes) = 0;
  // Creates and protects snapshot `snap` of the image; OK if it exists.
  virtual absl::Status CreateSnapshot(const RbdAccess& access, const std::string& pool,
                                      const std::string& image, const std::string& snap) = 0;
  // The image's size when `snap` was taken; NOT_FOUND when the image or the
  // snapshot does not exist.
  virtual absl::StatusOr<int64_t> SnapshotSize(const RbdAccess& access, const std::string& pool,
                                               const std::string& image,
                                               const std::string& snap) = 0;
  // Unprotects and removes it; OK when the image or snapshot is gone.
  virtual absl::Status RemoveSnapshot(const RbdAccess& access, const std::string& pool,
                                      const std::string& image, const std::string& snap) = 0;
  // Clones pool/parent@snap into loc.pool/image (loc's features and data
  // pool), grows it to size_bytes if larger, and flattens it (Policies).
  // ALREADY_EXISTS if the image exists.
  virtual absl::Status CloneFlattened(const RbdAccess& access, const std::string& parent_pool,
                                      const std::string& parent, const std::string& snap,
                                      const RbdLocation& loc, const std::string& image,
                                      int64_t size_bytes) = 0;
  // Flattens a clone (resumes one a crash interrupted); OK for a non-clone.
  virtual absl::Status Flatten(const RbdAccess& access, const std::string& pool,
                               const std::string& image) = 0;

  // Advisory exclusive lock with `cookie`. OK if this client already holds
  // it; FAILED_PRECONDITION naming the holder if anyone else does.
  virtual absl::Status Lock(const RbdAccess& access, const std::string& pool,
                            const std::string& image, const std::string& cookie) = 0;
  virtual absl::StatusOr<std::vector<RbdLockHolder>> Lockers(const RbdAccess& access,
                                                             const std::string& pool,
                                                             const std::string& image) = 0;
  // Breaks the lock `holder` holds (librbd blocklists the holder's address,
  // fencing a client that is still alive). OK if it is not held.
  virtual absl::Status BreakLock(const RbdAccess& access, const std::string& pool,
                                 const std::string& image, const RbdLockHolder& holder) = 0;
  // Releases this client's lock with `cookie`; OK if not held.
  virtual absl::Status Unlock(const RbdAccess& access, const std::string& pool,
                              const std::string& image, const std::string& cookie) = 0;
};

// The librbd implementation, on the node's shared connections (the engine's
// registry, whose timeouts bound every call); must outlive the admin.
std::unique_ptr<RbdAdmin> NewLibRbdAdmin(ublk::RadosConnections* connections);

}  // namespace ublk_csi
