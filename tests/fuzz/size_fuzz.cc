// ParseSize (the --default-volume-size flag, ublk-csi-ctl sizes): any text is
// either a size >= 0 that round-trips through its suffix, or INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/statusor.h"
#include "csi/volume_manager.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<int64_t> v = ublk_csi::ParseSize(text);
  if (v.ok()) {
    if (*v < 0) {
      std::fprintf(stderr, "ParseSize returned a negative size %lld\n", static_cast<long long>(*v));
      std::abort();
    }
  } else if (v.status().code() != absl::StatusCode::kInvalidArgument) {
    std::fprintf(stderr, "ParseSize: unexpected code %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return 0;
}
