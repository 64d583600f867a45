// Errno(err): the text of an errno value for an error message. strerror() is
// not thread-safe (it may format into a static buffer); strerrordesc_np
// (glibc 2.32+) returns a constant string and allocates nothing, so this is
// safe from any thread and on the no-memory path.
#pragma once

#include <cstring>

namespace ublk {

inline const char* Errno(int err) {
  const char* text = strerrordesc_np(err);
  return text != nullptr ? text : "unknown error";
}

}  // namespace ublk
