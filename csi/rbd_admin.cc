// LibRbdAdmin: RbdAdmin over librados/librbd (Debian's 16.2.x), on the
// node's shared rados connections (ublk::RadosConnections: one client per
// cluster for the engine's I/O and these admin calls alike).
//
// The one-writer lock is a rados lock named kRbdStageLockName on the
// image's header object, not librbd's advisory lock (rbd_lock_exclusive):
// that one is the very cls lock ("rbd_lock") the exclusive-lock feature
// manages, so with it held librbd could never take the exclusive lock for
// a write and every write blocked (the default image features include
// exclusive-lock; found by the rbd-csi scenario: mkfs hung). Fencing a dead
// writer stays librbd's: a new process's first write takes the exclusive
// lock from the dead owner and blocklists it. A lock break here (only ever
// of this node's own stale cookie) just removes the dead process's entry.
#include "csi/rbd_admin.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/mutex.h"
#include "ublk/rbd_api.h"
#include "ublk/rbd_cluster.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

namespace {

// librados/librbd return -errno; map to the codes RbdAdmin promises.
absl::Status FromRc(int rc, absl::string_view what) {
  return rc >= 0 ? absl::OkStatus() : ublk::RadosError(rc, what);
}

// The pool's io context on the node's shared connection to the cluster,
// with the connection that owns it (kept alive for the call) and the loaded
// library.
struct Io {
  std::shared_ptr<ublk::RadosConnection> connection;
  rados_ioctx_t io = nullptr;
  const ublk::RbdApi* rbd = nullptr;
};

// An open image, closed on scope exit.
class Image {
 public:
  explicit Image(const ublk::RbdApi& rbd) : rbd_(rbd) {}
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;
  ~Image() {
    if (img_ != nullptr) rbd_.rbd_close(img_);
  }
  absl::Status Open(const Io& io, const std::string& pool, const std::string& name) {
    return FromRc(rbd_.rbd_open(io.io, name.c_str(), &img_, nullptr),
                  absl::StrCat("open image ", pool, "/", name));
  }
  // Open, with a missing image as false (the calls that make it gone).
  absl::StatusOr<bool> OpenIfExists(const Io& io, const std::string& pool,
                                    const std::string& name) {
    absl::Status s = Open(io, pool, name);
    if (absl::IsNotFound(s)) return false;
    RETURN_IF_ERROR(s);
    return true;
  }
  rbd_image_t get() const { return img_; }

 private:
  const ublk::RbdApi& rbd_;
  rbd_image_t img_ = nullptr;
};

class LibRbdAdmin final : public RbdAdmin {
 public:
  // As librbd's rbd_blocklist_expire_seconds default (0: the OSDs' default,
  // one hour): a dead process's address is not reused.
  static constexpr uint32_t kBlocklistSeconds = 0;

  explicit LibRbdAdmin(ublk::RadosConnections* connections) : connections_(connections) {}

  absl::StatusOr<RbdImageInfo> Stat(const RbdAccess& a, const std::string& pool,
                                    const std::string& image) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    rbd_image_info_t info;
    RETURN_IF_ERROR(FromRc(rbd.rbd_stat(img.get(), &info, sizeof(info)), "stat " + image));
    RbdImageInfo out;
    out.size_bytes = static_cast<int64_t>(info.size);
    uint64_t f = 0;
    RETURN_IF_ERROR(FromRc(rbd.rbd_get_features(img.get(), &f), "features of " + image));
    out.features = f;
    rbd_linked_image_spec_t parent;
    rbd_snap_spec_t psnap;
    int rc = rbd.rbd_get_parent(img.get(), &parent, &psnap);
    if (rc == 0) {
      out.has_parent = true;
      rbd.rbd_linked_image_spec_cleanup(&parent);
      rbd.rbd_snap_spec_cleanup(&psnap);
    } else if (rc != -ENOENT) {
      return FromRc(rc, "parent of " + image);
    }
    int max = 0;
    rc = rbd.rbd_snap_list(img.get(), nullptr, &max);
    if (rc < 0 && rc != -ERANGE) return FromRc(rc, "snapshots of " + image);
    // -ERANGE with the room needed: one entry per snapshot and librbd's
    // terminating one.
    out.snapshot_count = rc == -ERANGE ? std::max(0, max - 1) : 0;
    return out;
  }

