// Request text (names, ids, paths, parameter values) made safe to put into a
// log line or an error message: a newline cannot forge a log line, a NUL or a
// terminal escape cannot reach the log, and a megabyte of input is echoed as
// a short prefix. Header-only; pure functions, any thread.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ublk_csi {

// At most `max_len` bytes of `s`, C-escaped (control characters, quotes,
// backslash and every byte >= 0x80 as \n, \", \\, \xNN), so the result is
// printable ASCII on one line. A longer input ends with "...(N bytes)".
inline std::string EscapeForLog(absl::string_view s, size_t max_len = 128) {
  if (s.size() <= max_len) return absl::CHexEscape(s);
  return absl::StrCat(absl::CHexEscape(s.substr(0, max_len)), "...(", s.size(), " bytes)");
}

}  // namespace ublk_csi
