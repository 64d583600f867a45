// EscapeForLog: makes untrusted text (request names, ids, paths, and error
// messages that echo them) safe to put in one log line. Control characters
// (C0, DEL, C1 and the Unicode line/paragraph separators) are written as
// escapes, so a request cannot forge or split log lines; text longer than
// `max_bytes` is cut at a UTF-8 boundary and says how long it was.
// Header-only so every csi/ file (and the error-message paths in
// volume_manager) can share one spelling.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace ublk_csi {

inline constexpr size_t kLogEscapeDefaultMaxBytes = 256;

inline std::string EscapeForLog(absl::string_view s, size_t max_bytes = kLogEscapeDefaultMaxBytes) {
  const size_t total = s.size();
  bool truncated = false;
  if (s.size() > max_bytes) {
    size_t cut = max_bytes;
    // Do not split a UTF-8 sequence: back up over continuation bytes.
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut);
    truncated = true;
  }
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(s[i + 1]) <= 0x9F) {
      // C1 control (U+0080..U+009F, e.g. NEL), which some viewers break on.
      absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(s[i + 1]));
      ++i;
    } else if (c == 0xE2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
               (static_cast<unsigned char>(s[i + 2]) == 0xA8 ||
                static_cast<unsigned char>(s[i + 2]) == 0xA9)) {
      // U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR.
      absl::StrAppendFormat(&out, "\\u%04x", 0x2000 + static_cast<unsigned char>(s[i + 2]) - 0x80);
      i += 2;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (truncated) absl::StrAppend(&out, "...(", total, " bytes)");
  return out;
}

}  // namespace ublk_csi
