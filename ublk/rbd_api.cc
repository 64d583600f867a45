#include "ublk/rbd_api.h"

#include <dlfcn.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "ublk/mutex.h"

namespace ublk {
namespace {

absl::Status Unusable(const std::string& soname, const char* why) {
  return absl::FailedPreconditionError(absl::StrCat(
      "Ceph RBD support needs ", soname,
      " (Debian packages librbd1 and librados2): ", why != nullptr ? why : "unknown loader error"));
}

}  // namespace

absl::StatusOr<RbdApi> LoadRbdApiFrom(const std::string& soname) {
  // RTLD_LOCAL: Ceph's symbols stay out of the global scope, where they
  // could bind to anything loaded later.
  void* handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return Unusable(soname, dlerror());
  RbdApi api;
  const char* missing = nullptr;
  // dlsym returns void*; the cast to the function's own type is how the
  // loader's API is meant to be used (POSIX guarantees it works).
#define UBLK_RBD_API_LOOKUP(fn)                                   \
  api.fn = reinterpret_cast<decltype(&::fn)>(dlsym(handle, #fn)); \
  if (api.fn == nullptr && missing == nullptr) missing = #fn;
  UBLK_RBD_API_FUNCTIONS(UBLK_RBD_API_LOOKUP)
#undef UBLK_RBD_API_LOOKUP
  if (missing != nullptr) {
    dlclose(handle);
    return Unusable(soname, absl::StrCat("symbol ", missing,
                                         " not found (librbd older than "
                                         "Ceph 16?)")
                                .c_str());
  }
  return api;
}

absl::StatusOr<const RbdApi*> LoadRbdApi() {
  static std::atomic<const RbdApi*> loaded{nullptr};
  static Mutex mu;
  if (const RbdApi* api = loaded.load(std::memory_order_acquire)) return api;
  MutexLock lock(&mu);
  if (const RbdApi* api = loaded.load(std::memory_order_acquire)) return api;
  absl::StatusOr<RbdApi> api = LoadRbdApiFrom(kLibrbdSoname);
  if (!api.ok()) return api.status();  // the caller logs it, with its context
  // Never freed: the table is valid as long as the library, which stays.
  const RbdApi* table = new RbdApi(*api);
  loaded.store(table, std::memory_order_release);
  LOG(INFO) << "loaded " << kLibrbdSoname << " (Ceph RBD)";
  return table;
}

}  // namespace ublk