  absl::Status Create(const RbdAccess& a, const RbdLocation& loc, const std::string& image,
                      int64_t size) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, loc.pool));
    const ublk::RbdApi& rbd = *io.rbd;
    rbd_image_options_t opts;
    rbd.rbd_image_options_create(&opts);
    rbd.rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, loc.features);
    if (!loc.data_pool.empty()) {
      rbd.rbd_image_options_set_string(opts, RBD_IMAGE_OPTION_DATA_POOL, loc.data_pool.c_str());
    }
    int rc = rbd.rbd_create4(io.io, image.c_str(), static_cast<uint64_t>(size), opts);
    rbd.rbd_image_options_destroy(opts);
    return FromRc(rc, absl::StrCat("create image ", loc.pool, "/", image));
  }

  absl::Status Remove(const RbdAccess& a, const std::string& pool,
                      const std::string& image) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    std::string id;
    {
      Image img(rbd);
      ASSIGN_OR_RETURN(bool exists, img.OpenIfExists(io, pool, image));
      if (!exists) return absl::OkStatus();
      char buf[64] = {};
      RETURN_IF_ERROR(FromRc(rbd.rbd_get_id(img.get(), buf, sizeof(buf)), "id of " + image));
      id = buf;
    }
    int rc = rbd.rbd_trash_move(io.io, image.c_str(), 0);
    if (rc == -ENOENT) return absl::OkStatus();
    RETURN_IF_ERROR(FromRc(rc, absl::StrCat("trash move ", pool, "/", image)));
    rc = rbd.rbd_trash_remove(io.io, id.c_str(), false);
    if (rc < 0 && rc != -ENOENT) {
      // The name is free and the volume deleted as far as CSI goes; the
      // data goes with `rbd trash purge` once nothing depends on it.
      LOG(WARNING) << "image " << pool << "/" << image << " (id " << id
                   << ") is in the trash but could not be purged yet: "
                   << FromRc(rc, "trash remove").message();
    }
    return absl::OkStatus();
  }

  absl::Status Resize(const RbdAccess& a, const std::string& pool, const std::string& image,
                      int64_t size) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    uint64_t cur = 0;
    RETURN_IF_ERROR(FromRc(rbd.rbd_get_size(img.get(), &cur), "size of " + image));
    if (static_cast<int64_t>(cur) >= size) return absl::OkStatus();
    return FromRc(rbd.rbd_resize2(img.get(), static_cast<uint64_t>(size), false, nullptr, nullptr),
                  absl::StrCat("resize ", pool, "/", image));
  }

  absl::Status CreateSnapshot(const RbdAccess& a, const std::string& pool, const std::string& image,
                              const std::string& snap) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    const std::string what = absl::StrCat(pool, "/", image, "@", snap);
    int rc = rbd.rbd_snap_create(img.get(), snap.c_str());
    if (rc != -EEXIST) RETURN_IF_ERROR(FromRc(rc, "snap create " + what));
    int is_protected = 0;
    RETURN_IF_ERROR(
        FromRc(rbd.rbd_snap_is_protected(img.get(), snap.c_str(), &is_protected), "snap " + what));
    if (!is_protected) {
      rc = rbd.rbd_snap_protect(img.get(), snap.c_str());
      if (rc != -EBUSY) RETURN_IF_ERROR(FromRc(rc, "snap protect " + what));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> SnapshotSize(const RbdAccess& a, const std::string& pool,
                                       const std::string& image, const std::string& snap) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    const std::string what = absl::StrCat("snapshots of ", pool, "/", image);
    // librbd wants room for every snapshot: ask for the count, then list
    // (retried if one appeared in between).
    std::vector<rbd_snap_info_t> snaps(16);
    for (int attempt = 0;; ++attempt) {
      int max = static_cast<int>(snaps.size());
      int rc = rbd.rbd_snap_list(img.get(), snaps.data(), &max);
      if (rc == -ERANGE && attempt < 4) {
        snaps.resize(static_cast<size_t>(max) + 1);
        continue;
      }
      RETURN_IF_ERROR(FromRc(rc < 0 ? rc : 0, what));
      std::optional<int64_t> size;
      for (int i = 0; i < rc; ++i) {
        if (snaps[i].name != nullptr && snap == snaps[i].name) {
          size = static_cast<int64_t>(snaps[i].size);
        }
      }
      rbd.rbd_snap_list_end(snaps.data());
      if (!size) {
        return absl::NotFoundError(absl::StrCat("snapshot ", pool, "/", image, "@", snap));
      }
      return *size;
    }
  }

  absl::Status RemoveSnapshot(const RbdAccess& a, const std::string& pool, const std::string& image,
                              const std::string& snap) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    ASSIGN_OR_RETURN(bool exists, img.OpenIfExists(io, pool, image));
    if (!exists) return absl::OkStatus();
    const std::string what = absl::StrCat(pool, "/", image, "@", snap);
    bool snap_exists = false;
    RETURN_IF_ERROR(
        FromRc(rbd.rbd_snap_exists(img.get(), snap.c_str(), &snap_exists), "snap " + what));
    if (!snap_exists) return absl::OkStatus();
    int is_protected = 0;
    RETURN_IF_ERROR(
        FromRc(rbd.rbd_snap_is_protected(img.get(), snap.c_str(), &is_protected), "snap " + what));
    if (is_protected) {
      int rc = rbd.rbd_snap_unprotect(img.get(), snap.c_str());
      if (rc != -EINVAL) RETURN_IF_ERROR(FromRc(rc, "snap unprotect " + what));
    }
    return FromRc(rbd.rbd_snap_remove(img.get(), snap.c_str()), "snap remove " + what);
  }

  absl::Status CloneFlattened(const RbdAccess& a, const std::string& parent_pool,
                              const std::string& parent, const std::string& snap,
                              const RbdLocation& loc, const std::string& image,
                              int64_t size) override {
    ASSIGN_OR_RETURN(Io pio, IoCtx(a, parent_pool));
    ASSIGN_OR_RETURN(Io io, IoCtx(a, loc.pool));
    const ublk::RbdApi& rbd = *io.rbd;
    rbd_image_options_t opts;
    rbd.rbd_image_options_create(&opts);
    rbd.rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, loc.features);
    if (!loc.data_pool.empty()) {
      rbd.rbd_image_options_set_string(opts, RBD_IMAGE_OPTION_DATA_POOL, loc.data_pool.c_str());
    }
    int rc = rbd.rbd_clone3(pio.io, parent.c_str(), snap.c_str(), io.io, image.c_str(), opts);
    rbd.rbd_image_options_destroy(opts);
    RETURN_IF_ERROR(FromRc(rc, absl::StrCat("clone ", parent_pool, "/", parent, "@", snap, " to ",
                                            loc.pool, "/", image)));
    RETURN_IF_ERROR(Resize(a, loc.pool, image, size));
    return Flatten(a, loc.pool, image);
  }

  absl::Status Flatten(const RbdAccess& a, const std::string& pool,
                       const std::string& image) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    int rc = rbd.rbd_flatten(img.get());
    if (rc == -EINVAL) return absl::OkStatus();  // not a clone (any more)
    return FromRc(rc, absl::StrCat("flatten ", pool, "/", image));
  }

  absl::Status Lock(const RbdAccess& a, const std::string& pool, const std::string& image,
                    const std::string& cookie) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    ASSIGN_OR_RETURN(std::string oid, HeaderOid(rbd, img.get(), pool, image));
    int rc = rbd.rados_lock_exclusive(io.io, oid.c_str(), kRbdStageLockName, cookie.c_str(),
                                      "staged by ublk-csi", nullptr, 0);
    if (rc == -EEXIST) return absl::OkStatus();
    if (rc == -EBUSY) {
      std::string holders;
      if (absl::StatusOr<std::vector<RbdLockHolder>> l = ListLockers(rbd, io, oid); l.ok()) {
        for (const RbdLockHolder& h : *l) {
          absl::StrAppend(&holders, holders.empty() ? "" : ", ", h.client, " (", h.cookie, " at ",
                          h.address, ")");
        }
      }
      return absl::FailedPreconditionError(
          absl::StrCat("image ", pool, "/", image, " is locked by ",
                       holders.empty() ? "another client" : holders));
    }
    return FromRc(rc, absl::StrCat("lock ", pool, "/", image));
  }

  absl::StatusOr<std::vector<RbdLockHolder>> Lockers(const RbdAccess& a, const std::string& pool,
                                                     const std::string& image) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    RETURN_IF_ERROR(img.Open(io, pool, image));
    ASSIGN_OR_RETURN(std::string oid, HeaderOid(rbd, img.get(), pool, image));
    return ListLockers(rbd, io, oid);
  }

  absl::Status BreakLock(const RbdAccess& a, const std::string& pool, const std::string& image,
                         const RbdLockHolder& holder) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    ASSIGN_OR_RETURN(bool exists, img.OpenIfExists(io, pool, image));
    if (!exists) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string oid, HeaderOid(rbd, img.get(), pool, image));
    // The holder is this node's dead earlier process: blocklist its client
    // first (as librbd's own lock break does), so its watch on the header
    // ends now and the exclusive lock it held passes to us at our first
    // write, instead of after the watch times out (30 s of stalled writes).
    if (!holder.address.empty()) {
      int brc =
          rbd.rados_blocklist_add(rbd.rados_ioctx_get_cluster(io.io),
                                  const_cast<char*>(holder.address.c_str()), kBlocklistSeconds);
      if (brc < 0) {
        LOG(WARNING) << "blocklisting " << holder.client << " at " << holder.address << " on "
                     << pool << "/" << image << ": " << ublk::Errno(-brc)
                     << "; its exclusive lock passes on when its watch times out";
      }
    }
    int rc = rbd.rados_break_lock(io.io, oid.c_str(), kRbdStageLockName, holder.client.c_str(),
                                  holder.cookie.c_str());
    if (rc == -ENOENT) return absl::OkStatus();
    return FromRc(rc, absl::StrCat("break lock of ", holder.client, " on ", pool, "/", image));
  }

  absl::Status Unlock(const RbdAccess& a, const std::string& pool, const std::string& image,
                      const std::string& cookie) override {
    ASSIGN_OR_RETURN(Io io, IoCtx(a, pool));
    const ublk::RbdApi& rbd = *io.rbd;
    Image img(rbd);
    ASSIGN_OR_RETURN(bool exists, img.OpenIfExists(io, pool, image));
    if (!exists) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string oid, HeaderOid(rbd, img.get(), pool, image));
    int rc = rbd.rados_unlock(io.io, oid.c_str(), kRbdStageLockName, cookie.c_str());
    if (rc == -ENOENT) return absl::OkStatus();
    return FromRc(rc, absl::StrCat("unlock ", pool, "/", image));
  }

 private:
  // The image's header object ("rbd_header.<id>", format 2): the lock lives
  // and dies with the image.
  static absl::StatusOr<std::string> HeaderOid(const ublk::RbdApi& rbd, rbd_image_t img,
                                               const std::string& pool, const std::string& image) {
    char id[128] = {};
    RETURN_IF_ERROR(FromRc(rbd.rbd_get_id(img, id, sizeof(id)),
                           absl::StrCat("image id of ", pool, "/", image)));
    return absl::StrCat("rbd_header.", id);
  }

  static absl::StatusOr<std::vector<RbdLockHolder>> ListLockers(const ublk::RbdApi& rbd,
                                                                const Io& io,
                                                                const std::string& oid) {
    size_t sizes[4] = {256, 1024, 1024, 1024};
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::string tag(sizes[0], '\0'), clients(sizes[1], '\0'), cookies(sizes[2], '\0'),
          addrs(sizes[3], '\0');
      int exclusive = 0;
      ssize_t n = rbd.rados_list_lockers(io.io, oid.c_str(), kRbdStageLockName, &exclusive,
                                         tag.data(), &sizes[0], clients.data(), &sizes[1],
                                         cookies.data(), &sizes[2], addrs.data(), &sizes[3]);
      if (n == -ERANGE) continue;  // sizes now say what is needed
      if (n == -ENOENT) return std::vector<RbdLockHolder>{};
      if (n < 0) return FromRc(static_cast<int>(n), "list lockers");
      auto split = [](const std::string& buf, size_t len) {
        std::vector<std::string> out;
        for (absl::string_view p : absl::StrSplit(absl::string_view(buf.data(), len), '\0')) {
          if (!p.empty()) out.emplace_back(p);
        }
        return out;
      };
      std::vector<std::string> c = split(clients, sizes[1]), k = split(cookies, sizes[2]),
                               ad = split(addrs, sizes[3]);
      std::vector<RbdLockHolder> out;
      for (size_t i = 0; i < static_cast<size_t>(n) && i < c.size() && i < k.size(); ++i) {
        out.push_back({c[i], k[i], i < ad.size() ? ad[i] : ""});
      }
      return out;
    }
    return absl::InternalError("list lockers: buffers keep growing");
  }

  absl::StatusOr<Io> IoCtx(const RbdAccess& a, const std::string& pool) {
    ASSIGN_OR_RETURN(
        std::shared_ptr<ublk::RadosConnection> c,
        connections_->Get(ublk::RbdClusterConfig{a.monitors, a.creds.user, a.creds.key}));
    ASSIGN_OR_RETURN(rados_ioctx_t io, c->IoCtx(pool, ""));
    // Loaded by the connection just made (a fake one has no io context).
    ASSIGN_OR_RETURN(const ublk::RbdApi* rbd, ublk::LoadRbdApi());
    return Io{std::move(c), io, rbd};
  }

  ublk::RadosConnections* const connections_;
};

}  // namespace

std::unique_ptr<RbdAdmin> NewLibRbdAdmin(ublk::RadosConnections* connections) {
  return std::make_unique<LibRbdAdmin>(connections);
}

}  // namespace ublk_csi
