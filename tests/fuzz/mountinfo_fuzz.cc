// ParseMountInfo (/proc/self/mountinfo, which a mount made by anyone on the
// node can fill with odd paths and escapes): any text parses without a crash
// or an out-of-bounds read, into at most one entry per line.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "csi/mounter.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
  if (ublk_csi::ParseMountInfo(text).size() > lines) {
    std::fprintf(stderr, "ParseMountInfo returned more entries than lines\n");
    std::abort();
  }
  return 0;
}
