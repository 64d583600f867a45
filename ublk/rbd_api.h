// Ceph's C client libraries (librados, librbd), loaded when the first RBD
// connection is made rather than linked: a node that serves only local
// volumes never maps them (in the qemu guest they were a third of the
// plugin's exec-to-main time: ~25 more shared objects and twice the
// relocations), and the plugin runs where they are not installed, failing
// only RBD calls, with an error that says what to install.
//
// The table is process-wide because the dynamic loader is: loaded once,
// immutable afterwards, never unloaded. Thread-safe.
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <string>

#include "absl/status/statusor.h"

namespace ublk {

// Every librados/librbd function the project calls.
#define UBLK_RBD_API_FUNCTIONS(X)  \
  X(rados_create2)                 \
  X(rados_conf_set)                \
  X(rados_connect)                 \
  X(rados_shutdown)                \
  X(rados_ioctx_create)            \
  X(rados_ioctx_destroy)           \
  X(rados_ioctx_set_namespace)     \
  X(rbd_open)                      \
  X(rbd_close)                     \
  X(rbd_get_size)                  \
  X(rbd_stat)                      \
  X(rbd_get_features)              \
  X(rbd_get_parent)                \
  X(rbd_get_id)                    \
  X(rbd_linked_image_spec_cleanup) \
  X(rbd_snap_spec_cleanup)         \
  X(rbd_snap_list)                 \
  X(rbd_snap_list_end)             \
  X(rbd_image_options_create)      \
  X(rbd_image_options_destroy)     \
  X(rbd_image_options_set_uint64)  \
  X(rbd_image_options_set_string)  \
  X(rbd_create4)                   \
  X(rbd_clone3)                    \
  X(rbd_resize2)                   \
  X(rbd_flatten)                   \
  X(rbd_trash_move)                \
  X(rbd_trash_remove)              \
  X(rbd_snap_create)               \
  X(rbd_snap_remove)               \
  X(rbd_snap_exists)               \
  X(rbd_snap_is_protected)         \
  X(rbd_snap_protect)              \
  X(rbd_snap_unprotect)            \
  X(rados_lock_exclusive)          \
  X(rados_list_lockers)            \
  X(rados_break_lock)              \
  X(rados_unlock)                  \
  X(rados_ioctx_get_cluster)       \
  X(rados_blocklist_add)           \
  X(rbd_aio_create_completion)     \
  X(rbd_aio_get_return_value)      \
  X(rbd_aio_release)               \
  X(rbd_aio_read)                  \
  X(rbd_aio_write)                 \
  X(rbd_aio_flush)                 \
  X(rbd_aio_discard)               \
  X(rbd_aio_write_zeroes)

// The functions, called as api.rbd_open(...): the signatures are the
// headers' own (decltype), so a mismatch cannot compile.
struct RbdApi {
#define UBLK_RBD_API_MEMBER(fn) decltype(&::fn) fn = nullptr;
  UBLK_RBD_API_FUNCTIONS(UBLK_RBD_API_MEMBER)
#undef UBLK_RBD_API_MEMBER
};

// The library the table is loaded from (librbd pulls in librados; every
// symbol is looked up through it).
inline constexpr char kLibrbdSoname[] = "librbd.so.1";

// The table, loading it on the first call that succeeds. A success is cached
// (later calls are one atomic load: cheap enough for an I/O completion); a
// failure is not, so installing the library later needs no restart.
// FailedPrecondition naming the library, the loader's reason and the Debian
// packages to install.
absl::StatusOr<const RbdApi*> LoadRbdApi();

// Loads a table from `soname` without caching it (tests: a missing library,
// one without the symbols). The handle is never closed.
absl::StatusOr<RbdApi> LoadRbdApiFrom(const std::string& soname);

}  // namespace ublk
